//! The encoder's matrices, `y = x·Wᵀ + b`, two ways:
//!
//! - [`Int8Linear`], what the model runs: each weight row in 8 bits with its own
//!   scale (from the file's 4-bit blocks), each activation row in 8 bits with its
//!   own scale, multiplied in integers (AVX-512 VNNI or AVX2 where the CPU has
//!   them, plain Rust elsewhere). An activation row's few outliers (above six
//!   times its root mean square, where BERT's LayerNorm outputs put a handful of
//!   channels) are left out of the integer product and added in floating point,
//!   as LLM.int8() does: without that, one channel would set every other's step.
//! - [`FloatLinear`]: the same weights expanded to f32 and multiplied in f32, the
//!   reference the tests hold the fast path to.

use rayon::prelude::*;

use super::file::{Q4_0_BYTES, QK};

/// One matrix: `outputs` rows of `inputs` weights, and a bias per row.
pub trait Linear: Send + Sync {
    fn outputs(&self) -> usize;

    /// `x` is `rows` × inputs; returns `rows` × outputs.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32>;
}

/// Expands Q4_0 rows into f32: `rows` × `cols`.
pub fn dequantise(raw: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    for (block, out) in raw.chunks_exact(Q4_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (j, &byte) in block[2..].iter().enumerate() {
            out[j] = (f32::from(byte & 0x0F) - 8.0) * scale;
            out[j + QK / 2] = (f32::from(byte >> 4) - 8.0) * scale;
        }
    }
    out
}

pub struct FloatLinear {
    weights: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
}

impl FloatLinear {
    pub fn new(weights: Vec<f32>, bias: Vec<f32>) -> FloatLinear {
        let inputs = weights.len() / bias.len().max(1);
        FloatLinear {
            weights,
            bias,
            inputs,
        }
    }
}

impl Linear for FloatLinear {
    fn outputs(&self) -> usize {
        self.bias.len()
    }

    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let n = self.outputs();
        let mut y = vec![0.0f32; rows * n];
        y.par_chunks_mut(n).enumerate().for_each(|(m, y)| {
            let x = &x[m * self.inputs..(m + 1) * self.inputs];
            for (o, y) in y.iter_mut().enumerate() {
                let w = &self.weights[o * self.inputs..(o + 1) * self.inputs];
                *y = self.bias[o] + dot(w, x);
            }
        });
        y
    }
}

/// Σ w·x in eight running sums (a sum the compiler may vectorise; one running
/// sum it must keep in order).
pub(super) fn dot(w: &[f32], x: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    for (w, x) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            sums[i] += w[i] * x[i];
        }
    }
    let rest = w.len() / 8 * 8;
    let tail: f32 = w[rest..].iter().zip(&x[rest..]).map(|(w, x)| w * x).sum();
    sums.iter().sum::<f32>() + tail
}

/// Which integer kernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Vnni,
    Avx2,
    Portable,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw") {
                return Isa::Vnni;
            }
            if is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

pub struct Int8Linear {
    /// Row-major, `outputs` × `inputs`, each row scaled to ±127.
    weights: Vec<i8>,
    /// Each row's step.
    scales: Vec<f32>,
    /// Columns of the same weights (each `outputs` long), copied out the first
    /// time an activation outlier falls in them: an outlier's column is then read
    /// at once for every output. Outliers keep to a few channels, so most columns
    /// are never copied (a full copy would double the matrix).
    columns: Vec<std::sync::OnceLock<Box<[i8]>>>,
    /// Each row's sum of weights (the VNNI kernel reads activations offset by 128).
    sums: Vec<i32>,
    bias: Vec<f32>,
    inputs: usize,
    isa: Isa,
}

/// An activation value is an outlier above this many times its row's RMS.
const OUTLIER: f32 = 6.0;

impl Int8Linear {
    /// From f32 weights (`bias.len()` rows), each row to 8 bits with its own scale.
    pub fn new(weights: &[f32], bias: Vec<f32>, isa: Isa) -> Int8Linear {
        let outputs = bias.len();
        let inputs = weights.len() / outputs.max(1);
        let mut q = vec![0i8; weights.len()];
        let mut scales = vec![0.0f32; outputs];
        let mut sums = vec![0i32; outputs];
        for (o, row) in weights.chunks_exact(inputs).enumerate() {
            let (scale, out) = (&mut scales[o], &mut q[o * inputs..(o + 1) * inputs]);
            *scale = quantise_into(row, out);
            sums[o] = out.iter().map(|&v| i32::from(v)).sum();
        }
        Int8Linear {
            columns: (0..inputs).map(|_| std::sync::OnceLock::new()).collect(),
            weights: q,
            scales,
            sums,
            bias,
            inputs,
            isa,
        }
    }
}

