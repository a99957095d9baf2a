//! ragway's own decoder for GGUF chat models on the CPU: the llama family (llama,
//! qwen2) and gemma3.
//!
//! candle's quantised models spend most of a small model's token on work around
//! the weights — a KV cache re-concatenated every token, keys and values copied
//! per query head, a tensor allocated per operation — and have no SIMD kernel for
//! Q4_1. This one keeps a preallocated KV cache per answer, reads grouped keys in
//! place, quantises each input once for the matrices that share it, and splits
//! every product across the compute threads the worker was given. Tests hold it to
//! candle's reference models (llama, qwen2) and to llama.cpp (gemma3, whose candle
//! model gates its feed-forward with SiLU where Gemma uses GELU).

mod kernels;
mod load;
mod matrix;
mod ops;
mod parallel;

use std::sync::Arc;

use crate::EngineError;
use matrix::{Matrix, matmul, matmul_prepared, same_input};
use ops::Rope;

pub use load::{load, supports};

/// Shapes and constants, from the GGUF's metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub eps: f32,
    pub vocab: usize,
    /// What the token embedding is multiplied by (Gemma: √dim).
    pub embed_scale: f32,
    /// What query · key is multiplied by (usually 1/√head_dim).
    pub attn_scale: f32,
    pub activation: Activation,
    /// Gemma 2-style `cap · tanh(logit / cap)` on the output.
    pub logit_softcap: Option<f32>,
}

/// The feed-forward gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: llama, qwen2.
    Silu,
    /// GeGLU with the tanh approximation: Gemma.
    Gelu,
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Box<dyn Matrix>,
    k: Box<dyn Matrix>,
    v: Box<dyn Matrix>,
    /// qwen2's attention biases.
    bias: Option<[Vec<f32>; 3]>,
    /// Gemma 3's per-head RMS norms of queries and keys.
    qk_norm: Option<[Vec<f32>; 2]>,
    o: Box<dyn Matrix>,
    /// Gemma's norms of each block's output, before the residual.
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Box<dyn Matrix>,
    up: Box<dyn Matrix>,
    down: Box<dyn Matrix>,
    post_ffn_norm: Option<Vec<f32>>,
    /// Sliding-window layers see only this many positions, their own included.
    window: Option<usize>,
    /// Which of the decoder's rotary embeddings the layer uses.
    rope: usize,
}

pub struct Decoder {
    pub config: Config,
    embed: Arc<dyn Matrix>,
    /// The embedding matrix itself when the model ties them.
    output: Arc<dyn Matrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// One, or (Gemma 3) one for sliding-window layers and one for global ones.
    ropes: Vec<Rope>,
}

/// The keys and values of one answer so far, room for `capacity` positions.
pub struct Cache {
    keys: Vec<f32>,
    values: Vec<f32>,
    capacity: usize,
    len: usize,
}

/// Per-forward buffers, `tokens` rows each.
struct Buffers {
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    delta: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

/// Per token of a forward pass, per rotary embedding: the angles' cosines and sines.
type Angles = Vec<Vec<(Vec<f32>, Vec<f32>)>>;

impl Decoder {
    /// An empty cache for an answer of at most `capacity` positions (prompt included).
    pub fn cache(&self, capacity: usize) -> Cache {
        let c = &self.config;
        let size = c.layers * c.kv_heads * capacity * c.head_dim;
        Cache {
            keys: vec![0.0; size],
            values: vec![0.0; size],
            capacity,
            len: 0,
        }
    }

