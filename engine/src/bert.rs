//! Sentence embeddings with a BERT-family model (all-MiniLM-L6-v2 by default):
//! safetensors + tokenizer.json + config.json from a directory; mean pooling over
//! the attention mask, L2-normalised; batched, padded to the longest in the batch,
//! truncated at the model's limit.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::EngineError;

/// Tokens per input; longer inputs are truncated (MiniLM was trained at 256).
const MAX_TOKENS: usize = 256;
/// Inputs per forward pass.
const BATCH: usize = 32;

pub struct Bert {
    model: BertModel,
    tokenizer: Tokenizer,
    /// The same tokenizer without padding or truncation, for counting.
    counter: Tokenizer,
    device: Device,
    pub dimension: usize,
}

impl Bert {
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EngineError> {
        let load = |what: &str, e: &dyn std::fmt::Display| {
            EngineError::Load(format!("{}: {what}: {e}", dir.display()))
        };
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| load("config.json", &e))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|e| load("config.json", &e))?;
        let dimension = serde_json::from_str::<serde_json::Value>(&config_text)
            .ok()
            .and_then(|v| v["hidden_size"].as_u64())
            .unwrap_or(384) as usize;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load("tokenizer.json", &e))?;
        let mut counter = tokenizer.clone();
        counter.with_padding(None);
        counter
            .with_truncation(None)
            .map_err(|e| load("tokenizer.json", &e))?;
        // The shipped tokenizer pads every input to 128: pad to the batch's longest.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| load("tokenizer.json", &e))?;
        // SAFETY: the file is mapped read-only and not modified while mapped.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DTYPE, device)
        }
        .map_err(|e| load("model.safetensors", &e))?;
        let model = BertModel::load(vb, &config).map_err(|e| load("model", &e))?;
        Ok(Bert {
            model,
            tokenizer,
            counter,
            device: device.clone(),
            dimension,
        })
    }

    /// How many tokens the model reads for `text` (special tokens not counted, no
    /// truncation): what chunks are sized by.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.counter
            .encode_fast(text, false)
            .map_or(text.len() / 4, |e| e.len())
    }

    /// The most tokens one input may have; the rest is not read.
    pub fn max_tokens(&self) -> usize {
        MAX_TOKENS
    }

    /// The vectors, and how many tokens the inputs held (after truncation).
    pub fn embed_counted(&self, inputs: &[String]) -> Result<(Vec<Vec<f32>>, usize), EngineError> {
        // A batch is padded to its longest input: batching inputs of similar length
        // (by characters, a cheap stand-in for tokens) wastes the least compute.
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].chars().count());
        let mut out = vec![Vec::new(); inputs.len()];
        let mut tokens = 0;
        for batch in order.chunks(BATCH) {
            let texts: Vec<String> = batch.iter().map(|&i| inputs[i].clone()).collect();
            let (vectors, count) = self.embed_batch(&texts)?;
            for (&i, vector) in batch.iter().zip(vectors) {
                out[i] = vector;
            }
            tokens += count;
        }
        Ok((out, tokens))
    }

    fn embed_batch(&self, inputs: &[String]) -> Result<(Vec<Vec<f32>>, usize), EngineError> {
        let infer = |e: candle_core::Error| EngineError::Inference(e.to_string());
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs.to_vec(), true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, EngineError> {
            let rows: Vec<Tensor> = encodings
                .iter()
                .map(|e| Tensor::new(f(e), &self.device))
                .collect::<Result<_, _>>()
                .map_err(infer)?;
            Tensor::stack(&rows, 0).map_err(infer)
        };
        let tokens = encodings
            .iter()
            .map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count())
            .sum();
        let ids = rows(&|e| e.get_ids())?;
        let types = rows(&|e| e.get_type_ids())?;
        let mask = rows(&|e| e.get_attention_mask())?;
        let hidden = self
            .model
            .forward(&ids, &types, Some(&mask))
            .map_err(infer)?;
        // Mean over real tokens only, then unit length.
        let mask = mask
            .to_dtype(DType::F32)
            .and_then(|m| m.unsqueeze(2))
            .map_err(infer)?;
        let summed = hidden
            .broadcast_mul(&mask)
            .and_then(|h| h.sum(1))
            .map_err(infer)?;
        let counts = mask.sum(1).map_err(infer)?;
        let mean = summed.broadcast_div(&counts).map_err(infer)?;
        let norm = mean
            .sqr()
            .and_then(|s| s.sum_keepdim(1))
            .and_then(|s| s.sqrt())
            .map_err(infer)?;
        let unit = mean.broadcast_div(&norm).map_err(infer)?;
        Ok((unit.to_vec2::<f32>().map_err(infer)?, tokens))
    }
}
