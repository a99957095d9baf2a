//! Which character set a document's bytes are in, and its text as UTF-8.
//!
//! In the order the HTML standard sniffs them, for every text format: a byte-order
//! mark; the charset the sender declared (the upload's `Content-Type`); for HTML
//! only, a `<meta charset>` or `<meta http-equiv="content-type">` in the first
//! 1024 bytes; else UTF-8. Bytes that are not valid in the set chosen refuse the
//! document rather than being replaced: a wrong guess would index mojibake that no
//! question ever finds.

use encoding_rs::{
    DecoderResult, Encoding, REPLACEMENT, UTF_8, UTF_16BE, UTF_16LE, WINDOWS_1252, X_USER_DEFINED,
};

/// How far into an HTML document a `<meta>` declaration is looked for (as browsers do).
const PRESCAN_BYTES: usize = 1024;

/// The `charset` parameter of a media type (`text/html; charset=GBK`), if any.
pub fn of_media_type(media_type: &str) -> Result<Option<&'static Encoding>, String> {
    for parameter in media_type.split(';').skip(1) {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("charset") {
            continue;
        }
        return of_label(value.trim().trim_matches('"')).map(Some);
    }
    Ok(None)
}

/// The character set a label names (`gbk`, `GB18030`, `utf-8` …).
pub fn of_label(label: &str) -> Result<&'static Encoding, String> {
    // The "replacement" set stands for encodings that are unsafe to decode
    // (ISO-2022-KR, HZ): refusing them is the only honest answer.
    match Encoding::for_label(label.as_bytes()) {
        Some(encoding) if encoding != REPLACEMENT => Ok(encoding),
        _ => Err(format!(
            "`{label}` is not a character set ragway reads (use e.g. utf-8, gb18030, gbk, big5, shift_jis)"
        )),
    }
}

/// The document's text: `declared` is the sender's charset, `html` allows `<meta>`.
pub fn decode(
    bytes: &[u8],
    declared: Option<&'static Encoding>,
    html: bool,
) -> Result<String, String> {
    let (encoding, skip) = match Encoding::for_bom(bytes) {
        Some((encoding, bom)) => (encoding, bom),
        None => match declared.or_else(|| html.then(|| meta_charset(bytes)).flatten()) {
            Some(encoding) => (encoding, 0),
            None => {
                return std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| {
                    format!(
                        "the document is not UTF-8 text (at byte {}): convert it, or declare \
                         its character set (`charset=gb18030` in the upload's content type, \
                         `<meta charset>` in HTML, or `ragway ingest --charset`)",
                        e.valid_up_to()
                    )
                });
            }
        },
    };
    strict(encoding, &bytes[skip..]).map_err(|at| {
        format!(
            "the document is not valid {} text (at byte {})",
            encoding.name(),
            at + skip
        )
    })
}

/// `bytes` decoded, or the offset of the first byte that is not valid in `encoding`.
fn strict(encoding: &'static Encoding, bytes: &[u8]) -> Result<String, usize> {
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let room = decoder
        .max_utf8_buffer_length_without_replacement(bytes.len())
        .ok_or(0_usize)?;
    let mut text = String::with_capacity(room);
    let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut text, true);
    match result {
        DecoderResult::InputEmpty => Ok(text),
        DecoderResult::Malformed(bad, after) => {
            Err(read.saturating_sub(usize::from(bad) + usize::from(after)))
        }
        // Not reached: the buffer was sized for the worst case.
        DecoderResult::OutputFull => Err(read),
    }
}

// === the <meta> prescan ===

