//! The small f32 operations between the matrix products: RMS norm, rotary position
//! embeddings, attention over the KV cache, SwiGLU.
//!
//! Sums run over eight independent accumulators, so the compiler vectorises them
//! without reordering a single floating-point sum. Attention, the one that grows
//! with the context, is also compiled for AVX2 with fused multiply-adds.

/// `a · b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, plain_madd)
}

/// `a · b + c`, in two roundings: what every CPU does fast.
#[inline(always)]
fn plain_madd(a: f32, b: f32, c: f32) -> f32 {
    a * b + c
}

/// `a · b`, each step `madd(x, y, acc)`: a fused multiply-add where the caller is
/// compiled for one (`f32::mul_add` elsewhere is a slow library call).
#[inline(always)]
fn dot_with(a: &[f32], b: &[f32], madd: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] = madd(x[i], y[i], acc[i]);
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `out += scale · v`.
#[inline(always)]
fn add_scaled_with(out: &mut [f32], v: &[f32], scale: f32, madd: impl Fn(f32, f32, f32) -> f32) {
    for (o, x) in out.iter_mut().zip(v) {
        *o = madd(scale, *x, *o);
    }
}

/// `out = x / rms(x) · weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let scale = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// [`rms_norm`] of each row of `x` (rows as long as `weight`), into `out`.
pub fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        rms_norm(x, weight, eps, out);
    }
}

/// [`rms_norm`] of each row of `x` (rows as long as `weight`), in place.
pub fn rms_norm_rows_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(weight.len()) {
        let scale = 1.0 / (dot(row, row) / row.len() as f32 + eps).sqrt();
        row.iter_mut()
            .zip(weight)
            .for_each(|(v, w)| *v = *v * scale * w);
    }
}

/// SwiGLU: `gate = silu(gate) · up`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// GeGLU: `gate = gelu(gate) · up`, GELU in its tanh approximation written as a
/// sigmoid: `0.5·x·(1 + tanh(z)) = x / (1 + e^(-2z))`.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    const TWO_SQRT_2_OVER_PI: f32 = 1.595_769;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + exp(-TWO_SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x))) * u;
    }
}

/// How a model pairs the dimensions it rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: llama GGUFs (their Q/K rows are permuted for it).
    Interleaved,
    /// Halves `(i, i + d/2)`: qwen2 and GPT-NeoX.
    Halves,
}

/// Rotary position embeddings for one position: `cos`/`sin` per rotated pair.
pub struct Rope {
    pub style: RopeStyle,
    /// Per pair, the angle per position.
    pub inv_freq: Vec<f32>,
}

impl Rope {
    /// The angles' cosines and sines at `position`.
    pub fn at(&self, position: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        cos.clear();
        sin.clear();
        for &f in &self.inv_freq {
            let angle = position as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }

    /// Rotates each head of `x` (heads of `head_dim`) in place.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let pairs = cos.len();
        for head in x.chunks_exact_mut(head_dim) {
            for i in 0..pairs {
                let (a, b) = match self.style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + pairs),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// The query heads of one group against the keys and values they share, at
/// positions `0..len`: `out[h] = softmax(scale · q[h] · K) · V`. Each key and value
/// row is read once for the whole group. `queries` and `out` hold the group's
/// heads one after another; `scores` is scratch of at least `len × heads`.
#[allow(clippy::too_many_arguments)] // the inputs of attention, and two buffers
pub fn attend(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    head_dim: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { attend_avx2(queries, keys, values, head_dim, len, scale, scores, out) };
    }
    attend_any(
        queries, keys, values, head_dim, len, scale, scores, out, plain_madd,
    )
}

/// The same code, compiled for AVX2 and FMA: its sums run eight lanes wide, one
/// fused multiply-add a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)] // `attend`'s
unsafe fn attend_avx2(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    head_dim: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_any(
        queries,
        keys,
        values,
        head_dim,
        len,
        scale,
        scores,
        out,
        f32::mul_add,
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)] // `attend`'s, plus how to multiply-add
fn attend_any(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    head_dim: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    madd: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    let heads = queries.len() / head_dim;
    // scores[h * len + t]: each head's row contiguous for the softmax.
    let scores = &mut scores[..len * heads];
    for t in 0..len {
        let key = &keys[t * head_dim..(t + 1) * head_dim];
        for (h, q) in queries.chunks_exact(head_dim).enumerate() {
            scores[h * len + t] = dot_with(q, key, madd) * scale;
        }
    }
    let mut totals = [0f32; MAX_GROUP];
    for (row, total) in scores.chunks_exact_mut(len).zip(totals.iter_mut()) {
        let max = max_of(row);
        let mut sums = [0f32; 8];
        let mut chunks = row.chunks_exact_mut(8);
        for chunk in &mut chunks {
            for i in 0..8 {
                chunk[i] = exp(chunk[i] - max);
                sums[i] += chunk[i];
            }
        }
        let mut tail = 0f32;
        for s in chunks.into_remainder() {
            *s = exp(*s - max);
            tail += *s;
        }
        *total = sums.iter().sum::<f32>() + tail;
    }
    out.fill(0.0);
    for t in 0..len {
        let value = &values[t * head_dim..(t + 1) * head_dim];
        for (h, o) in out.chunks_exact_mut(head_dim).enumerate() {
            add_scaled_with(o, value, scores[h * len + t], madd);
        }
    }
    for (o, total) in out.chunks_exact_mut(head_dim).zip(totals) {
        o.iter_mut().for_each(|v| *v /= total);
    }
}

/// The most query heads one key/value head serves (Llama 3 70B: 8; Qwen2.5 7B: 7).
pub const MAX_GROUP: usize = 16;

#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for i in 0..8 {
            lanes[i] = if chunk[i] > lanes[i] {
                chunk[i]
            } else {
                lanes[i]
            };
        }
    }
    let rest = chunks.remainder().iter();
    lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, v| if *v > m { *v } else { m })
}