/// The largest magnitude in `x`, in eight running maxima (which vectorise).
fn largest(x: &[f32]) -> f32 {
    let mut max = [0.0f32; 8];
    for chunk in x.chunks_exact(8) {
        for i in 0..8 {
            max[i] = max[i].max(chunk[i].abs());
        }
    }
    let tail = x[x.len() / 8 * 8..]
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    max.iter().fold(tail, |m, v| m.max(*v))
}

/// `row` as 8 bits with one step (returned): nearest, ties to even.
fn quantise_into(row: &[f32], out: &mut [i8]) -> f32 {
    let step = largest(row) / 127.0;
    let inverse = if step > 0.0 { 1.0 / step } else { 0.0 };
    // A value of magnitude ≤ 127 added to 1.5·2²³ is rounded to an integer (ties
    // to even, as the hardware rounds) held in the sum's low bits: a rounding and
    // conversion the compiler vectorises.
    const MAGIC: f32 = 12_582_912.0;
    let base = MAGIC.to_bits() as i32;
    for (o, v) in out.iter_mut().zip(row) {
        *o = (((v * inverse).clamp(-127.0, 127.0) + MAGIC).to_bits() as i32 - base) as i8;
    }
    step
}

/// Activation rows, ready for the integer product.
struct Prepared {
    /// `rows` × `inputs` bytes: signed, or offset by 128 for the VNNI kernel.
    values: Vec<i8>,
    steps: Vec<f32>,
    /// Per row, (column, value) of the values left out.
    outliers: Vec<Vec<(usize, f32)>>,
}

impl Prepared {
    fn new(x: &[f32], inputs: usize, offset: bool) -> Prepared {
        let rows = x.len() / inputs;
        let mut prepared = Prepared {
            values: vec![0i8; x.len()],
            steps: vec![0.0; rows],
            outliers: vec![Vec::new(); rows],
        };
        prepared
            .values
            .par_chunks_mut(inputs)
            .zip(prepared.steps.par_iter_mut())
            .zip(prepared.outliers.par_iter_mut())
            .zip(x.par_chunks(inputs))
            .for_each(|(((values, step), outliers), x)| {
                let limit = OUTLIER * (dot(x, x) / x.len().max(1) as f32).sqrt();
                *step = if largest(x) > limit {
                    let mut kept = x.to_vec();
                    for (j, v) in kept.iter_mut().enumerate() {
                        if v.abs() > limit {
                            outliers.push((j, *v));
                            *v = 0.0;
                        }
                    }
                    quantise_into(&kept, values)
                } else {
                    quantise_into(x, values)
                };
                if offset {
                    values.iter_mut().for_each(|v| *v ^= i8::MIN);
                }
            });
        prepared
    }
}

/// Rows of activations a task takes: each weight row is read from the cache once
/// for all of them (their bytes stay in the core's L1 while it is).
const ROWS: usize = 16;

impl Linear for Int8Linear {
    fn outputs(&self) -> usize {
        self.bias.len()
    }

    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let n = self.outputs();
        if rows == 0 {
            return Vec::new();
        }
        let prepared = Prepared::new(x, self.inputs, self.vnni());
        let mut y = vec![0.0f32; rows * n];
        if rows >= 2 * ROWS {
            // Many rows: each task takes a block of rows and every output.
            y.par_chunks_mut(ROWS * n)
                .enumerate()
                .for_each(|(b, y)| self.block(&prepared, b * ROWS, 0, n, y));
        } else {
            // A question or two: the tasks share the outputs.
            let part = n
                .div_ceil(rayon::current_num_threads() * 2)
                .next_multiple_of(4);
            let starts: Vec<usize> = (0..n).step_by(part).collect();
            let parts: Vec<(usize, Vec<f32>)> = starts
                .into_par_iter()
                .map(|o0| {
                    let width = part.min(n - o0);
                    let mut out = vec![0.0f32; rows * width];
                    self.block(&prepared, 0, o0, width, &mut out);
                    (o0, out)
                })
                .collect();
            for (o0, out) in parts {
                let width = out.len() / rows;
                for (y, out) in y.chunks_mut(n).zip(out.chunks(width)) {
                    y[o0..o0 + width].copy_from_slice(out);
                }
            }
        }
        y
    }
}

impl Int8Linear {
    /// Column `j` of the weights, copied out on first use.
    fn column(&self, j: usize) -> &[i8] {
        self.columns[j].get_or_init(|| {
            self.weights
                .iter()
                .skip(j)
                .step_by(self.inputs)
                .copied()
                .collect()
        })
    }

    fn vnni(&self) -> bool {
        self.isa == Isa::Vnni && self.inputs.is_multiple_of(64)
    }