    /// Runs `tokens` at the positions after those in `cache`, and returns the
    /// logits that follow the last of them.
    pub fn forward(&self, cache: &mut Cache, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let c = &self.config;
        let m = tokens.len();
        if m == 0 || cache.len + m > cache.capacity {
            return Err(EngineError::Input(format!(
                "{m} tokens do not fit after {} of {} positions",
                cache.len, cache.capacity
            )));
        }
        let (dim, q_dim, kv_dim) = (c.dim, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let mut b = Buffers {
            x: vec![0.0; m * dim],
            normed: vec![0.0; m * dim],
            q: vec![0.0; m * q_dim],
            k: vec![0.0; m * kv_dim],
            v: vec![0.0; m * kv_dim],
            attn: vec![0.0; m * q_dim],
            delta: vec![0.0; m * dim],
            gate: vec![0.0; m * c.ffn],
            up: vec![0.0; m * c.ffn],
        };
        for (&token, row) in tokens.iter().zip(b.x.chunks_exact_mut(dim)) {
            if token as usize >= c.vocab {
                return Err(EngineError::Input(format!(
                    "token {token} is not in the vocabulary"
                )));
            }
            self.embed.row(token as usize, row);
            if c.embed_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= c.embed_scale);
            }
        }
        let angles: Angles = (0..m)
            .map(|i| {
                let position = cache.len + i;
                self.ropes
                    .iter()
                    .map(|rope| {
                        let (mut cos, mut sin) = (Vec::new(), Vec::new());
                        rope.at(position, &mut cos, &mut sin);
                        (cos, sin)
                    })
                    .collect()
            })
            .collect();
        for (l, layer) in self.layers.iter().enumerate() {
            self.attention(l, layer, cache, &angles, &mut b);
            self.feed_forward(layer, &mut b);
        }
        cache.len += m;
        let last = &b.x[(m - 1) * dim..];
        let mut normed = vec![0.0; dim];
        ops::rms_norm(last, &self.output_norm, c.eps, &mut normed);
        let mut logits = vec![0.0; c.vocab];
        matmul(self.output.as_ref(), &normed, 1, &mut logits);
        if let Some(cap) = c.logit_softcap {
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
        Ok(logits)
    }

