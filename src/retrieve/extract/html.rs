//! HTML into Markdown-flavoured text, through an HTML5 parser (html5ever): the page
//! is read as a browser reads it, so quoted attributes, every named entity,
//! comments, raw-text elements and unclosed tags all mean what they mean there.
//!
//! Kept: the body's text, `<h1>`…`<h6>` as Markdown headings, block elements as
//! paragraphs, list items as `- `. Dropped: what is not the page's own content —
//! scripts, styles, templates, frames, and the site's navigation and
//! chrome (`<nav>`, `<aside>`, and a `<header>` or `<footer>` of the page; one
//! inside an `<article>`, `<section>` or `<main>` belongs to that content and stays).

use std::cell::Cell;
use std::rc::Rc;

use html5ever::tendril::{StrTendril, TendrilSink};
use html5ever::{ParseOpts, parse_document};
use markup5ever_rcdom::{Handle, NodeData};

use super::dom::{CappedDom, MAX_DEPTH};
use super::{Extracted, one_line, tidy};

/// How much of the page the parser is given at a time: the depth cap is looked
/// at in between, so past it at most one piece more is parsed.
const PIECE_BYTES: usize = 4096;

/// Elements whose whole subtree is not the page's text (`<title>` is read apart).
/// `<head>` itself is walked: the parser moves any text in it into the body, and
/// all it holds besides is these and childless `<meta>`, `<link>`, `<base>`.
const DROPPED: [&str; 9] = [
    "title", "script", "style", "noscript", "template", "svg", "iframe", "nav", "aside",
];
/// Page chrome unless inside one of [`SECTIONING`].
const CHROME: [&str; 2] = ["header", "footer"];
const SECTIONING: [&str; 3] = ["article", "section", "main"];
/// Elements that stand as paragraphs of their own.
const BLOCKS: [&str; 27] = [
    "p",
    "div",
    "li",
    "tr",
    "table",
    "caption",
    "ul",
    "ol",
    "dl",
    "dd",
    "dt",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "blockquote",
    "pre",
    "hr",
    "figure",
    "figcaption",
    "address",
    "details",
    "summary",
    "fieldset",
    "legend",
    "form",
];

pub(super) fn html(source: &str) -> Result<Extracted, String> {
    let refused =
        || format!("the HTML nests elements more than {MAX_DEPTH} deep; no page needs that");
    let too_deep = Rc::new(Cell::new(false));
    let mut parser = parse_document(CappedDom::new(Rc::clone(&too_deep)), ParseOpts::default());
    let mut rest = source;
    while !rest.is_empty() {
        let mut end = rest.len().min(PIECE_BYTES);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        parser.process(StrTendril::from_slice(&rest[..end]));
        rest = &rest[end..];
        if too_deep.get() {
            return Err(refused());
        }
    }
    let dom = parser.finish();
    if too_deep.get() {
        return Err(refused());
    }
    let mut walk = Walk::default();
    walk.run(&dom.document);
    let text = tidy(&walk.out);
    let title = walk
        .title
        .map(|t| one_line(&t))
        .filter(|t| !t.is_empty())
        .or_else(|| {
            text.lines()
                .find_map(|line| line.strip_prefix("# "))
                .map(str::to_owned)
        });
    Ok(Extracted { title, text })
}

/// What is left to do: a node to read, or the end of an element to mark.
enum Step {
    Enter(Handle),
    Leave(Close),
}

/// What an element's end writes, and the state it restores.
struct Close {
    text: &'static str,
    sectioning: bool,
    pre: bool,
}

/// A depth-first walk on an explicit stack: a page nested a million deep costs
/// heap, never the thread's stack.
#[derive(Default)]
struct Walk {
    out: String,
    title: Option<String>,
    /// Open `<article>`, `<section>`, `<main>`: header and footer inside are content.
    sectioning: usize,
    /// Open `<pre>`: whitespace is kept as written.
    pre: usize,
}