    /// Outputs `o0..o0 + width` of the rows from `m0` (as many as `y` holds, at
    /// most [`ROWS`] at a time) into `y`, `width` to a row.
    fn block(&self, p: &Prepared, m0: usize, o0: usize, width: usize, y: &mut [f32]) {
        let k = self.inputs;
        let rows = y.len() / width;
        let a = &p.values[m0 * k..(m0 + rows) * k];
        let w = &self.weights[o0 * k..(o0 + width) * k];
        let mut dots = vec![0i32; rows * width];
        for (a, dots) in a.chunks(ROWS * k).zip(dots.chunks_mut(ROWS * width)) {
            self.dots(a, w, dots);
        }
        let offset = if self.vnni() { 128 } else { 0 };
        let outputs = o0..o0 + width;
        let (bias, scales, sums) = (
            &self.bias[outputs.clone()],
            &self.scales[outputs.clone()],
            &self.sums[outputs],
        );
        for (r, (y, dots)) in y.chunks_mut(width).zip(dots.chunks(width)).enumerate() {
            let step = p.steps[m0 + r];
            for ((((y, &dot), &bias), &scale), &sum) in
                y.iter_mut().zip(dots).zip(bias).zip(scales).zip(sums)
            {
                *y = bias + scale * step * (dot - offset * sum) as f32;
            }
            for &(j, v) in &p.outliers[m0 + r] {
                let column = &self.column(j)[o0..o0 + width];
                for ((y, &scale), &w) in y.iter_mut().zip(scales).zip(column) {
                    *y += scale * v * f32::from(w);
                }
            }
        }
    }

