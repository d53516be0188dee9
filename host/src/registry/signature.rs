//! Component signatures: ed25519 over the exact `.wasm` bytes, carried as base64 text (a
//! `<file>.wasm.sig` file, the `X-Component-Signature` header or the `signature` form part).
//!
//! Keys are PEM files as OpenSSL writes them: `openssl genpkey -algorithm ed25519 -out
//! signing.pem` (PKCS#8, kept by whoever signs) and `openssl pkey -in signing.pem -pubout -out
//! verify.pem` (SubjectPublicKeyInfo, configured on the host as `FULFILLD_COMPONENT_PUBLIC_KEY`).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

/// Where a component file's signature is kept: `<file>.sig` next to it (what `component sign`
/// writes, and what `component deploy` and a start-up `FULFILLD_COMPONENT` pick up).
pub fn signature_path(file: &Path) -> std::path::PathBuf {
    let mut path = file.as_os_str().to_owned();
    path.push(".sig");
    std::path::PathBuf::from(path)
}

/// The signature shipped next to a component file (`<file>.sig`), if there is one.
pub fn shipped_with(file: &Path) -> Option<String> {
    std::fs::read_to_string(signature_path(file)).ok()
}

/// What a deploy's signature must satisfy.
#[derive(Debug, Clone, Default)]
pub struct SignaturePolicy {
    /// The key signatures are verified with (`FULFILLD_COMPONENT_PUBLIC_KEY`).
    pub key: Option<VerifyingKey>,
    /// Refuse unsigned components (`FULFILLD_REQUIRE_SIGNED`).
    pub require: bool,
}

/// How a candidate's signature came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// It came with a signature that verifies against the configured key.
    Verified,
    /// No signature, and none is required.
    Unsigned,
}

impl SignaturePolicy {
    /// Checks `signature` (base64 text, surrounding whitespace ignored) for `wasm`. The error
    /// says what is wrong, for the deployer.
    pub fn check(&self, wasm: &[u8], signature: Option<&str>) -> Result<SignatureCheck, String> {
        let signature = signature.map(str::trim).filter(|s| !s.is_empty());
        match (signature, &self.key) {
            (None, _) if self.require => Err(
                "unsigned: FULFILLD_REQUIRE_SIGNED is on and no signature came with the component"
                    .into(),
            ),
            (None, _) => Ok(SignatureCheck::Unsigned),
            (Some(_), None) => Err(
                "a signature came with the component but no FULFILLD_COMPONENT_PUBLIC_KEY is \
                 configured to verify it"
                    .into(),
            ),
            (Some(text), Some(key)) => {
                let signature = decode(text)?;
                key.verify(wasm, &signature).map_err(|_| {
                    "bad signature: it does not verify against FULFILLD_COMPONENT_PUBLIC_KEY for \
                     these bytes"
                        .to_owned()
                })?;
                Ok(SignatureCheck::Verified)
            }
        }
    }
}

fn decode(text: &str) -> Result<Signature, String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("the signature is not base64: {e}"))?;
    let bytes: [u8; 64] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "the signature is {} bytes; an ed25519 signature is 64",
            bytes.len()
        )
    })?;
    Ok(Signature::from_bytes(&bytes))
}

/// Reads a PEM public key (SubjectPublicKeyInfo, `-----BEGIN PUBLIC KEY-----`).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
        format!(
            "{} is not an ed25519 public key in PEM (openssl pkey -pubout): {e}",
            path.display()
        )
    })
}

/// Reads a PEM private key (PKCS#8, `-----BEGIN PRIVATE KEY-----`).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        format!(
            "{} is not an ed25519 private key in PEM (openssl genpkey -algorithm ed25519): {e}",
            path.display()
        )
    })
}

/// The base64 signature of `wasm`.
pub fn sign(key: &SigningKey, wasm: &[u8]) -> String {
    STANDARD.encode(key.sign(wasm).to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn verifies_and_refuses() {
        let key = key();
        let policy = SignaturePolicy {
            key: Some(key.verifying_key()),
            require: true,
        };
        let wasm = b"\0asm component bytes";
        let good = sign(&key, wasm);
        assert_eq!(
            policy.check(wasm, Some(&good)),
            Ok(SignatureCheck::Verified)
        );
        let other = sign(&SigningKey::from_bytes(&[8u8; 32]), wasm);
        assert!(
            policy
                .check(wasm, Some(&other))
                .unwrap_err()
                .contains("bad signature")
        );
        assert!(
            policy
                .check(b"tampered", Some(&good))
                .unwrap_err()
                .contains("bad signature")
        );
        assert!(policy.check(wasm, None).unwrap_err().contains("unsigned"));
        assert!(
            policy
                .check(wasm, Some("!!"))
                .unwrap_err()
                .contains("base64")
        );
        assert!(policy.check(wasm, Some("AAAA")).unwrap_err().contains("64"));
        let optional = SignaturePolicy {
            require: false,
            ..policy
        };
        assert_eq!(optional.check(wasm, None), Ok(SignatureCheck::Unsigned));
        let keyless = SignaturePolicy::default();
        assert!(
            keyless
                .check(wasm, Some(&good))
                .unwrap_err()
                .contains("no FULFILLD_COMPONENT_PUBLIC_KEY")
        );
    }
}