impl Walk {
    /// `root` stays borrowed, alive, throughout: a node's `Drop` empties the child
    /// lists of its whole subtree (to free it without recursion), even of nodes
    /// still on the stack.
    fn run(&mut self, root: &Handle) {
        let mut stack = vec![Step::Enter(root.clone())];
        while let Some(step) = stack.pop() {
            match step {
                Step::Leave(close) => {
                    self.out.push_str(close.text);
                    self.sectioning -= usize::from(close.sectioning);
                    self.pre -= usize::from(close.pre);
                }
                Step::Enter(node) => {
                    if let Some(close) = self.open(&node) {
                        stack.push(Step::Leave(close));
                        let children = node.children.borrow();
                        stack.extend(children.iter().rev().cloned().map(Step::Enter));
                    }
                }
            }
        }
    }

    /// Writes what a node starts with; `None` when its children are not read.
    fn open(&mut self, node: &Handle) -> Option<Close> {
        let name: &str = match &node.data {
            NodeData::Document => return Some(self.close("", false, false)),
            NodeData::Text { contents } => {
                self.text(&contents.borrow());
                return None;
            }
            // The parser has lower-cased HTML names already.
            NodeData::Element { name, .. } => &name.local,
            _ => return None,
        };
        if name == "title" && self.title.is_none() {
            self.title = Some(text_of(node));
        }
        let chrome = CHROME.contains(&name) && self.sectioning == 0;
        if DROPPED.contains(&name) || chrome {
            return None;
        }
        let sectioning = SECTIONING.contains(&name);
        let pre = name == "pre";
        if let Some(level) = heading_level(name) {
            self.out.push_str("\n\n");
            self.out.push_str(&"#".repeat(level));
            self.out.push(' ');
            return Some(self.close("\n\n", sectioning, pre));
        }
        let (open, close) = match name {
            "br" => ("\n", ""),
            "li" => ("\n\n- ", "\n\n"),
            "td" | "th" => (" ", " "),
            _ if BLOCKS.contains(&name) => ("\n\n", "\n\n"),
            _ => ("", ""),
        };
        self.out.push_str(open);
        Some(self.close(close, sectioning, pre))
    }

    fn close(&mut self, text: &'static str, sectioning: bool, pre: bool) -> Close {
        self.sectioning += usize::from(sectioning);
        self.pre += usize::from(pre);
        Close {
            text,
            sectioning,
            pre,
        }
    }

    /// Outside `<pre>`, a run of whitespace is one space (as it renders): line
    /// breaks come from the markup, not from how the source was wrapped.
    fn text(&mut self, text: &str) {
        if self.pre > 0 {
            self.out.push_str(text);
            return;
        }
        let mut space = false;
        for c in text.chars() {
            if matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c') {
                space = true;
                continue;
            }
            if space {
                self.out.push(' ');
                space = false;
            }
            self.out.push(c);
        }
        if space {
            self.out.push(' ');
        }
    }
}

fn heading_level(name: &str) -> Option<usize> {
    match name.as_bytes() {
        [b'h', d @ b'1'..=b'6'] => Some(usize::from(d - b'0')),
        _ => None,
    }
}

