//! The arithmetic that tells a real identifier from a digit run of the same shape:
//! check digits (GB 11643, GB 32100 / GB 11714, Luhn), calendar dates and region
//! prefixes. Each function takes the identifier's characters and nothing else.

use std::time::{SystemTime, UNIX_EPOCH};

/// GB 11643: the 18th character of a resident ID number.
pub fn id_check_char(first17: &[u8]) -> u8 {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let sum: u32 = first17
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    CHECK[(sum % 11) as usize]
}

/// An 18-digit resident ID: region, birth date and check character.
pub fn valid_id18(id: &[u8]) -> bool {
    id.len() == 18
        && id[..17].iter().all(u8::is_ascii_digit)
        && valid_region(&id[..2])
        && valid_birth_date(number(&id[6..10]), number(&id[10..12]), number(&id[12..14]))
        && id[17].to_ascii_uppercase() == id_check_char(&id[..17])
}

/// A 15-digit resident ID (issued before 1999): region and a real 19yy birth date.
pub fn valid_id15(id: &[u8]) -> bool {
    id.len() == 15
        && id.iter().all(u8::is_ascii_digit)
        && valid_region(&id[..2])
        && valid_birth_date(
            1900 + number(&id[6..8]),
            number(&id[8..10]),
            number(&id[10..12]),
        )
}

/// The province-level codes of GB/T 2260 (plus 71/81/82 for Taiwan, Hong Kong and
/// Macau, and 83 for the residence permits issued to their residents).
fn valid_region(two: &[u8]) -> bool {
    matches!(
        number(two),
        11..=15 | 21..=23 | 31..=37 | 41..=46 | 50..=54 | 61..=65 | 71 | 81..=83
    )
}

/// A real calendar date, not in the future, at most 150 years ago.
fn valid_birth_date(year: u32, month: u32, day: u32) -> bool {
    let today = today();
    year + 150 >= today.0
        && (year, month, day) <= today
        && (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Today's (year, month, day) in UTC.
fn today() -> (u32, u32, u32) {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    civil_from_days(days)
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as u32, month as u32, day as u32)
}

fn number(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0, |n, d| n * 10 + u32::from(d.wrapping_sub(b'0')))
}

/// The Luhn check over a run of digits.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                if d > 4 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether a card number's issuer prefix and length belong to a scheme ragway
/// recognises: UnionPay (62, 16–19 digits), mainland banks' own debit ranges (60 —
/// Bank of China's 6013 —, 65, and 95 — ICBC's 9558; 16–19), Visa (4, 16 or 19),
/// Mastercard (51–55 and 2221–2720, 16), American Express (34/37, 15) and JCB
/// (3528–3589, 16–19).
pub fn card_scheme(digits: &[u8]) -> bool {
    let len = digits.len();
    if !(15..=19).contains(&len) {
        return false;
    }
    let prefix = |n: usize| number(&digits[..n]);
    match digits.first() {
        Some(b'6') => matches!(prefix(2), 60 | 62 | 65) && len >= 16,
        Some(b'9') => prefix(2) == 95 && len >= 16,
        Some(b'4') => len == 16 || len == 19,
        Some(b'5') => (51..=55).contains(&prefix(2)) && len == 16,
        Some(b'2') => (2221..=2720).contains(&prefix(4)) && len == 16,
        Some(b'3') => match prefix(2) {
            34 | 37 => len == 15,
            35 => (3528..=3589).contains(&prefix(4)) && (16..=19).contains(&len),
            _ => false,
        },
        _ => false,
    }
}

/// The characters of GB 32100 codes, in value order (no I, O, S, V, Z).
const USCC_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";

fn uscc_value(c: u8) -> Option<u32> {
    USCC_ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
}

/// A unified social credit code (GB 32100): registering authority and entity type,
/// a region, a valid organisation code (GB 11714) and the check character.
pub fn valid_credit_code(code: &[u8]) -> bool {
    const WEIGHTS: [u32; 17] = [
        1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
    ];
    if code.len() != 18
        || !b"123456789ANY".contains(&code[0])
        || !code[1].is_ascii_digit()
        || !code[2..8].iter().all(u8::is_ascii_digit)
        || !valid_region(&code[2..4])
        || !valid_org_code(&code[8..17])
    {
        return false;
    }
    let mut sum = 0;
    for (&c, w) in code[..17].iter().zip(WEIGHTS) {
        let Some(v) = uscc_value(c) else {
            return false;
        };
        sum += v * w;
    }
    let check = (31 - sum % 31) % 31;
    uscc_value(code[17]) == Some(check)
}

/// GB 11714: eight characters and a check character (a digit or X).
fn valid_org_code(code: &[u8]) -> bool {
    const WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];
    let mut sum = 0;
    for (&c, w) in code[..8].iter().zip(WEIGHTS) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        sum += v * w;
    }
    let expected = match 11 - sum % 11 {
        10 => b'X',
        11 => b'0',
        n => b'0' + n as u8,
    };
    code[8] == expected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gb11643_check_characters() {
        // The standard's own example, and one whose check character is X.
        assert!(valid_id18(b"11010519491231002X"));
        assert!(valid_id18(b"440524188001010014"));
        assert!(!valid_id18(b"110105194912310021"));
        // A real date is required: 30 February.
        assert!(!valid_id18(b"110105194902300021"));
    }

    #[test]
    fn credit_code_of_a_registered_company() {
        // Alibaba (China) Co., Ltd., as printed on its business licence.
        assert!(valid_credit_code(b"91330100716105852F"));
        assert!(!valid_credit_code(b"91330100716105852E"));
        // Organisation code check broken (…853 instead of …852), outer check refitted.
        assert!(!valid_credit_code(b"913301007161058530"));
    }

    #[test]
    fn luhn_and_schemes() {
        assert!(luhn(b"4111111111111111"));
        assert!(!luhn(b"4111111111111112"));
        assert!(card_scheme(b"6222021234567890128"));
        assert!(card_scheme(b"378282246310005"));
        assert!(!card_scheme(b"9111111111111111"));
        assert!(card_scheme(b"9558801234567890123"));
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
    }
}
