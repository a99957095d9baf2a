//! Text out of the formats documents arrive in. The result is Markdown-flavoured
//! plain text, so the chunker sees headings wherever the format had them.
//!
//! - `.txt`, `.md`: as they are;
//! - `.html`: through an HTML5 parser ([`html`]): headings as Markdown headings,
//!   blocks as paragraphs, scripts, styles and the site's navigation dropped;
//! - `.json`: an object with a text field, or an array of them; `.jsonl`: one such
//!   object per line. Each record becomes its own section, titled by its `title`
//!   (or `question`) field, so a chunk never mixes two records.
//!
//! - `.pdf`: the text layer, page by page (`pdf-extract` over `lopdf`, pure Rust).
//!   A scanned PDF has none and is refused; multi-column pages may lose their
//!   reading order, and CJK fonts without a `ToUnicode` map their text — for those,
//!   convert first (`pdftotext -layout`) and ingest the text.
//!
//! Every format but PDF is text in some character set: see [`charset`] for how
//! it is chosen (UTF-8 unless a byte-order mark, the sender, or an HTML page's
//! `<meta charset>` says otherwise).

pub mod charset;
mod dom;
mod html;

use encoding_rs::Encoding;
use serde_json::Value;

/// The formats ragway reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Html,
    Json,
    JsonLines,
    Pdf,
}

impl Format {
    pub const EXTENSIONS: &'static str = ".txt, .md, .markdown, .html, .htm, .json, .jsonl, .pdf";

    /// By the file name's extension.
    pub fn of_name(name: &str) -> Option<Format> {
        let extension = name.rsplit_once('.')?.1.to_ascii_lowercase();
        Some(match extension.as_str() {
            "txt" | "text" => Format::Text,
            "md" | "markdown" => Format::Markdown,
            "html" | "htm" => Format::Html,
            "json" => Format::Json,
            "jsonl" | "ndjson" => Format::JsonLines,
            "pdf" => Format::Pdf,
            _ => return None,
        })
    }

    /// By a media type (`text/markdown; charset=utf-8`).
    pub fn of_media_type(media_type: &str) -> Option<Format> {
        let essence = media_type.split(';').next()?.trim().to_ascii_lowercase();
        Some(match essence.as_str() {
            "text/plain" => Format::Text,
            "text/markdown" | "text/x-markdown" => Format::Markdown,
            "text/html" => Format::Html,
            "application/json" => Format::Json,
            "application/jsonl" | "application/x-ndjson" | "application/jsonlines" => {
                Format::JsonLines
            }
            "application/pdf" => Format::Pdf,
            _ => return None,
        })
    }
}

/// A document's text, and its title when the format names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub title: Option<String>,
    pub text: String,
}

/// The fields a JSON record's text is read from, in order of preference.
const TEXT_FIELDS: [&str; 4] = ["text", "content", "body", "answer"];
const TITLE_FIELDS: [&str; 3] = ["title", "question", "name"];

/// The text of a document in `format`; `charset` is the character set its sender
/// declared (the `charset` of the upload's content type), if any.
pub fn extract(
    format: Format,
    charset: Option<&'static Encoding>,
    bytes: &[u8],
) -> Result<Extracted, String> {
    if format == Format::Pdf {
        return pdf(bytes);
    }
    let text = charset::decode(bytes, charset, format == Format::Html)?;
    let extracted = match format {
        // (A PDF returned above.)
        Format::Text | Format::Markdown | Format::Pdf => Extracted { title: None, text },
        Format::Html => html::html(&text)?,
        Format::Json => {
            let value: Value =
                serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))?;
            match value {
                Value::Array(items) => records(items.iter())?,
                one => records(std::iter::once(&one))?,
            }
        }
        Format::JsonLines => {
            let mut items = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                items.push(
                    serde_json::from_str::<Value>(line)
                        .map_err(|e| format!("line {}: not valid JSON: {e}", n + 1))?,
                );
            }
            records(items.iter())?
        }
    };
    if extracted.text.trim().is_empty() {
        return Err("the document has no text".to_owned());
    }
    Ok(extracted)
}

/// The text layer of a PDF, pages apart as paragraphs.
fn pdf(bytes: &[u8]) -> Result<Extracted, String> {
    // The parser is fed untrusted files and is not panic-free on malformed ones: a
    // panic is a refused document, never a crashed worker.
    let pages = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes))
        .map_err(|_| "the PDF could not be read (it is malformed)".to_owned())?
        .map_err(|e| format!("the PDF could not be read: {e}"))?;
    let text = pages
        .iter()
        .map(|page| tidy(page))
        .filter(|page| !page.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n");
    if text.trim().is_empty() {
        return Err("the PDF has no text layer (a scan needs OCR first)".to_owned());
    }
    Ok(Extracted { title: None, text })
}