    /// Integer products of up to [`ROWS`] activation rows `a` with the weight
    /// rows `w`, into `dots` (activation row by activation row): four weight rows
    /// at a time against every activation row, four of those at a time.
    fn dots(&self, a: &[i8], w: &[i8], dots: &mut [i32]) {
        let k = self.inputs;
        let outputs = w.len() / k;
        #[cfg(target_arch = "x86_64")]
        if self.vnni() {
            // The activations are offset by 128 for VNNI: outputs past the last four
            // take the same offset products in plain Rust.
            let whole = outputs / 4 * 4;
            for (a, dots) in a.chunks_exact(k).zip(dots.chunks_mut(outputs)) {
                for (dot, w) in dots[whole..].iter_mut().zip(w[whole * k..].chunks_exact(k)) {
                    // The stored byte read unsigned is the value plus 128.
                    *dot = a
                        .iter()
                        .zip(w)
                        .map(|(&a, &w)| i32::from(a as u8) * i32::from(w))
                        .sum();
                }
            }
            // SAFETY: `Isa::Vnni` is detected only where the CPU has AVX-512 F, BW
            // and VNNI; `k` is a multiple of 64 and the slices hold whole rows.
            unsafe { x86::dots_vnni(a, &w[..whole * k], k, outputs, dots) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.isa != Isa::Portable && k.is_multiple_of(32) {
            for (a, dots) in a.chunks_exact(k).zip(dots.chunks_mut(outputs)) {
                // SAFETY: detected only where the CPU has AVX2; whole rows of `k`.
                unsafe { x86::dots_avx2(a, w, dots) };
            }
            return;
        }
        for (a, dots) in a.chunks_exact(k).zip(dots.chunks_mut(outputs)) {
            for (dot, w) in dots.iter_mut().zip(w.chunks_exact(k)) {
                *dot = a
                    .iter()
                    .zip(w)
                    .map(|(&a, &w)| i32::from(a) * i32::from(w))
                    .sum();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Σ (a + 128)·w of every activation row of `a` against every weight row of
    /// `w` (a multiple of four rows), into `dots` (`outputs` to an activation row),
    /// four weight rows against four activation rows at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dots_vnni(a: &[i8], w: &[i8], k: usize, outputs: usize, dots: &mut [i32]) {
        let rows = a.len() / k;
        let mut store = |r0: usize, o: usize, tile: &[[i32; 4]]| {
            for (r, tile) in tile.iter().enumerate() {
                let at = (r0 + r) * outputs + o;
                dots[at..at + 4].copy_from_slice(tile);
            }
        };
        for (four, o) in w.chunks_exact(4 * k).zip((0..).step_by(4)) {
            let mut r = 0;
            while r + 4 <= rows {
                // SAFETY: this function's features; whole rows of `k`.
                store(r, o, &unsafe { tile_vnni::<4>(&a[r * k..], four, k) });
                r += 4;
            }
            // SAFETY: as above.
            match rows - r {
                1 => store(r, o, &unsafe { tile_vnni::<1>(&a[r * k..], four, k) }),
                2 => store(r, o, &unsafe { tile_vnni::<2>(&a[r * k..], four, k) }),
                3 => store(r, o, &unsafe { tile_vnni::<3>(&a[r * k..], four, k) }),
                _ => {}
            }
        }
    }

    /// Σ (a + 128)·w for `R` activation rows (`a`, already offset by 128) against
    /// four weight rows (`w`), rows of `k` bytes, a multiple of 64. VNNI multiplies
    /// unsigned bytes by signed ones; the caller takes 128·Σw back off.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_vnni<const R: usize>(a: &[i8], w: &[i8], k: usize) -> [[i32; 4]; R] {
        assert!(a.len() >= R * k && w.len() >= 4 * k && k.is_multiple_of(64));
        let load = |bytes: &[i8], at: usize| {
            // SAFETY: every `at` below is a 64-byte step inside a whole row of
            // `bytes` (asserted above); an unaligned load.
            unsafe { _mm512_loadu_si512(bytes.as_ptr().add(at).cast()) }
        };
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        let mut at = 0;
        while at < k {
            let ws = [
                load(w, at),
                load(w, k + at),
                load(w, 2 * k + at),
                load(w, 3 * k + at),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = load(a, r * k + at);
                for (acc, &wv) in acc.iter_mut().zip(&ws) {
                    *acc = _mm512_dpbusd_epi32(*acc, av, wv);
                }
            }
            at += 64;
        }
        let mut out = [[0i32; 4]; R];
        for (out, acc) in out.iter_mut().zip(&acc) {
            for (o, &acc) in out.iter_mut().zip(acc) {
                *o = _mm512_reduce_add_epi32(acc);
            }
        }
        out
    }

    /// Σ a·w for each row of `w` over 32-byte steps: |w| against a with w's sign,
    /// in 16-bit pairs (no pair reaches 2·127·127 = 32,258, inside i16), then
    /// 32-bit sums.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dots_avx2(a: &[i8], w: &[i8], dots: &mut [i32]) {
        let k = a.len();
        let ones = _mm256_set1_epi16(1);
        for (o, row) in dots.iter_mut().zip(w.chunks_exact(k)) {
            let mut acc = _mm256_setzero_si256();
            for (a, w) in a.chunks_exact(32).zip(row.chunks_exact(32)) {
                // SAFETY: each chunk is 32 bytes; unaligned loads.
                let (va, vw) = unsafe {
                    (
                        _mm256_loadu_si256(a.as_ptr().cast()),
                        _mm256_loadu_si256(w.as_ptr().cast()),
                    )
                };
                let pairs =
                    _mm256_maddubs_epi16(_mm256_sign_epi8(vw, vw), _mm256_sign_epi8(va, vw));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
            }
            let sum = _mm_add_epi32(
                _mm256_castsi256_si128(acc),
                _mm256_extracti128_si256(acc, 1),
            );
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b01_00_11_10));
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b10_11_00_01));
            *o = _mm_cvtsi128_si32(sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repeatable spread of values in ±1, with every 97th forty times larger
    /// when `spikes` (activations' outliers).
    fn values(n: usize, seed: u32, spikes: bool) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let v = (state % 2001) as f32 / 1000.0 - 1.0;
                if spikes && i % 97 == 5 { v * 40.0 } else { v }
            })
            .collect()
    }

    /// Every kernel this CPU can run gives the same integers, so the same outputs,
    /// as the portable one; and all stay near the f32 product.
    #[test]
    fn every_kernel_agrees_with_the_portable_one_and_the_float_product() {
        for (outputs, inputs, rows) in [
            (8, 64, 1),
            (12, 384, 3),
            (16, 1536, 9),
            (4, 384, 20),
            (6, 64, 3),
            (10, 128, 9),
        ] {
            let weights = values(outputs * inputs, 7, false);
            let bias = values(outputs, 11, false);
            let x = values(rows * inputs, 13, true);
            let portable = Int8Linear::new(&weights, bias.clone(), Isa::Portable).forward(&x, rows);
            let float = FloatLinear::new(weights.clone(), bias.clone()).forward(&x, rows);
            let mut kernels = vec![Isa::Portable];
            let detected = Isa::detect();
            if detected != Isa::Portable {
                kernels.push(Isa::Avx2);
            }
            if detected == Isa::Vnni {
                kernels.push(Isa::Vnni);
            }
            for isa in kernels {
                let y = Int8Linear::new(&weights, bias.clone(), isa).forward(&x, rows);
                for (a, b) in y.iter().zip(&portable) {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{isa:?}: {a} != {b}"
                    );
                }
            }
            let error: f32 = portable
                .iter()
                .zip(&float)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / float.iter().map(|b| b.abs()).sum::<f32>();
            assert!(error < 0.02, "{outputs}×{inputs}: relative error {error}");
        }
    }
}