/// The text directly inside an element (a `<title>` holds nothing else).
fn text_of(node: &Handle) -> String {
    let mut text = String::new();
    for child in node.children.borrow().iter() {
        if let NodeData::Text { contents } = &child.data {
            text.push_str(&contents.borrow());
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use crate::retrieve::extract::{Format, extract};
    use encoding_rs::{GB18030, GBK};

    fn text(page: &str) -> String {
        extract(Format::Html, None, page.as_bytes()).unwrap().text
    }

    #[test]
    fn a_gt_inside_an_attribute_ends_nothing() {
        let page = r#"<p title="a > b, see LEAK">Shown</p><img alt='x>LEAK' src=a.png>After
            <a href="/q?a=1&b=2>LEAK" data-x="<p>LEAK</p>">link</a>"#;
        assert_eq!(text(page), "Shown\n\nAfter link");
    }

    #[test]
    fn every_named_and_numeric_entity_is_decoded() {
        let page = "<p>A&mdash;B &lsquo;q&rsquo; &hellip; &copy;&nbsp;2026 &euro;&#8364;&#x4E2D;&#25991; \
                    &amp;lt; &lt;p&gt; &zzz; &#1114112;</p>";
        // `&nbsp;` is a space to the reader; an unknown entity stays as written;
        // an impossible code point is the replacement character, as in a browser.
        assert_eq!(
            text(page),
            "A—B ‘q’ … © 2026 €€中文 &lt; <p> &zzz; \u{fffd}"
        );
    }

    #[test]
    fn navigation_and_page_chrome_are_not_content() {
        let page = "<body><header><a href=/>Acme</a> Sign in</header>\
            <nav><ul><li>Products</li><li>Support</li></ul></nav>\
            <main><article><header><h1>Returns</h1></header><p>Within 7 days.</p>\
            <footer>Updated 2026-01-05</footer></article></main>\
            <aside>Related: Shipping</aside><footer>© Acme · Privacy</footer></body>";
        let out = extract(Format::Html, None, page.as_bytes()).unwrap();
        assert_eq!(
            out.text,
            "# Returns\n\nWithin 7 days.\n\nUpdated 2026-01-05"
        );
        assert_eq!(out.title.as_deref(), Some("Returns"), "the first heading");
    }

    #[test]
    fn scripts_styles_and_other_non_text_are_dropped() {
        let page = r#"<head><title>T</title><style>p::after{content:"LEAK"}</style>
            <script>document.write("</p>LEAK")</script></head><body><p>One</p>
            <noscript>Enable LEAK</noscript><template><p>LEAK</p></template>
            <svg><text>LEAK</text></svg><iframe>LEAK</iframe><!-- LEAK --><p>Two<br>lines</p>
            <pre>  keep
  this</pre></body>"#;
        assert_eq!(text(page), "One\n\nTwo\nlines\n\nkeep\nthis");
    }

    #[test]
    fn a_gbk_page_is_read_by_its_meta_charset() {
        let page = "<html><head><meta http-equiv=Content-Type content=\"text/html; charset=gb2312\">\
                    <title>退货政策</title></head><body><p>收货后七天内可退。</p></body></html>";
        let (bytes, _, unmappable) = GBK.encode(page);
        assert!(!unmappable);
        let out = extract(Format::Html, None, &bytes).unwrap();
        assert_eq!(out.title.as_deref(), Some("退货政策"));
        assert_eq!(out.text, "收货后七天内可退。");
    }

    #[test]
    fn the_senders_charset_reads_a_page_without_meta_and_outranks_it() {
        // 𠮷 is outside GBK: only GB18030 has it.
        let page = "<p>𠮷野家的退货政策</p>";
        let (bytes, _, _) = GB18030.encode(page);
        let out = extract(Format::Html, Some(GB18030), &bytes).unwrap();
        assert_eq!(out.text, "𠮷野家的退货政策");
        let error = extract(Format::Html, None, &bytes).unwrap_err();
        assert!(error.contains("not UTF-8"), "{error}");
        // Plain text and Markdown honour it too.
        let (note, _, _) = GBK.encode("# 运费\n\n由顾客承担");
        let out = extract(Format::Markdown, Some(GBK), &note).unwrap();
        assert_eq!(out.text, "# 运费\n\n由顾客承担");
        // Text that arrived as Unicode keeps its stale declaration from misleading.
        let utf8 = "<meta charset=gbk><p>退货</p>";
        let out = extract(Format::Html, Some(encoding_rs::UTF_8), utf8.as_bytes()).unwrap();
        assert_eq!(out.text, "退货");
    }

    #[test]
    fn nesting_past_the_cap_is_refused_quickly_and_within_it_is_read() {
        let deep = format!("{}deep", "<div>".repeat(200_000));
        let started = std::time::Instant::now();
        let error = extract(Format::Html, None, deep.as_bytes()).unwrap_err();
        assert!(error.contains("512"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Templates hold their contents apart; nesting them still counts.
        let templates = format!("{}x", "<template>".repeat(2_000));
        assert!(extract(Format::Html, None, templates.as_bytes()).is_err());
        // A deep but legal page is walked without recursion.
        let fine = format!("{}deep{}", "<div>".repeat(500), "</div>".repeat(500));
        assert_eq!(text(&fine), "deep");
    }
}
