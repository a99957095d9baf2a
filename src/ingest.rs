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

/// The files to ingest: each file named, and every file of a readable type under
/// each directory named (hidden entries skipped), in a stable order.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files).map_err(|e| format!("{}: {e}", path.display()))?;
        } else if path.is_file() {
            if Format::of_name(&path.to_string_lossy()).is_none() {
                return Err(format!(
                    "{}: not a document type ragway reads ({})",
                    path.display(),
                    Format::EXTENSIONS
                ));
            }
            files.push(path.clone());
        } else {
            return Err(format!("{}: no such file or directory", path.display()));
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, files)?;
        } else if Format::of_name(&path.to_string_lossy()).is_some() {
            files.push(path);
        }
    }
    Ok(())
}

/// A file's document id: its path as given, in `/` form.
pub fn document_id(path: &Path) -> String {
    let text = path.to_string_lossy().replace('\\', "/");
    text.strip_prefix("./").unwrap_or(&text).to_owned()
}

/// Ingests `files` for `tenant`, one document each, advancing `bar` per file.
/// A file that fails is reported and the rest go on.
pub async fn ingest(
    files: &[PathBuf],
    tenant: &str,
    collection: &str,
    to: &Destination,
    bar: &ProgressBar,
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    for path in files {
        let id = document_id(path);
        bar.set_message(id.clone());
        match ingest_one(path, &id, tenant, collection, to).await {
            Ok((chunks, true)) => {
                summary.unchanged += 1;
                summary.chunks += chunks;
            }
            Ok((chunks, false)) => {
                summary.stored += 1;
                summary.chunks += chunks;
            }
            Err(error) => {
                bar.println(format!("{id}: {error}"));
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
    tenant: &str,
    collection: &str,
    to: &Destination,
) -> Result<(u64, bool), String> {
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    let format = Format::of_name(&path.to_string_lossy()).ok_or("unreadable type")?;
    let doc = NewDocument::from_bytes(
        id.to_owned(),
        collection.to_owned(),
        id.to_owned(),
        format,
        &bytes,
        None,
    )
    .map_err(|e| e.to_string())?;
    match to {
        Destination::Store(corpus) => {
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
}
