//! The validators of [`super::detect`]: what a pattern cannot check — check
//! digits, dates, issuer prefixes — and what may stand next to a value.
//!
//! A value is refused when it is part of a longer token: a digit glued to a number
//! means a longer number. Letters are different for the numeric kinds (mobile,
//! landline, ID number, bank card): people write `tel13912348765`,
//! `id110105199003071239`, `card6222021234567890128`, `13912348765end`. Such a value
//! is taken when
//!
//! - the letters before it are a word that begins its token (nothing alphanumeric
//!   before them), or that follows a value just found (`13912348765or13812345678`):
//!   letters glued to digits further back are a hash or a name (`a3f5b9c13912…`,
//!   `v2tel139…`);
//! - no digit touches it on either side: the digits are exactly the value;
//! - the letters that touch it are not all `a`–`f`: `ab13912348765`,
//!   `13912348765de` and `deadbeef…` read as hexadecimal.
//!
//! Every validator receives the text from the end of the last value found (see
//! [`super::detect::Detectors::find`]), so "begins its token" covers both cases.

use std::net::Ipv6Addr;
use std::ops::Range;

use super::check;

pub fn accept(_: &str, range: Range<usize>) -> Option<Range<usize>> {
    Some(range)
}

fn before(text: &str, at: usize) -> Option<char> {
    text[..at].chars().next_back()
}

fn after(text: &str, at: usize) -> Option<char> {
    text[at..].chars().next()
}

fn alnum(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric())
}

fn digit(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_digit())
}

/// Not glued to letters or digits on either side.
pub fn standalone(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    (!alnum(before(text, range.start)) && !alnum(after(text, range.end))).then_some(range)
}

// === letters next to a number ===

/// What touches a number on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Nothing, or neither a letter nor a digit.
    Clear,
    /// A digit: the number goes on.
    Digit,
    /// ASCII letters: whether all are `a`–`f`, and whether a digit lies beyond them.
    Letters { hex: bool, then_digit: bool },
}

fn side(letters: &[u8], beyond: Option<&u8>) -> Side {
    let then_digit = beyond.is_some_and(u8::is_ascii_digit);
    if letters.is_empty() {
        return if then_digit { Side::Digit } else { Side::Clear };
    }
    let hex = letters.iter().all(u8::is_ascii_hexdigit);
    Side::Letters { hex, then_digit }
}

/// Bytes, not chars: an ASCII byte is never part of a longer UTF-8 sequence.
fn side_before(text: &str, at: usize) -> Side {
    let bytes = &text.as_bytes()[..at];
    let n = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_alphabetic())
        .count();
    side(&bytes[at - n..], bytes[..at - n].last())
}

fn side_after(text: &str, at: usize) -> Side {
    let bytes = &text.as_bytes()[at..];
    let n = bytes.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    side(&bytes[..n], bytes.get(n))
}

/// The rule of the module docs for a number between `left` and `right`.
fn stands_apart(left: Side, right: Side) -> bool {
    use Side::{Clear, Digit, Letters};
    match (left, right) {
        (Digit, _)
        | (_, Digit)
        | (
            Letters {
                then_digit: true, ..
            },
            _,
        ) => false,
        (Clear, Clear) => true,
        (Letters { hex: a, .. }, Letters { hex: b, .. }) => !(a && b),
        (Letters { hex, .. }, Clear) | (Clear, Letters { hex, .. }) => !hex,
    }
}

/// A number of a numeric kind, standing apart as the module docs say.
fn apart(text: &str, range: &Range<usize>) -> bool {
    stands_apart(side_before(text, range.start), side_after(text, range.end))
}

/// Whether a value of a numeric kind could begin at `at`, inside a run of letters
/// and digits: only where a word of letters that begins the run ends. `Some(next)`
/// is the next such place from `at`, `None` when the run has none.
pub fn next_start_in_run(text: &str, at: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let letters = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_alphabetic())
        .count();
    let end = at + letters;
    if letters == 0 || !bytes.get(end).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let starts_word = !bytes[..at]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_alphabetic())
        .is_some_and(u8::is_ascii_digit);
    starts_word.then_some(end)
}

// === numeric kinds ===

pub fn mobile(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    // `+1 381…` is a North American number, not a mainland mobile.
    let foreign = before(text, range.start) == Some('+') && !text[range.clone()].starts_with('+');
    (!foreign && apart(text, &range)).then_some(range)
}

pub fn landline(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    if !apart(text, &range) {
        return None;
    }
    let s = &text[range.clone()];
    let mut groups = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty());
    let area = groups.next()?;
    let local = groups.next()?;
    let fits = match area.as_bytes() {
        [b'0', b'1', b'0'] | [b'0', b'2', _] => local.len() == 8,
        [b'0', b'3'..=b'9', _, _] => local.len() == 7 || local.len() == 8,
        _ => false,
    };
    fits.then_some(range)
}

pub fn id_card(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let id = text[range.clone()].as_bytes();
    let valid = if id.len() == 18 {
        check::valid_id18(id)
    } else {
        check::valid_id15(id)
    };
    (valid && apart(text, &range)).then_some(range)
}

