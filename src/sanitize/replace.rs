//! What a detected value becomes under the `mask` and `hash` actions.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::kind::Kind;

/// Stars out the middle of a value, keeping its separators: `138****5678`,
/// `6222 **** **** 0128`, `z***@example.com`.
pub fn mask(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Email => match value.split_once('@') {
            Some((local, domain)) => {
                let first = local.chars().next().unwrap_or('*');
                format!("{first}***@{domain}")
            }
            None => "***".to_owned(),
        },
        // Nothing of a secret may show: even its first characters can be the secret.
        Kind::Secret => "****".to_owned(),
        Kind::IpAddress => match value.find(['.', ':']) {
            Some(cut) if value.contains('.') => format!("{}.*.*.*", &value[..cut]),
            Some(cut) => format!("{}:****", &value[..cut]),
            None => "***".to_owned(),
        },
        // The national number: a country prefix stays as written.
        Kind::Mobile => {
            let count = value.bytes().filter(u8::is_ascii_digit).count();
            star(value, count.saturating_sub(11) + 3, 4)
        }
        _ => {
            let count = value.bytes().filter(u8::is_ascii_alphanumeric).count();
            match count {
                15.. => star(value, 4, 4),
                11.. => star(value, 3, 4),
                _ => star(value, 1, 2),
            }
        }
    }
}

/// Replaces the letters and digits of `value` by `*`, but for the first `keep_first`
/// and the last `keep_last`.
fn star(value: &str, keep_first: usize, keep_last: usize) -> String {
    let total = value.chars().filter(char::is_ascii_alphanumeric).count();
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if !c.is_ascii_alphanumeric() {
                return c;
            }
            seen += 1;
            if seen <= keep_first || seen > total.saturating_sub(keep_last) {
                c
            } else {
                '*'
            }
        })
        .collect()
}

/// A keyed hash: equal values give equal tokens under one key, and without the key
/// a token cannot be matched to a guessed value (a plain hash of an 11-digit mobile
/// number is reversed by trying them all).
pub fn hash(kind: Kind, value: &str, key: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex = crate::encode::hex(&digest[..6]);
    format!("<{}#{hex}>", kind.tag())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask(Kind::Mobile, "13812345678"), "138****5678");
        assert_eq!(mask(Kind::Mobile, "+86 138-1234-5678"), "+86 138-****-5678");
        assert_eq!(
            mask(Kind::BankCard, "6222 0212 3456 7890"),
            "6222 **** **** 7890"
        );
        assert_eq!(
            mask(Kind::IdCard, "11010519491231002X"),
            "1101**********002X"
        );
        assert_eq!(
            mask(Kind::Email, "zhang.san@example.com"),
            "z***@example.com"
        );
        assert_eq!(mask(Kind::IpAddress, "192.168.1.20"), "192.*.*.*");
        assert_eq!(mask(Kind::Secret, "sk-abcdef0123456789abcdef"), "****");
    }

    #[test]
    fn hashes_are_keyed_and_stable() {
        let a = hash(Kind::Mobile, "13812345678", b"k1");
        assert_eq!(a, hash(Kind::Mobile, "13812345678", b"k1"));
        assert_ne!(a, hash(Kind::Mobile, "13812345678", b"k2"));
        assert!(a.starts_with("<PHONE#") && a.len() == "<PHONE#>".len() + 12);
    }
}
