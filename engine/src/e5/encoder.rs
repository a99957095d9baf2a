//! The encoder of multilingual-e5-small: a BERT (post-LayerNorm, exact GELU) over
//! the file's weights. Its matrices are [`Linear`]s (8-bit integer products, or
//! f32 for the reference); the word table stays in Q4_0 and only the rows a batch
//! uses are expanded. Windows are concatenated for the matrices and attend only
//! within themselves, so no padding is computed.

use rayon::prelude::*;

use super::file::{DType, E5File, Hyper, Q4_0_BYTES, QK};
use super::linear::{FloatLinear, Int8Linear, Isa, Linear, dequantise, dot};

/// How the matrices are multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 8-bit integers (what the gateway runs).
    Int8,
    /// The 4-bit weights expanded to f32, f32 activations: the reference.
    Float,
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    fn load(file: &E5File, name: &str, hidden: usize) -> Result<Norm, String> {
        Ok(Norm {
            weight: file.floats(&format!("{name}.w"), hidden)?,
            bias: file.floats(&format!("{name}.b"), hidden)?,
        })
    }

    /// Each row of `x` (plus the same row of `add`) normalised in place.
    fn apply(&self, x: &mut [f32], add: Option<&[f32]>, eps: f32) {
        let h = self.weight.len();
        let rows = x.par_chunks_mut(h);
        let apply = |(row, add): (&mut [f32], Option<&[f32]>)| {
            if let Some(add) = add {
                row.iter_mut().zip(add).for_each(|(x, a)| *x += a);
            }
            let mean = sum(row) / h as f32;
            row.iter_mut().for_each(|x| *x -= mean);
            let var = dot(row, row) / h as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((x, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *x = *x * inv * w + b;
            }
        };
        match add {
            Some(add) => rows
                .zip(add.par_chunks(h))
                .for_each(|(r, a)| apply((r, Some(a)))),
            None => rows.for_each(|r| apply((r, None))),
        }
    }
}

struct Layer {
    /// Query, key and value in one matrix: their input is read and made 8-bit
    /// once, and each output row is `[query | key | value]`.
    qkv: Box<dyn Linear>,
    attention_out: Box<dyn Linear>,
    attention_norm: Norm,
    up: Box<dyn Linear>,
    down: Box<dyn Linear>,
    output_norm: Norm,
}