/// A card number, written whole or in groups. A run longer than a card is tried
/// cut at each of its separators, so `6222 0212 3456 7890 12 items` still finds
/// the card; the cut must leave a valid scheme prefix, length and Luhn sum.
pub fn bank_card(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let left = side_before(text, range.start);
    let s = &text[range.clone()];
    let separators: Vec<usize> = s
        .char_indices()
        .filter(|(_, c)| !c.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    let ends = std::iter::once(s.len()).chain(separators.iter().rev().copied());
    for end in ends {
        if !stands_apart(left, side_after(text, range.start + end)) {
            continue;
        }
        // One kind of separator within the card: mixed ones are not how anyone
        // writes a card number (and a date after it may use another).
        let mut used = separators
            .iter()
            .filter(|&&i| i < end)
            .map(|&i| s.as_bytes()[i]);
        if let Some(first) = used.next()
            && used.any(|b| b != first)
        {
            continue;
        }
        let number = digits(&s[..end]);
        if check::card_scheme(&number) && check::luhn(&number) {
            return Some(range.start..range.start + end);
        }
    }
    None
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes().filter(u8::is_ascii_digit).collect()
}

/// Letters before the `+` are not taken as a word here: `x+12345678` is arithmetic.
pub fn intl_phone(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let count = digits(&text[range.clone()]).len();
    let ok = !alnum(before(text, range.start))
        && !alnum(after(text, range.end))
        && (8..=15).contains(&count);
    ok.then_some(range)
}

// === other kinds ===

pub fn credit_code(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let valid = check::valid_credit_code(text[range.clone()].as_bytes());
    (valid && standalone(text, range.clone()).is_some()).then_some(range)
}

pub fn email(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let s = &text[range.clone()];
    let local = &s[..s.find('@')?];
    let bad_local = local.contains("..") || local.ends_with('.');
    (!bad_local && !alnum(after(text, range.end))).then_some(range)
}

/// Letters before an address are not taken as a word: `v1.2.3.4` is a version.
pub fn ipv4(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let prev = before(text, range.start);
    if alnum(prev) || prev == Some('.') || alnum(after(text, range.end)) {
        return None;
    }
    // `1.2.3.4.5` is a version or an outline number, not an address.
    if text[range.end..].starts_with('.') && digit(after(text, range.end + 1)) {
        return None;
    }
    let octets_ok = text[range.clone()]
        .split('.')
        .all(|o| o.parse::<u8>().is_ok() && (o.len() == 1 || !o.starts_with('0')));
    (octets_ok && !names_a_version(text, range.start)).then_some(range)
}

/// Whether the words just before `at` say a version number follows.
fn names_a_version(text: &str, at: usize) -> bool {
    let mut from = at.saturating_sub(12);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let window = text[from..at].to_ascii_lowercase();
    ["version", "ver.", "ver ", "release", "版本", "build"]
        .iter()
        .any(|w| window.contains(w))
}

pub fn ipv6(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let edge = |c: Option<char>| alnum(c) || matches!(c, Some(':' | '_' | '.'));
    if edge(before(text, range.start)) || edge(after(text, range.end)) {
        return None;
    }
    let s = &text[range.clone()];
    s.parse::<Ipv6Addr>().ok()?;
    // `a::b`, `::1` and the like are more often code than addresses.
    let groups = s.split(':').filter(|g| !g.is_empty());
    let (mut count, mut full) = (0, false);
    for group in groups {
        count += 1;
        full |= group.len() == 4 && group.bytes().any(|b| b.is_ascii_digit());
    }
    (count >= 3 || full).then_some(range)
}

pub fn api_key(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let prev = before(text, range.start);
    let body = &text[range.start + 3..range.end];
    let random =
        body.bytes().any(|b| b.is_ascii_digit()) && body.bytes().any(|b| b.is_ascii_alphabetic());
    (random && !alnum(prev) && !matches!(prev, Some('-' | '_'))).then_some(range)
}

/// Only the token after `Bearer` is the secret.
pub fn bearer(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let s = &text[range.clone()];
    let token = s[6..].trim_start_matches([' ', '\t']);
    let start = range.end - token.len();
    let random = token.bytes().any(|b| b.is_ascii_digit());
    (random && !alnum(before(text, range.start))).then_some(start..range.end)
}

/// The credentials of `scheme://user:password@host` are the secret: the password,
/// and the user name with it (often an e-mail address or a phone number). A password
/// holding `@` runs to the last `@` before the path.
pub fn url_credentials(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let s = &text[range.clone()];
    let start = range.start + s.find("://")? + 3;
    Some(start..range.end - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sides(text: &str, value: &str) -> bool {
        let start = text.find(value).unwrap();
        apart(text, &(start..start + value.len()))
    }

    #[test]
    fn a_number_may_touch_a_word_of_letters() {
        for text in [
            "tel13912348765",
            "TEL13912348765",
            "13912348765end",
            "电话tel13912348765end，",
            "user_tel13912348765",
            "ab13912348765end",
        ] {
            assert!(sides(text, "13912348765"), "{text}");
        }
    }

    #[test]
    fn not_a_digit_nor_letters_glued_to_digits_nor_hex() {
        for text in [
            "139123487650",
            "a3f5b9c13912348765d0",
            "v2tel13912348765",
            "ab13912348765",
            "13912348765de",
            "deadbeef13912348765cafe",
        ] {
            assert!(!sides(text, "13912348765"), "{text}");
        }
    }

    #[test]
    fn only_the_end_of_a_leading_word_can_start_a_value() {
        assert_eq!(next_start_in_run("ID110105", 1), Some(2));
        assert_eq!(next_start_in_run("x ID110105", 2), Some(4));
        assert_eq!(next_start_in_run("9D110105", 1), None);
        assert_eq!(next_start_in_run("ID", 0), None);
        assert_eq!(next_start_in_run("110105", 0), None);
    }
}
