//! Device credentials sealed for one technician, and the server's encryption at rest.
//!
//! **Delivery.** The server seals each credential to the technician's registered ed25519 key,
//! converted to its X25519 (Montgomery) form as libsodium does: an ephemeral key pair, X25519,
//! HKDF-SHA256 over the shared secret (salted with both public keys), ChaCha20-Poly1305. The
//! associated data binds the ciphertext to the technician, device and credential kind, so a sealed
//! credential cannot be replayed for another device. Only the laptop holding the technician's
//! signing key (in the OS keyring) can open it; the opened secret goes straight into the keyring.
//!
//! **At rest.** The server keeps credentials encrypted under a 32-byte data key (ChaCha20-Poly1305,
//! random nonce, the device and kind as associated data).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

const SEAL_INFO: &[u8] = b"fieldpatch-credential-v1";
const REST_AAD: &[u8] = b"fieldpatch-credential-at-rest-v1";

/// A device credential sealed for one technician (part of the pull).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealedCredential {
    pub device_id: String,
    /// What the secret is: `password`, `psk` or `token`.
    pub kind: String,
    /// Hex of the ephemeral ed25519 public key (its Montgomery form is the X25519 key).
    pub ephemeral_key: String,
    /// Hex, 12 bytes.
    pub nonce: String,
    /// Hex ChaCha20-Poly1305 ciphertext and tag.
    pub ciphertext: String,
}

impl std::fmt::Debug for SealedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedCredential")
            .field("device_id", &self.device_id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Why a credential cannot be sealed or opened. Never carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("technician key {0:?} is not a valid ed25519 public key")]
    BadRecipient(String),
    #[error("credential {kind} for device {device}: malformed sealed data")]
    Malformed { device: String, kind: String },
    #[error(
        "credential {kind} for device {device} cannot be opened with this technician's key (sealed for another technician, or altered)"
    )]
    Open { device: String, kind: String },
    #[error(
        "credential {kind} for device {device} is longer than ChaCha20-Poly1305 can encrypt; store a shorter secret"
    )]
    TooLong { device: String, kind: String },
}

fn aad(technician_id: &str, device: &str, kind: &str) -> Vec<u8> {
    json_aad(SEAL_INFO, &[technician_id, device, kind])
}

/// `[label, parts...]` as compact JSON, the label as an array of byte values: the bytes
/// `serde_json::to_vec` gives for the tuple, built from a `Value`, whose rendering cannot fail.
fn json_aad(label: &[u8], parts: &[&str]) -> Vec<u8> {
    let label = serde_json::Value::Array(label.iter().map(|&b| b.into()).collect());
    let items = std::iter::once(label).chain(parts.iter().map(|&p| p.into())).collect();
    serde_json::Value::Array(items).to_string().into_bytes()
}

fn derive(shared: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut salt = Vec::with_capacity(64);
    salt.extend_from_slice(eph);
    salt.extend_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut okm = Zeroizing::new([0u8; 32]);
    #[allow(clippy::expect_used, reason = "HKDF-SHA256 expands to up to 8,160 bytes; this is 32")]
    hk.expand(SEAL_INFO, okm.as_mut()).expect("32 bytes is a valid HKDF length");
    okm
}

/// Seal `secret` for the technician whose ed25519 public key is `recipient_hex`.
pub fn seal(
    recipient_hex: &str,
    technician_id: &str,
    device_id: &str,
    kind: &str,
    secret: &[u8],
) -> Result<SealedCredential, SealError> {
    let recipient = crate::wire::parse_key(recipient_hex)
        .ok_or_else(|| SealError::BadRecipient(recipient_hex.to_string()))?;
    let eph = SigningKey::generate(&mut rand::rand_core::UnwrapErr(rand::rngs::SysRng));
    let eph_pub = eph.verifying_key().to_bytes();
    let shared =
        Zeroizing::new(recipient.to_montgomery().mul_clamped(eph.to_scalar_bytes()).to_bytes());
    let key = derive(&shared, &eph_pub, &recipient.to_bytes());
    let nonce: [u8; 12] = rand::random();
    let ct = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload { msg: secret, aad: &aad(technician_id, device_id, kind) },
        )
        .map_err(|_| SealError::TooLong { device: device_id.into(), kind: kind.into() })?;
    Ok(SealedCredential {
        device_id: device_id.into(),
        kind: kind.into(),
        ephemeral_key: hex::encode(eph_pub),
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(ct),
    })
}

