//! Building a [`Decoder`] from a GGUF file: shapes from the metadata, weights as
//! stored (see `matrix`), norms and biases as f32.

use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;

use super::matrix::{self, Matrix};
use super::ops::{MAX_GROUP, Rope, RopeStyle};
use super::{Activation, Config, Decoder, Layer};
use crate::EngineError;

/// The architectures this decoder runs.
pub fn supports(architecture: &str) -> bool {
    style(architecture).is_some()
}

/// How each architecture rotates positions.
fn style(architecture: &str) -> Option<RopeStyle> {
    match architecture {
        "llama" => Some(RopeStyle::Interleaved),
        "qwen2" | "gemma3" => Some(RopeStyle::Halves),
        _ => None,
    }
}

/// Gemma 3: five sliding-window layers to one global one, unless the file says.
const GEMMA3_WINDOW_PATTERN: usize = 6;
/// Gemma 3's sliding-window layers rotate with this base unless the file says.
const GEMMA3_WINDOW_ROPE_BASE: f32 = 10_000.0;

/// Loads the model; `requantize` converts weight types without a SIMD kernel to Q8_0.
pub fn load<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    requantize: bool,
) -> Result<Decoder, EngineError> {
    let gguf = Gguf { content, reader };
    gguf.decoder(requantize)
}

struct Gguf<'a, R> {
    content: &'a Content,
    reader: &'a mut R,
}

