//! The module graph keeps to the layering table at the top of `src/lib.rs`: every
//! `crate::…` path (and `super::…` that climbs to the crate root) in `src/` is an
//! edge between top-level modules; an edge up the table, or across a layer that
//! does not allow it, or round a circle, fails — naming the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

struct Table {
    /// Module → its layer (0 is the top).
    layer: BTreeMap<String, usize>,
    /// Layers whose modules may use each other (without a circle).
    within: BTreeSet<usize>,
}

/// The table in `src/lib.rs`'s doc comment: `//! | layer | a, b | no |` rows.
fn table(lib: &str) -> Table {
    let mut layer = BTreeMap::new();
    let mut within = BTreeSet::new();
    let rows = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! |"))
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .filter(|cells| cells.len() >= 3 && cells[0] != "layer" && !cells[0].starts_with("---"));
    for (index, cells) in rows.enumerate() {
        for module in cells[1].split(',').map(str::trim) {
            layer.insert(module.to_owned(), index);
        }
        if cells[2] == "acyclic" {
            within.insert(index);
        }
    }
    assert!(layer.len() > 10, "no layering table found in src/lib.rs");
    Table { layer, within }
}

/// One use of another top-level module: where it is.
#[derive(Debug, Clone)]
struct Use {
    file: PathBuf,
    line: usize,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/`: `generate/router.rs` → [generate, router].
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The top-level modules a line of code names: `crate::x`, `crate::{x::…, y}` and
/// `super::…` paths that reach the crate root from `module`.
fn named(code: &str, module: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            // Top-level names only: those at brace depth zero of the group.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && depth == 0 && !c.is_whitespace() => {
                        found.push(ident(&inner[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(after));
        }
        rest = after;
    }
    // `super::super::x` from a module as deep as the supers reach the root.
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let preceded =
            rest[..at].ends_with("::") || rest[..at].ends_with(|c: char| c.is_alphanumeric());
        let mut after = &rest[at..];
        let mut supers = 0;
        while let Some(next) = after.strip_prefix("super::") {
            supers += 1;
            after = next;
        }
        if !preceded && supers >= module.len() {
            found.push(ident(after));
        }
        rest = after;
    }
    found.retain(|n| !n.is_empty() && n != "self");
    found
}

/// Every edge between top-level modules, with where each is made.
fn edges(src: &Path) -> BTreeMap<(String, String), Vec<Use>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges: BTreeMap<(String, String), Vec<Use>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let module = module_path(relative);
        let top = module[0].clone();
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let mut in_block_comment = false;
        for (n, line) in text.lines().enumerate() {
            let mut code = line;
            if in_block_comment {
                match code.find("*/") {
                    Some(end) => {
                        code = &code[end + 2..];
                        in_block_comment = false;
                    }
                    None => continue,
                }
            }
            if let Some(start) = code.find("/*")
                && !code[start..].contains("*/")
            {
                in_block_comment = true;
                code = &code[..start];
            }
            let code = code.split("//").next().unwrap_or_default();
            for to in named(code, &module) {
                if to != top {
                    edges.entry((top.clone(), to)).or_default().push(Use {
                        file: relative.to_owned(),
                        line: n + 1,
                    });
                }
            }
        }
    }
    edges
}

/// A circle among `edges`, if there is one.
fn circle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges {
        next.entry(from).or_default().push(to);
    }
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut circle: Vec<String> = path[at..].iter().map(|s| (*s).to_owned()).collect();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for to in next.get(node).into_iter().flatten() {
            if let Some(circle) = visit(to, next, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    next.keys()
        .find_map(|start| visit(start, &next, &mut Vec::new(), &mut done))
}

fn where_(uses: &[Use]) -> String {
    uses.iter()
        .take(3)
        .map(|u| format!("{}:{}", u.file.display(), u.line))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn imports_point_down_the_layering_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = table(&std::fs::read_to_string(root.join("src/lib.rs")).unwrap());
    let edges = edges(&root.join("src"));
    let mut broken = Vec::new();
    for ((from, to), uses) in &edges {
        let (Some(&a), Some(&b)) = (table.layer.get(from), table.layer.get(to)) else {
            broken.push(format!(
                "{from} → {to}: a module missing from the table ({})",
                where_(uses)
            ));
            continue;
        };
        let fits = a < b || (a == b && table.within.contains(&a));
        if !fits {
            broken.push(format!("{from} → {to} ({})", where_(uses)));
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the table:\n{}",
        broken.join("\n")
    );
    let all: BTreeSet<(String, String)> = edges.keys().cloned().collect();
    if let Some(circle) = circle(&all) {
        panic!("a circle between modules: {}", circle.join(" → "));
    }
}

/// The check has teeth: an upward import, and a circle within the bottom layer,
/// are both caught in a copy of the tree.
#[test]
fn a_forbidden_import_is_caught() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = table(&std::fs::read_to_string(root.join("src/lib.rs")).unwrap());
    let sanitize = ["sanitize".to_owned()];
    let named_up = named(
        "use crate::{wire::ChatRequest, pipeline::RequestCtx};",
        &sanitize,
    );
    assert_eq!(named_up, ["wire", "pipeline"]);
    let (a, b) = (table.layer["sanitize"], table.layer["pipeline"]);
    assert!(a > b, "sanitize sits below pipeline");
    let deep = ["generate".to_owned(), "router".to_owned()];
    assert_eq!(named("use super::super::config::X;", &deep), ["config"]);
    assert!(named("use super::retry::Policy;", &deep).is_empty());
    let circle_edges: BTreeSet<(String, String)> = [("wire", "error"), ("error", "wire")]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert!(circle(&circle_edges).is_some());
}
