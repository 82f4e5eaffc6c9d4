//! `X-Hub-Signature-256`: HMAC-SHA256 of the raw request body with the webhook secret
//! (docs/github.md §1). Verified over the exact bytes received, before anything parses
//! them, and compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery's signature was refused. Callers answer 401 for every variant and log the
/// variant's name; none of them carries the expected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Hub-Signature-256 header is missing")]
    Missing,
    #[error("the X-Hub-Signature-256 header is not `sha256=` followed by 64 hex digits")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks `header` (the value of `X-Hub-Signature-256`) against `body`.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    if hex_digest.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected).map_err(|_| SignatureError::Mismatch)
}

/// The header value GitHub would send for `body`. Used by `modal-github-runner sign`-style
/// tooling and by tests that build deliveries by hand.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // An HMAC key may have any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/github.md §1: GitHub's documented vector and the octokit test vectors.
    const VECTORS: &[(&str, &str, &str)] = &[
        (
            "It's a Secret to Everybody",
            "Hello, World!",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ),
        (
            "mysecret",
            "{\n  \"foo\": \"bar\"\n}\n",
            "sha256=e3eccac34c43c7dc1cbb905488b1b81347fcc700a7b025697a9d07862256023f",
        ),
        (
            "mysecret",
            "{\"foo\":\"bar\"}",
            "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3",
        ),
        (
            "development",
            "{\n  \"foo\": \"Foo\\n\\u001B[34mbar: ♥♥♥♥♥♥♥♥\\nthis-is-lost\\u001B[0m\\u001B[2K\"\n}\n",
            "sha256=9dacf9003316b09be07df56d86a2d0d6872e42a1e6c72c3bad9ff915a7c5603e",
        ),
        (
            "development",
            "{\n  \"foo\": \"\\\\u001b\"\n}\n",
            "sha256=87316067e2011fae39998b18c46a14d83b3e7c3ffdd88fb2ee5afb7d11288e60",
        ),
    ];

    #[test]
    fn githubs_and_octokits_published_vectors_verify() {
        for (secret, body, header) in VECTORS {
            assert_eq!(
                verify(secret.as_bytes(), body.as_bytes(), Some(header)),
                Ok(()),
                "vector with secret {secret:?} and body {body:?}"
            );
            assert_eq!(sign(secret.as_bytes(), body.as_bytes()), *header);
        }
    }

    #[test]
    fn reserialised_json_no_longer_matches() {
        // The lower-case escape variant of the fourth vector: same JSON value, other bytes.
        let body = "{\n  \"foo\": \"Foo\\n\\u001b[34mbar: ♥♥♥♥♥♥♥♥\\nthis-is-lost\\u001b[0m\\u001b[2K\"\n}\n";
        let header = VECTORS[3].2;
        assert_eq!(
            verify(b"development", body.as_bytes(), Some(header)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn wrong_secret_wrong_digest_and_garbage_are_refused() {
        let (_, body, header) = VECTORS[0];
        assert_eq!(
            verify(b"wrong secret", body.as_bytes(), Some(header)),
            Err(SignatureError::Mismatch)
        );
        let wrong_digest = format!("sha256={}", "0".repeat(64));
        assert_eq!(
            verify(
                b"It's a Secret to Everybody",
                body.as_bytes(),
                Some(&wrong_digest)
            ),
            Err(SignatureError::Mismatch)
        );
        for garbage in [
            "foo",
            "sha256=",
            "sha256=zz",
            "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",
        ] {
            assert_eq!(
                verify(b"It's a Secret to Everybody", body.as_bytes(), Some(garbage)),
                Err(SignatureError::Malformed),
                "{garbage}"
            );
        }
        assert_eq!(verify(b"s", body.as_bytes(), None), Err(SignatureError::Missing));
    }

    #[test]
    fn a_non_hex_digest_of_the_right_length_is_malformed() {
        let header = format!("sha256={}", "g".repeat(64));
        assert_eq!(
            verify(b"s", b"body", Some(&header)),
            Err(SignatureError::Malformed)
        );
    }
}