/// The charset a `<meta>` near the top of an HTML page declares: the HTML
/// standard's "prescan a byte stream", which skips comments and reads attributes
/// the way the parser will (so a `>` inside a quoted value ends nothing).
pub fn meta_charset(bytes: &[u8]) -> Option<&'static Encoding> {
    let head = &bytes[..bytes.len().min(PRESCAN_BYTES)];
    let mut at = 0;
    while at < head.len() {
        let rest = &head[at..];
        if rest.starts_with(b"<!--") {
            // `<!-->` closes itself: the search starts inside the opener.
            at += 2 + find(&rest[2..], b"-->").map_or(rest.len(), |end| end + 3);
        } else if starts_with_ignoring_case(rest, b"<meta")
            && rest.get(5).is_some_and(|&b| is_space(b) || b == b'/')
        {
            let mut cursor = at + 5;
            if let Some(encoding) = meta(head, &mut cursor) {
                return Some(encoding);
            }
            at = cursor;
        } else if rest.len() > 1
            && (rest[1].is_ascii_alphabetic()
                || (rest[1] == b'/' && rest.get(2).is_some_and(u8::is_ascii_alphabetic)))
        {
            // Any other tag: step over its name and attributes.
            let mut cursor = at + 1;
            while cursor < head.len() && !is_space(head[cursor]) && head[cursor] != b'>' {
                cursor += 1;
            }
            while attribute(head, &mut cursor).is_some() {}
            at = cursor + 1;
        } else if rest.starts_with(b"<!") || rest.starts_with(b"</") || rest.starts_with(b"<?") {
            at += find(rest, b">").map_or(rest.len(), |end| end + 1);
        } else {
            at += 1;
        }
    }
    None
}

/// The attributes of one `<meta>` tag, read from `*cursor`; its charset, if it
/// declares one in either form.
fn meta(head: &[u8], cursor: &mut usize) -> Option<&'static Encoding> {
    let (mut charset, mut content, mut pragma) = (None, None, false);
    while let Some((name, value)) = attribute(head, cursor) {
        match name.as_slice() {
            b"charset" if charset.is_none() => charset = Some(value),
            b"content" if content.is_none() => content = charset_in_content(&value),
            b"http-equiv" => pragma |= value == b"content-type",
            _ => {}
        }
    }
    *cursor += 1;
    let label = charset.or(if pragma { content } else { None })?;
    let encoding = Encoding::for_label(&label)?;
    // A page cannot declare a UTF-16 set in its own ASCII bytes; the standard
    // reads such a declaration as UTF-8, and x-user-defined as windows-1252.
    Some(match encoding {
        e if e == UTF_16BE || e == UTF_16LE => UTF_8,
        e if e == X_USER_DEFINED => WINDOWS_1252,
        e if e == REPLACEMENT => return None,
        e => e,
    })
}

/// One attribute from `*cursor`, its name and value lower-cased; `None` at the
/// tag's end (the cursor then on the `>`) or the input's.
fn attribute(head: &[u8], cursor: &mut usize) -> Option<(Vec<u8>, Vec<u8>)> {
    let at = |i: usize| head.get(i).copied();
    while at(*cursor).is_some_and(|b| is_space(b) || b == b'/') {
        *cursor += 1;
    }
    let mut name = Vec::new();
    loop {
        match at(*cursor)? {
            b'>' if name.is_empty() => return None,
            b'=' if !name.is_empty() => break,
            b if is_space(b) || b == b'/' || b == b'>' => {
                while at(*cursor).is_some_and(is_space) {
                    *cursor += 1;
                }
                if at(*cursor) != Some(b'=') {
                    return Some((name, Vec::new()));
                }
                break;
            }
            b => name.push(b.to_ascii_lowercase()),
        }
        *cursor += 1;
    }
    *cursor += 1; // the `=`
    while at(*cursor).is_some_and(is_space) {
        *cursor += 1;
    }
    let mut value = Vec::new();
    match at(*cursor)? {
        quote @ (b'"' | b'\'') => {
            *cursor += 1;
            while let Some(b) = at(*cursor) {
                *cursor += 1;
                if b == quote {
                    return Some((name, value));
                }
                value.push(b.to_ascii_lowercase());
            }
            None
        }
        _ => {
            while let Some(b) = at(*cursor).filter(|&b| !is_space(b) && b != b'>') {
                value.push(b.to_ascii_lowercase());
                *cursor += 1;
            }
            Some((name, value))
        }
    }
}

