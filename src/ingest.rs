//! The `ragway ingest` command: files and directories into a tenant's documents —
//! straight into the configured store, or through a running gateway's HTTP API
//! (the embedded store is locked by the process that has it open).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::retrieve::corpus::{Corpus, NewDocument};
use crate::retrieve::extract::Format;

/// Where documents go.
pub enum Destination {
    Store(Arc<Corpus>),
    /// A running gateway: `POST {url}/v1/documents` with `key` as the bearer.
    Gateway {
        client: reqwest::Client,
        url: String,
        key: Option<String>,
    },
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub stored: usize,
    pub unchanged: usize,
    pub failed: Vec<(String, String)>,
    pub chunks: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn describe(&self) -> String {
        let seconds = self.elapsed.as_secs_f64();
        format!(
            "{} stored, {} unchanged, {} failed; {} chunks in {seconds:.1} s ({:.0} chunks/s)",
            self.stored,
            self.unchanged,
            self.failed.len(),
            self.chunks,
            self.chunks as f64 / seconds.max(1e-9),
        )
    }
}

/// What [`collect`] found: the files to ingest, and what it passed over and why.
#[derive(Debug, Default)]
pub struct Collected {
    pub files: Vec<PathBuf>,
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// The files to ingest: each file named, and every file of a readable type under
/// each directory named (hidden entries skipped), in a stable order.
///
/// Symbolic links met inside a directory are not followed unless `follow_links`:
/// a link could carry the walk out of the folder the operator named (`/etc/passwd`
/// into a tenant's corpus, and from there into prompts) or round a loop. Followed,
/// a link must still land inside one of the named paths, each directory is walked
/// once, and each file taken once. Sockets, pipes and devices are never read (a
/// pipe would block the run). A path named itself is taken as named, link or not.
pub fn collect(paths: &[PathBuf], follow_links: bool) -> Result<Collected, String> {
    let mut walk = Walk {
        follow_links,
        roots: Vec::new(),
        seen_dirs: std::collections::HashSet::new(),
        seen_files: std::collections::HashSet::new(),
        found: Collected::default(),
    };
    for path in paths {
        let canonical = std::fs::canonicalize(path)
            .map_err(|_| format!("{}: no such file or directory", path.display()))?;
        walk.roots.push(canonical);
    }
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            walk.dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        } else if meta.is_file() {
            if Format::of_name(&path.to_string_lossy()).is_none() {
                return Err(format!(
                    "{}: not a document type ragway reads ({})",
                    path.display(),
                    Format::EXTENSIONS
                ));
            }
            walk.file(path);
        } else {
            return Err(format!(
                "{}: not a regular file or directory",
                path.display()
            ));
        }
    }
    Ok(walk.found)
}

struct Walk {
    follow_links: bool,
    /// The named paths, resolved: a followed link must land inside one.
    roots: Vec<PathBuf>,
    seen_dirs: std::collections::HashSet<PathBuf>,
    seen_files: std::collections::HashSet<PathBuf>,
    found: Collected,
}

