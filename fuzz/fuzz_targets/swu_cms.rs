//! The `.swu` signature check (`verify_signature`: a detached CMS signature in DER over
//! `sw-description`, verified with OpenSSL against the vendor certificates) on arbitrary
//! signature bytes, for a fixed vendor certificate and `sw-description`. Never a panic, and never
//! `Ok` for bytes that do not carry the vendor's signature over this content: an accepted input
//! holds the RSA signature value the vendor key made and the content's SHA-256 (the signed
//! `messageDigest`), and is refused for any other content. The untouched valid signature is
//! accepted. (Not every edit is refused: the vendor certificates are handed to OpenSSL as the
//! signer's, so an edit inside the signature's own copy of the certificate, for one, still
//! verifies with the trusted copy.)
//!
//! The certificate (RSA 2048, `keyUsage=digitalSignature`, `extendedKeyUsage=emailProtection`)
//! and its signature over the content (`openssl cms -sign -binary -nosmimecap -outform DER`, as
//! SWUpdate's tooling makes it) are made once per process. An input starting with `S` edits that
//! valid signature rather than standing for one: each following 4 bytes `[op, pos, pos, value]`
//! replace, XOR, insert or delete the byte at `pos` (big-endian, modulo the length) or cut the
//! signature there, so the fuzzer starts from a signature OpenSSL accepts.
#![no_main]

use fieldpatch_core::image::swu::verify_signature;
use libfuzzer_sys::fuzz_target;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::hash::{MessageDigest, hash};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::{ExtendedKeyUsage, KeyUsage};
use openssl::x509::{X509, X509NameBuilder};
use std::sync::OnceLock;

const CONTENT: &[u8] = b"software =\n{\n\tversion = \"2.1.0\";\n\thardware-compatibility = [ \"1.0\" ];\n\
    \timages: (\n\t{\n\t\tfilename = \"rootfs.img\";\n\t\ttype = \"raw\";\n\t\tdevice = \"/dev/mmcblk0p2\";\n\
    \t\tsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\";\n\t}\n\t);\n}\n";

struct Fixture {
    vendor_pem: Vec<u8>,
    signature: Vec<u8>,
    /// The RSA signature value inside `signature`.
    value: Vec<u8>,
    content_sha256: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, "Fuzz Gateway Vendor").unwrap();
        let name = name.build();
        let mut cert = X509::builder().unwrap();
        cert.set_version(2).unwrap();
        cert.set_serial_number(&Asn1Integer::from_bn(&BigNum::from_u32(7).unwrap()).unwrap())
            .unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(3650).unwrap()).unwrap();
        cert.append_extension(KeyUsage::new().digital_signature().build().unwrap()).unwrap();
        cert.append_extension(ExtendedKeyUsage::new().email_protection().build().unwrap()).unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = cert.build();
        let flags = CMSOptions::BINARY | CMSOptions::DETACHED | CMSOptions::NOSMIMECAP;
        let signature = CmsContentInfo::sign(Some(&cert), Some(&key), None, Some(CONTENT), flags)
            .unwrap()
            .to_der()
            .unwrap();
        // No unsigned attributes: the DER ends with the signature value, an OCTET STRING of the
        // key's size.
        let size = key.size();
        let (head, value) = signature.split_at(signature.len() - size);
        assert!(head.ends_with(&[0x04, 0x82, (size >> 8) as u8, size as u8]), "CMS layout");
        let f = Fixture {
            vendor_pem: cert.to_pem().unwrap(),
            value: value.to_vec(),
            content_sha256: hash(MessageDigest::sha256(), CONTENT).unwrap().to_vec(),
            signature,
        };
        verify_signature(CONTENT, &f.signature, &f.vendor_pem).expect("the valid signature");
        f
    })
}

/// The valid signature with the edits `ops` describes.
fn edited(valid: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut sig = valid.to_vec();
    for op in ops.chunks_exact(4) {
        let pos = usize::from(u16::from_be_bytes([op[1], op[2]]));
        let value = op[3];
        match op[0] % 5 {
            0 if !sig.is_empty() => {
                let at = pos % sig.len();
                sig[at] = value;
            }
            1 if !sig.is_empty() => {
                let at = pos % sig.len();
                sig[at] ^= value;
            }
            2 => sig.insert(pos % (sig.len() + 1), value),
            3 if !sig.is_empty() => {
                sig.remove(pos % sig.len());
            }
            4 => sig.truncate(pos % (sig.len() + 1)),
            _ => {}
        }
    }
    sig
}

/// LeakSanitizer's suppressions, read at start-up when the target is built with a sanitizer.
/// Leaks inside the system's libcrypto are not reported: it is built without frame pointers, so
/// their stacks end at `CRYPTO_zalloc` and only the library can be named. The one such leak this
/// target found is OpenSSL's own: 3.0's `CMS_verify` does not free its copy of the detached
/// content (`BIO_new_mem_buf`, about 270 bytes) when the signature's digest algorithms cannot be
/// set up (openssl/openssl#30471, fixed upstream by #30535); `verify_signature` has no way around
/// it through the `openssl` crate.
#[unsafe(no_mangle)]
pub extern "C" fn __lsan_default_suppressions() -> *const std::ffi::c_char {
    c"leak:libcrypto.so\n".as_ptr()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let sig = match data.strip_prefix(b"S") {
        Some(ops) => edited(&f.signature, ops),
        None => data.to_vec(),
    };
    let verdict = verify_signature(CONTENT, &sig, &f.vendor_pem);
    if sig == f.signature {
        assert!(verdict.is_ok(), "the valid signature was refused: {verdict:?}");
    }
    if verdict.is_ok() {
        assert!(contains(&sig, &f.value), "accepted without the vendor's signature value");
        assert!(contains(&sig, &f.content_sha256), "accepted without the content's digest");
        let mut other = CONTENT.to_vec();
        other[20] ^= 1;
        assert!(
            verify_signature(&other, &sig, &f.vendor_pem).is_err(),
            "the signature also verifies for other content"
        );
    }
});