/// The charset named in a `content="text/html; charset=gbk"` value.
fn charset_in_content(content: &[u8]) -> Option<Vec<u8>> {
    let mut rest = content;
    loop {
        let at = find(rest, b"charset")?;
        rest = &rest[at + 7..];
        let trimmed = trim_start(rest);
        if let Some(value) = trimmed.strip_prefix(b"=") {
            let value = trim_start(value);
            return match value.first()? {
                &quote @ (b'"' | b'\'') => {
                    let end = value[1..].iter().position(|&b| b == quote)?;
                    Some(value[1..end + 1].to_vec())
                }
                _ => Some(
                    value
                        .iter()
                        .take_while(|&&b| !is_space(b) && b != b';')
                        .copied()
                        .collect(),
                ),
            };
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0c' | b'\r')
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_space(b))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn starts_with_ignoring_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniffed(page: &str) -> Option<&'static str> {
        meta_charset(page.as_bytes()).map(|e| e.name())
    }

    #[test]
    fn meta_declarations_in_either_form() {
        assert_eq!(sniffed("<meta charset=gbk>"), Some("GBK"));
        assert_eq!(sniffed("<html><head><META CHARSET='GB2312'/>"), Some("GBK"));
        assert_eq!(
            sniffed(r#"<meta http-equiv="Content-Type" content="text/html; charset=gb18030">"#),
            Some("gb18030")
        );
        assert_eq!(
            sniffed(r#"<meta content='text/html;charset="big5"' http-equiv=content-type>"#),
            Some("Big5")
        );
        assert_eq!(sniffed("<meta charset=utf-16le>"), Some("UTF-8"));
    }

    #[test]
    fn what_only_looks_like_a_declaration_is_not_one() {
        // In a comment, in another tag's attribute, without the pragma, unknown.
        assert_eq!(sniffed("<!-- <meta charset=gbk> -->"), None);
        assert_eq!(sniffed(r#"<a title="<meta charset=gbk>">x</a>"#), None);
        assert_eq!(sniffed(r#"<meta content="text/html; charset=gbk">"#), None);
        assert_eq!(sniffed("<meta charset=klingon>"), None);
        assert_eq!(sniffed("<meta"), None);
        let late = format!("{}<meta charset=gbk>", " ".repeat(PRESCAN_BYTES));
        assert_eq!(sniffed(&late), None, "past the first 1024 bytes");
        // The first known declaration wins.
        assert_eq!(
            sniffed("<meta charset=nope><meta charset=big5>"),
            Some("Big5")
        );
    }

    #[test]
    fn media_type_charsets() {
        assert_eq!(of_media_type("text/html"), Ok(None));
        assert_eq!(
            of_media_type("text/html; Charset=\"GB18030\"").map(|e| e.map(|e| e.name())),
            Ok(Some("gb18030"))
        );
        assert!(of_media_type("text/plain; charset=klingon").is_err());
        assert!(of_media_type("text/plain; charset=iso-2022-kr").is_err());
    }

    #[test]
    fn bom_then_declaration_then_utf8() {
        let (gbk, _, _) = encoding_rs::GBK.encode("退货");
        assert_eq!(decode(&gbk, Some(encoding_rs::GBK), false).unwrap(), "退货");
        // A byte-order mark outranks what was declared.
        let utf8_bom = [b"\xef\xbb\xbf".as_slice(), "退货".as_bytes()].concat();
        assert_eq!(
            decode(&utf8_bom, Some(encoding_rs::GBK), false).unwrap(),
            "退货"
        );
        let utf16 = [0xff, 0xfe, b'o', 0, b'k', 0];
        assert_eq!(decode(&utf16, None, false).unwrap(), "ok");
        // Undeclared bytes must be UTF-8; invalid ones name where they fail.
        let error = decode(&gbk, None, false).unwrap_err();
        assert!(
            error.contains("not UTF-8") && error.contains("byte 0"),
            "{error}"
        );
        let error = decode(&[b'a', 0x81], Some(encoding_rs::GBK), false).unwrap_err();
        assert!(
            error.contains("not valid GBK") && error.contains("byte 1"),
            "{error}"
        );
    }
}
