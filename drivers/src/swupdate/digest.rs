//! HTTP digest authentication (RFC 7616 with MD5 and `qop=auth`, RFC 2069 without `qop`), the
//! scheme SWUpdate's mongoose web server asks for. Only what a client needs: parse a
//! `WWW-Authenticate: Digest ...` challenge and answer it for one request.

use md5::{Digest as _, Md5};
use std::hash::{BuildHasher, Hasher};

/// A digest challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// Whether the server offers `qop=auth`.
    pub qop_auth: bool,
}

/// Why a challenge could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("the server asks for `{0}` authentication, not Digest")]
    NotDigest(String),
    #[error("the digest challenge has no `{0}`")]
    Missing(&'static str),
    #[error("the digest challenge asks for algorithm `{0}`; only MD5 is supported")]
    Algorithm(String),
    #[error("the digest challenge offers qop `{0}`; only `auth` is supported")]
    Qop(String),
}

impl Challenge {
    /// Parses the value of a `WWW-Authenticate` header.
    pub fn parse(header: &str) -> Result<Challenge, ChallengeError> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(ChallengeError::NotDigest(scheme.chars().take(32).collect()));
        }
        let params = parse_params(rest);
        let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v);
        if let Some(alg) = get("algorithm")
            && !alg.eq_ignore_ascii_case("md5")
        {
            return Err(ChallengeError::Algorithm(alg.chars().take(32).collect()));
        }
        let qop_auth = match get("qop") {
            None => false,
            Some(q) if q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) => true,
            Some(q) => return Err(ChallengeError::Qop(q.chars().take(32).collect())),
        };
        Ok(Challenge {
            realm: get("realm").ok_or(ChallengeError::Missing("realm"))?.clone(),
            nonce: get("nonce").ok_or(ChallengeError::Missing("nonce"))?.clone(),
            opaque: get("opaque").cloned(),
            qop_auth,
        })
    }

    /// The `Authorization` header value for `method` on `uri` (path and query), with a fresh
    /// client nonce.
    pub fn authorization(&self, user: &str, password: &str, method: &str, uri: &str) -> String {
        self.authorization_with(user, password, method, uri, &fresh_cnonce(), 1)
    }

    /// [`Challenge::authorization`] with a given client nonce and count (for tests).
    pub fn authorization_with(
        &self,
        user: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> String {
        let ha1 = md5_hex(&[user, ":", &self.realm, ":", password]);
        let ha2 = md5_hex(&[method, ":", uri]);
        let nc = format!("{nc:08x}");
        let mut out = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", algorithm=MD5",
            quote(user),
            quote(&self.realm),
            quote(&self.nonce),
            quote(uri)
        );
        if self.qop_auth {
            let response =
                md5_hex(&[&ha1, ":", &self.nonce, ":", &nc, ":", cnonce, ":auth:", &ha2]);
            out.push_str(&format!(
                ", qop=auth, nc={nc}, cnonce=\"{}\", response=\"{response}\"",
                quote(cnonce)
            ));
        } else {
            let response = md5_hex(&[&ha1, ":", &self.nonce, ":", &ha2]);
            out.push_str(&format!(", response=\"{response}\""));
        }
        if let Some(opaque) = &self.opaque {
            out.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
        }
        out
    }
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Escapes a value for a quoted-string.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A client nonce from the process's randomly keyed hasher (unpredictable enough for a cnonce).
fn fresh_cnonce() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", h.finish())
}

/// `name=value` or `name="quoted value"` pairs separated by commas.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.trim().is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_string();
            }
        }
        out.push((name.trim().to_string(), value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example() {
        let c = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert_eq!(c.realm, "testrealm@host.com");
        assert!(c.qop_auth);
        let h = c.authorization_with(
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
            1,
        );
        assert!(h.contains("response=\"6629fae49393a05397450978507c4ef1\""), "{h}");
        assert!(h.contains("nc=00000001"), "{h}");
        assert!(h.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""), "{h}");
        assert!(!h.contains("Circle Of Life"));
    }

    #[test]
    fn mongoose_challenge_and_rfc2069() {
        let c = Challenge::parse("Digest qop=\"auth\", realm=\"gw\", nonce=\"6933e0f1\"").unwrap();
        assert_eq!(
            c,
            Challenge {
                realm: "gw".into(),
                nonce: "6933e0f1".into(),
                opaque: None,
                qop_auth: true
            }
        );
        let old = Challenge { qop_auth: false, ..c };
        let h = old.authorization_with("u", "p", "GET", "/", "x", 1);
        // md5(md5("u:gw:p"):6933e0f1:md5("GET:/"))
        let ha1 = md5_hex(&["u:gw:p"]);
        let ha2 = md5_hex(&["GET:/"]);
        let want = md5_hex(&[&ha1, ":6933e0f1:", &ha2]);
        assert!(h.ends_with(&format!("response=\"{want}\"")), "{h}");
        assert!(!h.contains("qop"));
    }

    #[test]
    fn refuses_other_schemes_and_garbage() {
        assert!(matches!(Challenge::parse("Basic realm=\"x\""), Err(ChallengeError::NotDigest(_))));
        assert_eq!(Challenge::parse("Digest nonce=1"), Err(ChallengeError::Missing("realm")));
        assert!(matches!(
            Challenge::parse("Digest realm=a, nonce=b, algorithm=SHA-256"),
            Err(ChallengeError::Algorithm(_))
        ));
        assert!(matches!(
            Challenge::parse("Digest realm=a, nonce=b, qop=\"auth-int\""),
            Err(ChallengeError::Qop(_))
        ));
        for junk in ["", "Digest", "Digest ,,,=,\"", "Digest realm=\"unterminated", "\u{0}\u{1}"] {
            let _ = Challenge::parse(junk);
        }
    }

    #[test]
    fn quoted_values_are_escaped() {
        let c = Challenge::parse(r#"Digest realm="a\"b", nonce="n", qop=auth"#).unwrap();
        assert_eq!(c.realm, "a\"b");
        let h = c.authorization_with("we\"ird", "p", "GET", "/", "c", 2);
        assert!(h.contains(r#"username="we\"ird""#), "{h}");
        assert!(h.contains(r#"realm="a\"b""#), "{h}");
        assert!(h.contains("nc=00000002"));
    }
}