/// `eˣ` to about 2 parts in 10⁷, for `x` in [-87, 88] (beyond, the bound's value),
/// in arithmetic the compiler vectorises (`f32::exp` is a library call per value).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5 · 2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r on [-ln2/2, ln2/2]: Taylor to r⁶.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * two_n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_sum_at_every_length() {
        for n in [0, 1, 7, 8, 9, 64, 67] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-3, "n = {n}");
        }
    }

    #[test]
    fn rope_styles_rotate_different_pairs_and_keep_length() {
        let rope = |style| Rope {
            style,
            inv_freq: vec![1.0, 0.5],
        };
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        let r = rope(RopeStyle::Interleaved);
        r.at(1, &mut cos, &mut sin);
        let mut x = vec![1.0, 0.0, 1.0, 0.0];
        r.apply(&mut x, 4, &cos, &sin);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        let mut y = vec![1.0, 1.0, 0.0, 0.0];
        rope(RopeStyle::Halves).apply(&mut y, 4, &cos, &sin);
        assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[2] - 1f32.sin()).abs() < 1e-6);
        assert!((y[1] - 0.5f32.cos()).abs() < 1e-6 && (y[3] - 0.5f32.sin()).abs() < 1e-6);
        let norm: f32 = y.iter().map(|v| v * v).sum();
        assert!((norm - 2.0).abs() < 1e-5);
    }

    #[test]
    fn attention_weights_values_by_softmax() {
        // Two positions; the query matches the second key far better.
        let q = [10.0, 0.0];
        let keys = [0.0, 1.0, 1.0, 0.0];
        let values = [1.0, 2.0, 3.0, 4.0];
        let mut scores = [0.0; 2];
        let mut out = [0.0; 2];
        attend(
            &q,
            &keys,
            &values,
            2,
            2,
            1.0 / 2f32.sqrt(),
            &mut scores,
            &mut out,
        );
        let w = 1.0 / (1.0 + (-10.0f32 / 2f32.sqrt()).exp());
        assert!((out[0] - (w * 3.0 + (1.0 - w) * 1.0)).abs() < 1e-4);
        // Only the first position visible: its value exactly.
        attend(
            &q,
            &keys,
            &values,
            2,
            1,
            1.0 / 2f32.sqrt(),
            &mut scores,
            &mut out,
        );
        assert_eq!(out, [1.0, 2.0]);
    }

    #[test]
    fn a_group_of_heads_gets_what_each_head_gets_alone() {
        let keys: Vec<f32> = (0..12).map(|i| (i as f32 * 0.7).sin()).collect();
        let values: Vec<f32> = (0..12).map(|i| (i as f32 * 0.3).cos()).collect();
        let queries = [0.5, -1.0, 2.0, 0.25, -0.5, 1.5];
        let mut scores = [0.0; 12];
        let mut together = [0.0; 6];
        attend(
            &queries,
            &keys,
            &values,
            3,
            4,
            0.5,
            &mut scores,
            &mut together,
        );
        for h in 0..2 {
            let mut alone = [0.0; 3];
            let q = &queries[h * 3..(h + 1) * 3];
            attend(q, &keys, &values, 3, 4, 0.5, &mut scores, &mut alone);
            assert_eq!(alone, together[h * 3..(h + 1) * 3]);
        }
    }

    #[test]
    fn the_vectorised_exp_matches_the_library() {
        for i in 0..=37_600 {
            let x = 88.0 - i as f32 * 0.005; // 88 down to -100
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 3e-7 * want + 1e-37,
                "e^{x}: {got} vs {want}"
            );
        }
    }
}