impl SealedCredential {
    /// Open with the technician's signing key.
    pub fn open(
        &self,
        key: &SigningKey,
        technician_id: &str,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let malformed =
            || SealError::Malformed { device: self.device_id.clone(), kind: self.kind.clone() };
        let eph_bytes: [u8; 32] = hex::decode(&self.ephemeral_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(malformed)?;
        let eph = VerifyingKey::from_bytes(&eph_bytes).map_err(|_| malformed())?;
        let nonce: [u8; 12] =
            hex::decode(&self.nonce).ok().and_then(|b| b.try_into().ok()).ok_or_else(malformed)?;
        let ct = hex::decode(&self.ciphertext).map_err(|_| malformed())?;
        let scalar = Zeroizing::new(key.to_scalar_bytes());
        let shared = Zeroizing::new(eph.to_montgomery().mul_clamped(*scalar).to_bytes());
        let k = derive(&shared, &eph_bytes, &key.verifying_key().to_bytes());
        ChaCha20Poly1305::new(Key::from_slice(k.as_ref()))
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload { msg: &ct, aad: &aad(technician_id, &self.device_id, &self.kind) },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open {
                device: self.device_id.clone(),
                kind: self.kind.clone(),
            })
    }
}

/// Encrypt a credential for storage under the server's data key: `(nonce, ciphertext)`.
pub fn encrypt_at_rest(
    data_key: &[u8; 32],
    device_id: &str,
    kind: &str,
    secret: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), SealError> {
    let nonce: [u8; 12] = rand::random();
    let aad = json_aad(REST_AAD, &[device_id, kind]);
    let ct = ChaCha20Poly1305::new(Key::from_slice(data_key))
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret, aad: &aad })
        .map_err(|_| SealError::TooLong { device: device_id.into(), kind: kind.into() })?;
    Ok((nonce.to_vec(), ct))
}

/// Decrypt a credential stored with [`encrypt_at_rest`].
pub fn decrypt_at_rest(
    data_key: &[u8; 32],
    device_id: &str,
    kind: &str,
    nonce: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let err = || SealError::Open { device: device_id.into(), kind: kind.into() };
    if nonce.len() != 12 {
        return Err(err());
    }
    let aad = json_aad(REST_AAD, &[device_id, kind]);
    ChaCha20Poly1305::new(Key::from_slice(data_key))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn associated_data_is_the_serialized_tuple() {
        // Credentials sealed or stored before keep opening: the bytes are serde_json's.
        for (t, d, k) in [("alice", "d1", "password"), ("é \"\\\n\u{1}", "dev/1\t", "")] {
            let tuple = serde_json::to_vec(&(SEAL_INFO, t, d, k)).unwrap();
            assert_eq!(aad(t, d, k), tuple);
            let rest = serde_json::to_vec(&(REST_AAD, d, k)).unwrap();
            assert_eq!(json_aad(REST_AAD, &[d, k]), rest);
        }
    }

    #[test]
    fn only_the_recipient_opens_and_the_binding_holds() {
        let alice = SigningKey::generate(&mut rand::rng());
        let bob = SigningKey::generate(&mut rand::rng());
        let alice_pub = hex::encode(alice.verifying_key().as_bytes());
        let sealed = seal(&alice_pub, "alice", "d1", "password", b"hunter2").unwrap();
        assert_eq!(sealed.open(&alice, "alice").unwrap().as_slice(), b"hunter2");
        assert!(!sealed.ciphertext.contains(&hex::encode(b"hunter2")));
        assert!(matches!(sealed.open(&bob, "alice"), Err(SealError::Open { .. })));
        assert!(matches!(sealed.open(&alice, "bob"), Err(SealError::Open { .. })));
        let mut moved = sealed.clone();
        moved.device_id = "d2".into();
        assert!(matches!(moved.open(&alice, "alice"), Err(SealError::Open { .. })));
        assert!(!format!("{sealed:?}").contains(&sealed.ciphertext));
        assert!(matches!(seal("zz", "a", "d", "k", b"x"), Err(SealError::BadRecipient(_))));

        let key: [u8; 32] = rand::random();
        let (n, ct) = encrypt_at_rest(&key, "d1", "password", b"hunter2").unwrap();
        assert_eq!(
            decrypt_at_rest(&key, "d1", "password", &n, &ct).unwrap().as_slice(),
            b"hunter2"
        );
        assert!(decrypt_at_rest(&key, "d2", "password", &n, &ct).is_err());
        assert!(decrypt_at_rest(&[0; 32], "d1", "password", &n, &ct).is_err());
    }
}