pub struct Encoder {
    hyper: Hyper,
    /// The file, whose word table (Q4_0 rows of `hidden` weights) is read in
    /// place: a text touches a few of its 250,037 rows.
    file: super::file::Bytes,
    words: std::ops::Range<usize>,
    /// Position embeddings plus the (only) token type's, `[max_positions, hidden]`.
    positions: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn load(file: &E5File, precision: Precision) -> Result<Encoder, String> {
        let h = file.hyper;
        let words = file.range("emb.word", DType::Q4_0, h.vocab * h.hidden)?;
        let mut positions = file.floats("emb.pos", h.max_positions * h.hidden)?;
        let token_type = file.floats("emb.type", 2 * h.hidden)?;
        for row in positions.chunks_exact_mut(h.hidden) {
            row.iter_mut().zip(&token_type).for_each(|(p, t)| *p += t);
        }
        let isa = Isa::detect();
        // The matrices `names` stacked, each `rows` × `cols`.
        let linear =
            |names: &[String], rows: usize, cols: usize| -> Result<Box<dyn Linear>, String> {
                let (mut weights, mut bias) = (Vec::new(), Vec::new());
                for name in names {
                    let raw = file.tensor(&format!("{name}.w"), DType::Q4_0, rows * cols)?;
                    weights.extend(dequantise(raw, rows, cols));
                    bias.extend(file.floats(&format!("{name}.b"), rows)?);
                }
                Ok(match precision {
                    Precision::Int8 => Box::new(Int8Linear::new(&weights, bias, isa)),
                    Precision::Float => Box::new(FloatLinear::new(weights, bias)),
                })
            };
        let layers = (0..h.layers)
            .map(|l| {
                let name = |part: &str| format!("l{l}.{part}");
                Ok(Layer {
                    qkv: linear(&[name("q"), name("k"), name("v")], h.hidden, h.hidden)?,
                    attention_out: linear(&[name("ao")], h.hidden, h.hidden)?,
                    attention_norm: Norm::load(file, &name("aln"), h.hidden)?,
                    up: linear(&[name("fi")], h.intermediate, h.hidden)?,
                    down: linear(&[name("fo")], h.hidden, h.intermediate)?,
                    output_norm: Norm::load(file, &name("oln"), h.hidden)?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Encoder {
            hyper: h,
            file: std::sync::Arc::clone(&file.bytes),
            words,
            positions,
            embedding_norm: Norm::load(file, "emb.ln", h.hidden)?,
            layers,
        })
    }

    /// The most tokens a window may hold, `<s>` and `</s>` included.
    pub fn window(&self) -> usize {
        self.hyper.max_positions
    }

    /// The mean of the last hidden states over each window's tokens (`<s>` and
    /// `</s>` included), one vector per window. Every window holds at most
    /// [`Encoder::window`] ids, each inside the vocabulary.
    pub fn forward(&self, windows: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let h = self.hyper.hidden;
        let total: usize = windows.iter().map(Vec::len).sum();
        let mut x = vec![0.0f32; total * h];
        let mut rows = x.chunks_exact_mut(h);
        for window in windows {
            for (position, (&id, row)) in window.iter().zip(&mut rows).enumerate() {
                self.word(id as usize, row);
                let p = &self.positions[position * h..(position + 1) * h];
                row.iter_mut().zip(p).for_each(|(v, p)| *v += p);
            }
        }
        self.embedding_norm.apply(&mut x, None, self.hyper.eps);
        // Each token's window, as a range of rows.
        let mut spans = Vec::with_capacity(total);
        let mut at = 0;
        for window in windows {
            spans.extend(std::iter::repeat_n(at..at + window.len(), window.len()));
            at += window.len();
        }
        for layer in &self.layers {
            self.layer(layer, &mut x, &spans);
        }
        let mut at = 0;
        windows
            .iter()
            .map(|window| {
                let mut mean = vec![0.0f32; h];
                for row in x[at * h..(at + window.len()) * h].chunks_exact(h) {
                    mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
                }
                mean.iter_mut().for_each(|m| *m /= window.len() as f32);
                at += window.len();
                mean
            })
            .collect()
    }

    fn layer(&self, l: &Layer, x: &mut [f32], spans: &[std::ops::Range<usize>]) {
        let rows = spans.len();
        let qkv = l.qkv.forward(x, rows);
        let context = self.attention(&qkv, spans);
        let attended = l.attention_out.forward(&context, rows);
        l.attention_norm.apply(x, Some(&attended), self.hyper.eps);
        let mut mid = l.up.forward(x, rows);
        // In runs of plain loops, which the compiler vectorises.
        mid.par_chunks_mut(4096)
            .for_each(|run| run.iter_mut().for_each(|v| *v = gelu(*v)));
        let down = l.down.forward(&mid, rows);
        l.output_norm.apply(x, Some(&down), self.hyper.eps);
    }

    /// Each token's attention over its own window, head by head. `qkv` holds a
    /// `[query | key | value]` row per token.
    fn attention(&self, qkv: &[f32], spans: &[std::ops::Range<usize>]) -> Vec<f32> {
        let (h, heads) = (self.hyper.hidden, self.hyper.heads);
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let row = |t: usize, part: usize| &qkv[t * 3 * h + part * h..][..h];
        let mut context = vec![0.0f32; spans.len() * h];
        context.par_chunks_mut(h).enumerate().for_each(|(t, out)| {
            let span = spans[t].clone();
            let mut weights = vec![0.0f32; span.len()];
            for head in 0..heads {
                let cols = head * d..(head + 1) * d;
                let query = &row(t, 0)[cols.clone()];
                for (w, j) in weights.iter_mut().zip(span.clone()) {
                    let key = &row(j, 1)[cols.clone()];
                    *w = dot(query, key) * scale;
                }
                let max = weights.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for w in &mut weights {
                    *w = (*w - max).exp();
                    sum += *w;
                }
                let out = &mut out[cols.clone()];
                out.fill(0.0);
                for (w, j) in weights.iter().zip(span.clone()) {
                    let value = &row(j, 2)[cols.clone()];
                    let w = w / sum;
                    out.iter_mut().zip(value).for_each(|(o, v)| *o += w * v);
                }
            }
        });
        context
    }

    /// Row `id` of the word table, expanded into `out`.
    fn word(&self, id: usize, out: &mut [f32]) {
        let bytes = self.hyper.hidden / QK * Q4_0_BYTES;
        let table = &(*self.file).as_ref()[self.words.clone()];
        let row = &table[id * bytes..(id + 1) * bytes];
        out.copy_from_slice(&dequantise(row, 1, self.hyper.hidden));
    }
}

/// Σ x in eight running sums (see [`dot`]).
fn sum(x: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    for chunk in x.chunks_exact(8) {
        for i in 0..8 {
            sums[i] += chunk[i];
        }
    }
    sums.iter().sum::<f32>() + x[x.len() / 8 * 8..].iter().sum::<f32>()
}

/// GELU as BERT has it: `x·Φ(x)`, with erf.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf to within 1.5·10⁻⁷ (Abramowitz and Stegun 7.1.26).
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * exp_negative(-a * a)).copysign(x)
}

/// eˣ for −87 ≤ x ≤ 0 (what [`erf`] asks), to within 4·10⁻⁷ relative,
/// in arithmetic the compiler vectorises: libm's `expf` is one call per value,
/// and GELU takes one per activation of the widest matrix.
fn exp_negative(x: f32) -> f32 {
    // x = n·ln 2 + r with |r| ≤ ln 2 / 2; eˣ = 2ⁿ·eʳ.
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let exponent = (shifted.to_bits() as i32 - MAGIC.to_bits() as i32) + 127;
    p * f32::from_bits((exponent << 23) as u32)
}

/// Unit length (a zero vector stays zero).
pub fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().max(1e-12).sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_negative_is_close_everywhere() {
        for i in 0..=8_700 {
            let x = -(i as f32) / 100.0;
            let (fast, exact) = (super::exp_negative(x), x.exp());
            assert!(
                (fast - exact).abs() <= 4e-7 * exact,
                "e^{x}: {fast} against {exact}"
            );
        }
        // Below −87 it stays at e⁻⁸⁷ (no value of erf's needs less).
        assert!(super::exp_negative(-200.0) < 2e-38);
    }

    #[test]
    fn erf_is_close_everywhere() {
        for (x, expected) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
            (4.0, 0.999_999_98),
        ] {
            assert!((super::erf(x) - expected).abs() < 3e-7, "erf({x})");
        }
    }
}