impl<R: Read + Seek> Gguf<'_, R> {
    fn decoder(mut self, requantize: bool) -> Result<Decoder, EngineError> {
        let arch = self.text("general.architecture")?;
        let style = style(&arch).ok_or_else(|| {
            EngineError::Load(format!("the decoder does not run `{arch}` models"))
        })?;
        let config = self.config(&arch)?;
        let base = self
            .float(&format!("{arch}.rope.freq_base"))
            .unwrap_or(10_000.0);
        let mut ropes = vec![self.rope(&arch, &config, style, base, true)?];
        let gemma = arch == "gemma3";
        let window = self.int(&format!("{arch}.attention.sliding_window")).ok();
        let pattern = self
            .int(&format!("{arch}.attention.sliding_window_pattern"))
            .unwrap_or(GEMMA3_WINDOW_PATTERN)
            .max(1);
        if gemma && window.is_some() {
            // Sliding-window layers keep the short base, and no scaling.
            let base = self
                .float(&format!("{arch}.rope.freq_base_swa"))
                .unwrap_or(GEMMA3_WINDOW_ROPE_BASE);
            ropes.push(self.rope(&arch, &config, style, base, false)?);
        }
        // Sliding-window layer: all but every `pattern`-th (as llama.cpp counts them).
        let sliding = |i: usize| gemma && window.is_some() && i % pattern < pattern - 1;
        if self
            .content
            .tensor_infos
            .contains_key("blk.0.ffn_gate_inp.weight")
        {
            return Err(EngineError::Load(
                "mixture-of-experts models are not supported".into(),
            ));
        }
        let embed: Arc<dyn Matrix> = self.matrix("token_embd.weight", requantize)?.into();
        let output: Arc<dyn Matrix> = if self.content.tensor_infos.contains_key("output.weight") {
            self.matrix("output.weight", requantize)?.into()
        } else {
            Arc::clone(&embed)
        };
        let output_norm = self.vector("output_norm.weight")?;
        let layers = (0..config.layers)
            .map(|i| {
                let mut layer = self.layer(i, requantize)?;
                if sliding(i) {
                    layer.window = window;
                    layer.rope = 1;
                }
                Ok(layer)
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let check = |what: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(EngineError::Load(format!(
                    "{what} is {got} wide; the metadata says {want}"
                )))
            }
        };
        check("the embedding", embed.cols(), config.dim)?;
        check("the output", output.rows(), config.vocab)?;
        for layer in &layers {
            check(
                "a query projection",
                layer.q.rows(),
                config.heads * config.head_dim,
            )?;
            check(
                "a key projection",
                layer.k.rows(),
                config.kv_heads * config.head_dim,
            )?;
            check("a feed-forward layer", layer.gate.rows(), config.ffn)?;
        }
        Ok(Decoder {
            config,
            embed,
            output,
            output_norm,
            layers,
            ropes,
        })
    }

    fn config(&self, arch: &str) -> Result<Config, EngineError> {
        let dim = self.int(&format!("{arch}.embedding_length"))?;
        let heads = self.int(&format!("{arch}.attention.head_count"))?;
        let kv_heads = self
            .int(&format!("{arch}.attention.head_count_kv"))
            .unwrap_or(heads);
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || heads / kv_heads > MAX_GROUP
        {
            return Err(EngineError::Load(format!(
                "{heads} attention heads cannot share {kv_heads} key/value heads"
            )));
        }
        let head_dim = self
            .int(&format!("{arch}.attention.key_length"))
            .unwrap_or(dim / heads);
        let vocab = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|t| t.shape.dims().first().copied())
            .ok_or_else(|| EngineError::Load("the GGUF has no token_embd.weight".into()))?;
        let layers = self.int(&format!("{arch}.block_count"))?;
        let gemma = arch == "gemma3";
        // Gemma 3 27B scales queries by its width per head rather than its head
        // size, as llama.cpp and Google's reference do; no GGUF key says so.
        let attn_width = if gemma && layers == 62 {
            dim / heads
        } else {
            head_dim
        };
        Ok(Config {
            layers,
            dim,
            heads,
            kv_heads,
            head_dim,
            ffn: self.int(&format!("{arch}.feed_forward_length"))?,
            eps: self.float(&format!("{arch}.attention.layer_norm_rms_epsilon"))?,
            vocab,
            embed_scale: if gemma { (dim as f32).sqrt() } else { 1.0 },
            attn_scale: 1.0 / (attn_width as f32).sqrt(),
            activation: if gemma {
                Activation::Gelu
            } else {
                Activation::Silu
            },
            logit_softcap: self
                .float(&format!("{arch}.final_logit_softcapping"))
                .ok()
                .filter(|cap| *cap > 0.0),
        })
    }

    /// A rotary embedding with this base; `scaled` applies the file's rope scaling.
    fn rope(
        &mut self,
        arch: &str,
        config: &Config,
        style: RopeStyle,
        base: f32,
        scaled: bool,
    ) -> Result<Rope, EngineError> {
        let dims = self
            .int(&format!("{arch}.rope.dimension_count"))
            .unwrap_or(config.head_dim)
            .min(config.head_dim);
        let mut scale = 1.0;
        if let Ok(kind) = self.text(&format!("{arch}.rope.scaling.type"))
            && scaled
        {
            match kind.as_str() {
                "none" => {}
                "linear" => {
                    scale = 1.0
                        / self
                            .float(&format!("{arch}.rope.scaling.factor"))
                            .unwrap_or(1.0);
                }
                other => {
                    return Err(EngineError::Load(format!(
                        "rope scaling `{other}` is not supported"
                    )));
                }
            }
        }
        // Llama 3.x files carry per-frequency divisors for their long context.
        let factors = if scaled && self.content.tensor_infos.contains_key("rope_freqs.weight") {
            Some(self.vector("rope_freqs.weight")?)
        } else {
            None
        };
        let inv_freq = (0..dims / 2)
            .map(|i| {
                let f = scale * base.powf(-2.0 * i as f32 / dims as f32);
                factors.as_ref().and_then(|d| d.get(i)).map_or(f, |d| f / d)
            })
            .collect();
        Ok(Rope { style, inv_freq })
    }

    fn layer(&mut self, i: usize, requantize: bool) -> Result<Layer, EngineError> {
        let name = |part: &str| format!("blk.{i}.{part}");
        let bias = if self.has(&name("attn_q.bias")) {
            Some([
                self.vector(&name("attn_q.bias"))?,
                self.vector(&name("attn_k.bias"))?,
                self.vector(&name("attn_v.bias"))?,
            ])
        } else {
            None
        };
        let qk_norm = if self.has(&name("attn_q_norm.weight")) {
            Some([
                self.vector(&name("attn_q_norm.weight"))?,
                self.vector(&name("attn_k_norm.weight"))?,
            ])
        } else {
            None
        };
        let post_attn_norm = self.optional_vector(&name("post_attention_norm.weight"))?;
        let post_ffn_norm = self.optional_vector(&name("post_ffw_norm.weight"))?;
        Ok(Layer {
            attn_norm: self.vector(&name("attn_norm.weight"))?,
            q: self.matrix(&name("attn_q.weight"), requantize)?,
            k: self.matrix(&name("attn_k.weight"), requantize)?,
            v: self.matrix(&name("attn_v.weight"), requantize)?,
            bias,
            qk_norm,
            o: self.matrix(&name("attn_output.weight"), requantize)?,
            post_attn_norm,
            ffn_norm: self.vector(&name("ffn_norm.weight"))?,
            gate: self.matrix(&name("ffn_gate.weight"), requantize)?,
            up: self.matrix(&name("ffn_up.weight"), requantize)?,
            down: self.matrix(&name("ffn_down.weight"), requantize)?,
            post_ffn_norm,
            window: None,
            rope: 0,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn optional_vector(&mut self, name: &str) -> Result<Option<Vec<f32>>, EngineError> {
        if self.has(name) {
            self.vector(name).map(Some)
        } else {
            Ok(None)
        }
    }

    fn tensor(&mut self, name: &str) -> Result<candle_core::quantized::QTensor, EngineError> {
        self.content
            .tensor(self.reader, name, &Device::Cpu)
            .map_err(|e| EngineError::Load(format!("{name}: {e}")))
    }

    fn matrix(&mut self, name: &str, requantize: bool) -> Result<Box<dyn Matrix>, EngineError> {
        let tensor = self.tensor(name)?;
        matrix::from_qtensor(&tensor, requantize)
            .map_err(|e| EngineError::Load(format!("{name}: {e}")))
    }

    fn vector(&mut self, name: &str) -> Result<Vec<f32>, EngineError> {
        self.tensor(name)?
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| EngineError::Load(format!("{name}: {e}")))
    }

    fn value(&self, key: &str) -> Result<&candle_core::quantized::gguf_file::Value, EngineError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| EngineError::Load(format!("the GGUF has no `{key}`")))
    }

    fn int(&self, key: &str) -> Result<usize, EngineError> {
        let v = self.value(key)?;
        v.to_u32()
            .map(|n| n as usize)
            .or_else(|_| v.to_u64().map(|n| n as usize))
            .or_else(|_| v.to_i32().map(|n| n.max(0) as usize))
            .map_err(|e| EngineError::Load(format!("`{key}`: {e}")))
    }

    fn float(&self, key: &str) -> Result<f32, EngineError> {
        let v = self.value(key)?;
        v.to_f32()
            .or_else(|_| v.to_f64().map(|f| f as f32))
            .map_err(|e| EngineError::Load(format!("`{key}`: {e}")))
    }

    fn text(&self, key: &str) -> Result<String, EngineError> {
        self.value(key)?
            .to_string()
            .cloned()
            .map_err(|e| EngineError::Load(format!("`{key}`: {e}")))
    }
}