/// JSON records into sections. One record alone gives the document its title.
fn records<'a>(items: impl ExactSizeIterator<Item = &'a Value>) -> Result<Extracted, String> {
    let single = items.len() == 1;
    let mut out = Extracted {
        title: None,
        text: String::new(),
    };
    for (n, item) in items.enumerate() {
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| item.get(name).and_then(Value::as_str))
                .map(str::trim)
        };
        let text = field(&TEXT_FIELDS).ok_or_else(|| {
            format!(
                "record {}: no text field (one of: {})",
                n + 1,
                TEXT_FIELDS.join(", ")
            )
        })?;
        let title = field(&TITLE_FIELDS).filter(|t| !t.is_empty());
        if single {
            out.title = title.map(str::to_owned);
            out.text = text.to_owned();
            break;
        }
        if let Some(title) = title {
            out.text.push_str(&format!("## {}\n\n", one_line(title)));
        } else {
            out.text.push_str(&format!("## {}\n\n", n + 1));
        }
        out.text.push_str(text);
        out.text.push_str("\n\n");
    }
    Ok(out)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Collapses runs of spaces within lines and of blank lines between paragraphs.
fn tidy(text: &str) -> String {
    let mut out = String::new();
    let mut blank = 0;
    for line in text.lines() {
        let line = one_line(line);
        if line.is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name_and_media_type() {
        assert_eq!(Format::of_name("a/b/Guide.MD"), Some(Format::Markdown));
        assert_eq!(Format::of_name("faq.jsonl"), Some(Format::JsonLines));
        assert_eq!(Format::of_name("report.PDF"), Some(Format::Pdf));
        assert_eq!(Format::of_name("report.docx"), None);
        assert_eq!(Format::of_name("README"), None);
        assert_eq!(
            Format::of_media_type("text/html; charset=utf-8"),
            Some(Format::Html)
        );
        assert_eq!(Format::of_media_type("application/octet-stream"), None);
    }

    #[test]
    fn html_keeps_headings_and_paragraphs_and_drops_scripts() {
        let page = r#"<html><head><title>退货政策</title><style>p{color:red}</style>
            <body><h1>退货</h1><p>收货后 <b>7 天</b>内可退。</p><script>alert("x<p>")</script>
            <h2>Fees &amp; costs</h2><ul><li>One&nbsp;&#8364;</li><li>Two</li></ul>
            <!-- <p>hidden</p> --></body></html>"#;
        let out = extract(Format::Html, None, page.as_bytes()).unwrap();
        assert_eq!(out.title.as_deref(), Some("退货政策"));
        assert_eq!(
            out.text,
            "# 退货\n\n收货后 7 天内可退。\n\n## Fees & costs\n\n- One €\n\n- Two"
        );
    }

    #[test]
    fn json_records_become_sections() {
        let jsonl =
            "{\"question\":\"How long?\",\"answer\":\"Seven days.\"}\n\n{\"text\":\"No title.\"}\n";
        let out = extract(Format::JsonLines, None, jsonl.as_bytes()).unwrap();
        assert_eq!(
            out.text,
            "## How long?\n\nSeven days.\n\n## 2\n\nNo title.\n\n"
        );
        let one = extract(Format::Json, None, br#"{"title":"T","content":"Body"}"#).unwrap();
        assert_eq!(one.title.as_deref(), Some("T"));
        assert_eq!(one.text, "Body");
    }

    #[test]
    fn pdf_text_is_read_and_broken_pdfs_are_refused() {
        let out = extract(
            Format::Pdf,
            None,
            include_bytes!("../../../tests/data/warranty.pdf"),
        )
        .unwrap();
        assert!(out.text.contains("Lumio warranty card"), "{}", out.text);
        assert!(out.text.contains("24 months from delivery"), "{}", out.text);
        let error = extract(Format::Pdf, None, b"%PDF-1.7\n1 0 obj <<").unwrap_err();
        assert!(error.contains("PDF could not be read"), "{error}");
        assert!(extract(Format::Pdf, None, b"not a pdf at all").is_err());
    }

    #[test]
    fn bad_documents_are_refused_with_a_reason() {
        assert!(
            extract(Format::Text, None, b"  \n ")
                .unwrap_err()
                .contains("no text")
        );
        assert!(
            extract(Format::Text, None, &[b'o', b'k', 0xff, 0xfe])
                .unwrap_err()
                .contains("not UTF-8 text (at byte 2)")
        );
        // After a UTF-16 byte-order mark, an odd byte out is not UTF-16 either.
        assert!(
            extract(Format::Text, None, &[0xff, 0xfe, 0x00])
                .unwrap_err()
                .contains("UTF-16LE")
        );
        assert!(
            extract(Format::Json, None, b"{\"x\":1}")
                .unwrap_err()
                .contains("text field")
        );
        assert!(
            extract(Format::JsonLines, None, b"{}\nnot json")
                .unwrap_err()
                .contains("line 2")
        );
    }
}
