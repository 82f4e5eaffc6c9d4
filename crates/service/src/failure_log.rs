//! The tail of a failed sandbox's output, made safe to keep (issue 13 item 5): bounded in
//! lines and bytes, with secrets masked before it reaches the store, a log line or `status`.
//!
//! Masked are the values the service knows to be secret (its GitHub token, App key, webhook
//! secret, Modal token — passed in by the caller), and anything shaped like one even when
//! the service never saw it: GitHub token prefixes (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`,
//! `github_pat_`) and long base64 runs such as an encoded JIT config (the runner's own
//! credentials), whatever printed them.

/// Lines kept from the end of a sandbox's output.
pub const TAIL_LINES: usize = 40;
/// Bytes kept from the end of a sandbox's output (after the line cut).
pub const TAIL_BYTES: usize = 4096;
/// What a masked secret is replaced with.
pub const MASK: &str = "***";
/// A base64 run at least this long is treated as a credential (a JIT config is kilobytes).
const BLOB_MIN: usize = 64;
/// Known secrets shorter than this are not masked by value: masking "abc" everywhere would
/// garble the log and say nothing safe (such values are refused as secrets at start-up).
const SECRET_MIN: usize = 6;
const TOKEN_PREFIXES: &[&str] = &["github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"];

/// The last [`TAIL_LINES`] lines and [`TAIL_BYTES`] bytes of `output`, with every secret
/// masked. Masking happens before the cut, so a secret split by the cut cannot leave half.
pub fn tail(output: &str, secrets: &[&str]) -> String {
    let masked = mask(output, secrets);
    let lines: Vec<&str> = masked.lines().collect();
    let kept = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if kept.len() <= TAIL_BYTES {
        return kept;
    }
    let mut start = kept.len() - TAIL_BYTES;
    while !kept.is_char_boundary(start) {
        start += 1;
    }
    kept[start..].to_string()
}

/// `text` with known secret values, GitHub tokens and long base64 runs replaced by [`MASK`].
pub fn mask(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= SECRET_MIN) {
        out = out.replace(secret, MASK);
    }
    mask_shapes(&out)
}

/// Replaces each word that looks like a token or a credential blob.
fn mask_shapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if is_word_char(c) {
            word.push(c);
        } else {
            flush(&mut out, &mut word);
            out.push(c);
        }
    }
    flush(&mut out, &mut word);
    out
}

fn flush(out: &mut String, word: &mut String) {
    if looks_secret(word) {
        out.push_str(MASK);
    } else {
        out.push_str(word);
    }
    word.clear();
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-')
}

fn looks_secret(word: &str) -> bool {
    let token = TOKEN_PREFIXES
        .iter()
        .any(|p| word.starts_with(p) && word.len() >= p.len() + 20);
    // A long word without a path separator is masked even if it is not base64-like: a
    // masked harmless word costs less than a kept credential.
    let blob = word.len() >= BLOB_MIN && !word.contains('/');
    token || blob || is_long_base64(word)
}

/// A long run mixing upper case, lower case and digits, like base64 (paths and plain words
/// rarely do all three for this long).
fn is_long_base64(word: &str) -> bool {
    word.len() >= BLOB_MIN
        && word.chars().any(|c| c.is_ascii_uppercase())
        && word.chars().any(|c| c.is_ascii_lowercase())
        && word.chars().any(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_are_masked_wherever_they_appear() {
        let out = mask("token=s3cr3t-value; again s3cr3t-value.", &["s3cr3t-value", "ab"]);
        assert_eq!(out, "token=***; again ***.");
    }

    #[test]
    fn github_tokens_and_jit_config_blobs_are_masked_by_shape() {
        let jit = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9eyJydW5uZXIiOiJtb2RhbC0xIn0AbCdEfGh12345678=";
        let text = format!("using ghp_abcdefghijklmnopqrstuvwxyz0123 and {jit}\nplain /usr/local/bin line");
        let out = mask(&text, &[]);
        assert!(!out.contains("ghp_abc"), "{out}");
        assert!(!out.contains("eyJhbGci"), "{out}");
        assert_eq!(out, "using *** and ***\nplain /usr/local/bin line");
    }

    #[test]
    fn the_tail_keeps_the_last_lines_and_bytes_only() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let kept = tail(&text, &[]);
        assert!(kept.starts_with("line 60\n"), "{kept}");
        assert!(kept.ends_with("line 99"), "{kept}");
        let long = "é".repeat(5000);
        let kept = tail(&long, &[]);
        assert!(kept.len() <= TAIL_BYTES && !kept.is_empty());
    }

    #[test]
    fn a_secret_is_masked_before_the_cut_so_no_half_of_it_survives() {
        let secret = "abcdefghij-secret";
        let text = format!("{}{secret}", "x ".repeat(TAIL_BYTES / 2 - 4));
        let kept = tail(&text, &[secret]);
        assert!(!kept.contains("secret"), "{kept}");
    }
}