    fn attention(
        &self,
        l: usize,
        layer: &Layer,
        cache: &mut Cache,
        angles: &Angles,
        b: &mut Buffers,
    ) {
        let c = &self.config;
        let m = angles.len();
        ops::rms_norm_rows(&b.x, &layer.attn_norm, c.eps, &mut b.normed);
        let q = (layer.q.as_ref(), b.q.as_mut_slice());
        let k = (layer.k.as_ref(), b.k.as_mut_slice());
        let v = (layer.v.as_ref(), b.v.as_mut_slice());
        project(&b.normed, m, [q, k, v]);
        if let Some(bias) = &layer.bias {
            for (buf, bias) in [&mut b.q, &mut b.k, &mut b.v].into_iter().zip(bias) {
                for row in buf.chunks_exact_mut(bias.len()) {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
            }
        }
        if let Some([q_norm, k_norm]) = &layer.qk_norm {
            ops::rms_norm_rows_in_place(&mut b.q, q_norm, c.eps);
            ops::rms_norm_rows_in_place(&mut b.k, k_norm, c.eps);
        }
        let rope = &self.ropes[layer.rope];
        let (q_dim, kv_dim) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        for (i, per_rope) in angles.iter().enumerate() {
            let (cos, sin) = &per_rope[layer.rope];
            rope.apply(&mut b.q[i * q_dim..(i + 1) * q_dim], c.head_dim, cos, sin);
            rope.apply(&mut b.k[i * kv_dim..(i + 1) * kv_dim], c.head_dim, cos, sin);
        }
        self.store(l, cache, &b.k, &b.v, m);
        self.attend(l, layer.window, cache, &b.q, &mut b.attn, m);
        matmul(layer.o.as_ref(), &b.attn, m, &mut b.delta);
        self.add_residual(&mut b.x, &mut b.delta, layer.post_attn_norm.as_deref());
    }

    /// `x += delta`, the delta RMS-normed first where the model says so (Gemma).
    fn add_residual(&self, x: &mut [f32], delta: &mut [f32], norm: Option<&[f32]>) {
        if let Some(weight) = norm {
            ops::rms_norm_rows_in_place(delta, weight, self.config.eps);
        }
        x.iter_mut().zip(delta.iter()).for_each(|(x, d)| *x += d);
    }

    /// Writes the new keys and values at positions `len..len + m`.
    fn store(&self, l: usize, cache: &mut Cache, k: &[f32], v: &[f32], m: usize) {
        let c = &self.config;
        let hd = c.head_dim;
        for i in 0..m {
            for g in 0..c.kv_heads {
                let at = self.slot(l, g, cache.capacity) + (cache.len + i) * hd;
                let from = (i * c.kv_heads + g) * hd;
                cache.keys[at..at + hd].copy_from_slice(&k[from..from + hd]);
                cache.values[at..at + hd].copy_from_slice(&v[from..from + hd]);
            }
        }
    }

    /// Where layer `l`'s KV head `g` starts in the cache.
    fn slot(&self, l: usize, g: usize, capacity: usize) -> usize {
        (l * self.config.kv_heads + g) * capacity * self.config.head_dim
    }

    /// Causal attention of `m` new queries, each over every position up to its own
    /// (the last `window` of them, on a sliding-window layer); the query heads of a
    /// group read their shared keys and values once.
    fn attend(
        &self,
        l: usize,
        window: Option<usize>,
        cache: &Cache,
        q: &[f32],
        out: &mut [f32],
        m: usize,
    ) {
        let c = &self.config;
        let hd = c.head_dim;
        let width = hd * c.heads / c.kv_heads; // one group's queries
        let shared = parallel::Out::new(out);
        parallel::split(m * c.kv_heads, 1, 1, |range| {
            let mut scores = vec![0.0; (cache.len + m) * c.heads / c.kv_heads];
            let mut group_out = vec![0.0; width];
            for job in range {
                let (i, g) = (job / c.kv_heads, job % c.kv_heads);
                let slot = self.slot(l, g, cache.capacity);
                let end = cache.len + i + 1;
                let start = window.map_or(0, |w| end.saturating_sub(w));
                let keys = &cache.keys[slot + start * hd..slot + end * hd];
                let values = &cache.values[slot + start * hd..slot + end * hd];
                let queries = &q[job * width..(job + 1) * width];
                let (scale, len) = (c.attn_scale, end - start);
                ops::attend(
                    queries,
                    keys,
                    values,
                    hd,
                    len,
                    scale,
                    &mut scores,
                    &mut group_out,
                );
                for (j, v) in group_out.iter().enumerate() {
                    shared.set(job * width + j, *v);
                }
            }
        });
    }

    fn feed_forward(&self, layer: &Layer, b: &mut Buffers) {
        let c = &self.config;
        let m = b.x.len() / c.dim;
        ops::rms_norm_rows(&b.x, &layer.ffn_norm, c.eps, &mut b.normed);
        let gate = (layer.gate.as_ref(), b.gate.as_mut_slice());
        let up = (layer.up.as_ref(), b.up.as_mut_slice());
        project(&b.normed, m, [gate, up]);
        match c.activation {
            Activation::Silu => ops::swiglu(&mut b.gate, &b.up),
            Activation::Gelu => ops::geglu(&mut b.gate, &b.up),
        }
        matmul(layer.down.as_ref(), &b.gate, m, &mut b.delta);
        self.add_residual(&mut b.x, &mut b.delta, layer.post_ffn_norm.as_deref());
    }
}

/// `out = w · input` for each matrix, the `m` input rows quantised once for all
/// the matrices that read them the way the first does.
fn project<const N: usize>(input: &[f32], m: usize, outputs: [(&dyn Matrix, &mut [f32]); N]) {
    let Some(first) = outputs.first().map(|(w, _)| *w) else {
        return;
    };
    let shared = first.activations(input, m);
    for (w, out) in outputs {
        if same_input(first, w) {
            matmul_prepared(w, &shared, out);
        } else {
            matmul(w, input, m, out);
        }
    }
}