impl Walk {
    fn dir(&mut self, dir: &Path) -> std::io::Result<()> {
        // Each directory once, by where it really is: a loop ends here.
        if !self.seen_dirs.insert(std::fs::canonicalize(dir)?) {
            self.found
                .skipped
                .push((dir.to_owned(), "directory already walked (a loop)"));
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        entries.sort();
        for path in entries {
            self.entry(&path)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path) -> std::io::Result<()> {
        let Ok(own) = std::fs::symlink_metadata(path) else {
            self.found.skipped.push((path.to_owned(), "unreadable"));
            return Ok(());
        };
        let meta = if own.file_type().is_symlink() {
            if !self.follow_links {
                self.found
                    .skipped
                    .push((path.to_owned(), "symbolic link (see --follow-links)"));
                return Ok(());
            }
            let inside = std::fs::canonicalize(path)
                .is_ok_and(|target| self.roots.iter().any(|root| target.starts_with(root)));
            if !inside {
                self.found.skipped.push((
                    path.to_owned(),
                    "symbolic link leading outside the paths given",
                ));
                return Ok(());
            }
            match std::fs::metadata(path) {
                Ok(meta) => meta,
                Err(_) => {
                    self.found
                        .skipped
                        .push((path.to_owned(), "broken symbolic link"));
                    return Ok(());
                }
            }
        } else {
            own
        };
        if meta.is_dir() {
            self.dir(path)
        } else if !meta.is_file() {
            self.found.skipped.push((
                path.to_owned(),
                "not a regular file (socket, pipe or device)",
            ));
            Ok(())
        } else {
            if Format::of_name(&path.to_string_lossy()).is_some() {
                self.file(path);
            }
            Ok(())
        }
    }

    fn file(&mut self, path: &Path) {
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        if self.seen_files.insert(real) {
            self.found.files.push(path.to_owned());
        } else {
            self.found
                .skipped
                .push((path.to_owned(), "same file as one already taken"));
        }
    }
}

/// A file's document id: its path as given, in `/` form.
pub fn document_id(path: &Path) -> String {
    let text = path.to_string_lossy().replace('\\', "/");
    text.strip_prefix("./").unwrap_or(&text).to_owned()
}

/// Ingests `files` for `tenant`, one document each, advancing `bar` per file.
/// Without a tenant, a gateway decides by the key (a store needs one).
/// A file that fails is reported and the rest go on.
pub async fn ingest(
    files: &[PathBuf],
    tenant: Option<&str>,
    collection: &str,
    charset: Option<&'static encoding_rs::Encoding>,
    to: &Destination,
    bar: &ProgressBar,
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    for path in files {
        let id = document_id(path);
        bar.set_message(id.clone());
        match ingest_one(path, &id, tenant, collection, charset, to).await {
            Ok((chunks, true)) => {
                summary.unchanged += 1;
                summary.chunks += chunks;
            }
            Ok((chunks, false)) => {
                summary.stored += 1;
                summary.chunks += chunks;
            }
            Err(error) => {
                // A hidden bar (not a terminal) prints nothing: say it plainly.
                match bar.is_hidden() {
                    true => eprintln!("{id}: {error}"),
                    false => bar.println(format!("{id}: {error}")),
                }
                summary.failed.push((id, error));
            }
        }
        bar.inc(1);
    }
    summary.elapsed = started.elapsed();
    summary
}

/// Returns the document's chunk count and whether it was unchanged.
async fn ingest_one(
    path: &Path,
    id: &str,
    tenant: Option<&str>,
    collection: &str,
    charset: Option<&'static encoding_rs::Encoding>,
    to: &Destination,
) -> Result<(u64, bool), String> {
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    let format = Format::of_name(&path.to_string_lossy()).ok_or("unreadable type")?;
    let doc = NewDocument::from_bytes(
        id.to_owned(),
        collection.to_owned(),
        id.to_owned(),
        format,
        // The operator's default yields to a page's own `<meta charset>`.
        charset.filter(|_| {
            format != Format::Html
                || crate::retrieve::extract::charset::meta_charset(&bytes).is_none()
        }),
        &bytes,
        None,
    )
    .map_err(|e| e.to_string())?;
    match to {
        Destination::Store(corpus) => {
            let tenant = tenant.ok_or("no tenant named")?;
            let done = corpus
                .ingest(tenant, doc)
                .await
                .map_err(|e| e.to_string())?;
            Ok((u64::from(done.chunks), done.unchanged))
        }
        Destination::Gateway { client, url, key } => {
            // The text is sent as extracted, so the gateway reads it as Markdown.
            let body = json!({
                "id": doc.id, "title": doc.title, "source": doc.source,
                "collection": doc.collection, "text": doc.text, "format": "markdown",
                "tenant": tenant,
            });
            let mut request = client
                .post(format!("{}/v1/documents", url.trim_end_matches('/')))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response.text().await.map_err(|e| e.to_string())?;
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if !status.is_success() {
                let message = answer["error"]["message"].as_str().unwrap_or("failed");
                return Err(format!("{status}: {message}"));
            }
            Ok((
                answer["chunks"].as_u64().unwrap_or(0),
                answer["unchanged"].as_bool().unwrap_or(false),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_paths_as_given() {
        assert_eq!(document_id(Path::new("./docs/a.md")), "docs/a.md");
        assert_eq!(document_id(Path::new("docs\\b.md")), "docs/b.md");
    }

    /// A fresh directory under the system's temporary one, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "ragway-ingest-{name}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[cfg(unix)]
    #[test]
    fn links_out_of_the_folder_loops_and_special_files_are_skipped() {
        use std::os::unix::fs::symlink;
        let outside = Scratch::new("outside");
        std::fs::write(outside.0.join("passwd.txt"), "root:x:0:0").unwrap();
        let root = Scratch::new("root");
        let docs = root.0.join("docs");
        std::fs::create_dir_all(docs.join("sub")).unwrap();
        std::fs::write(docs.join("a.md"), "# A").unwrap();
        std::fs::write(docs.join("sub/b.txt"), "b").unwrap();
        symlink(outside.0.join("passwd.txt"), docs.join("passwd.txt")).unwrap();
        symlink(&outside.0, docs.join("etc")).unwrap();
        symlink(&docs, docs.join("sub/loop")).unwrap();
        symlink(docs.join("a.md"), docs.join("again.md")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(docs.join("s.txt")).unwrap();

        let names = |files: &[PathBuf]| -> Vec<String> {
            files
                .iter()
                .map(|f| {
                    f.strip_prefix(&docs)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        // Links are not followed by default; the socket is not read.
        let found = collect(std::slice::from_ref(&docs), false).unwrap();
        assert_eq!(names(&found.files), ["a.md", "sub/b.txt"]);
        let skipped: Vec<_> = found
            .skipped
            .iter()
            .map(|(p, why)| (names(std::slice::from_ref(p)).remove(0), *why))
            .collect();
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(
            skipped
                .iter()
                .any(|(p, why)| p == "s.txt" && why.contains("socket"))
        );
        assert!(
            skipped
                .iter()
                .any(|(p, why)| p == "passwd.txt" && why.contains("link"))
        );

        // Followed: only inside the paths given, the loop walked once, a file once.
        let found = collect(std::slice::from_ref(&docs), true).unwrap();
        assert_eq!(names(&found.files), ["a.md", "sub/b.txt"]);
        let why = |name: &str| {
            found
                .skipped
                .iter()
                .find(|(p, _)| p.ends_with(name))
                .map(|(_, why)| *why)
        };
        assert_eq!(
            why("passwd.txt"),
            Some("symbolic link leading outside the paths given")
        );
        assert_eq!(
            why("etc"),
            Some("symbolic link leading outside the paths given")
        );
        assert_eq!(why("again.md"), Some("same file as one already taken"));
        assert_eq!(why("loop"), Some("directory already walked (a loop)"));

        // A link named on the command line is taken as named.
        let named = collect(&[docs.join("passwd.txt")], false).unwrap();
        assert_eq!(named.files.len(), 1);
    }
}
