//! Dot products between GGUF weight blocks (Q4_0, Q4_1, Q8_0) and activations
//! quantised to 8 bits, with AVX2 (and AVX-VNNI where present) chosen at run time,
//! and portable versions that define the arithmetic.
//!
//! candle has no SIMD kernel for Q4_1 — the type small GGUF chat models ship in —
//! and reads each block's f16 scales through a function call; these kernels read
//! the blocks as stored, so a Q4_1 model streams 40 % fewer bytes per token than
//! one re-quantised to Q8_0.

use half::f16;

/// Values per block, for every type here.
pub const BLOCK: usize = 32;

/// Q4_0: `value = (nibble - 8) · d`. Element `j < 16` is the low nibble of `qs[j]`,
/// element `j + 16` its high nibble.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Q4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

/// Q4_1: `value = nibble · d + m`, nibbles laid out as in [`Q4_0`].
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Q4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// Q8_0: `value = q · d`.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Q8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<Q4_0>() == 18);
const _: () = assert!(std::mem::size_of::<Q4_1>() == 20);
const _: () = assert!(std::mem::size_of::<Q8_0>() == 34);

/// 32 activations as `q · d`; `sum` is `d · Σq`, which the offset terms of Q4_0
/// and Q4_1 need.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Act {
    pub d: f32,
    pub sum: f32,
    pub qs: [i8; 32],
}

/// 32 values as `q · d`, `d = max|x| / 127`.
fn quantize_block(chunk: &[f32]) -> (f32, [i8; 32]) {
    let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut qs = [0i8; 32];
    for (q, v) in qs.iter_mut().zip(chunk) {
        *q = (v * inv).round() as i8;
    }
    (d, qs)
}

/// Quantises activations `x` (a multiple of 32 long) into `out`.
pub fn quantize(x: &[f32], out: &mut [Act]) {
    for (chunk, block) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let (d, qs) = quantize_block(chunk);
        let total: i32 = qs.iter().map(|&q| i32::from(q)).sum();
        *block = Act {
            d,
            sum: d * total as f32,
            qs,
        };
    }
}

/// Quantises weights `x` (a multiple of 32 long) to Q8_0 blocks.
pub fn quantize_q8_0(x: &[f32]) -> Box<[Q8_0]> {
    x.chunks_exact(BLOCK)
        .map(|chunk| {
            let (d, qs) = quantize_block(chunk);
            Q8_0 {
                d: f16::from_f32(d),
                qs,
            }
        })
        .collect()
}

/// The SIMD level this CPU offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
}

pub fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        if avx2 && std::arch::is_x86_feature_detected!("avxvnni") {
            return Level::AvxVnni;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Portable
}

/// One weight type the kernels here handle.
pub trait Block: Copy + Send + Sync + 'static {
    /// The dot products of one row of blocks with `N` rows of activations: each
    /// weight block is unpacked once for all of them.
    fn dots<const N: usize>(level: Level, w: &[Self], a: [&[Act]; N]) -> [f32; N];
    /// One block's dot product with 32 activations, which defines the arithmetic
    /// the SIMD kernels reproduce.
    fn dot_block(&self, a: &Act) -> f32;
    /// Writes the block's 32 values.
    fn dequantize(&self, out: &mut [f32]);

    /// The portable dot product of one row.
    fn dot_portable(w: &[Self], a: &[Act]) -> f32 {
        w.iter().zip(a).map(|(w, a)| w.dot_block(a)).sum()
    }
}

/// Dispatches `dots` to a level's kernel, or to the portable loop.
macro_rules! dots_by_level {
    ($level:expr, $w:expr, $a:expr, $avx2:ident, $vnni:ident) => {
        match $level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `level()` saw the CPU features these functions enable.
            Level::Avx2 => unsafe { x86::$avx2($w, $a) },
            #[cfg(target_arch = "x86_64")]
            Level::AvxVnni => unsafe { x86::$vnni($w, $a) },
            Level::Portable => $a.map(|a| Self::dot_portable($w, a)),
        }
    };
}

impl Block for Q4_0 {
    fn dots<const N: usize>(level: Level, w: &[Self], a: [&[Act]; N]) -> [f32; N] {
        dots_by_level!(level, w, a, q4_0_avx2, q4_0_vnni)
    }

    fn dot_block(&self, a: &Act) -> f32 {
        let dot = nibble_dot(&self.qs, a);
        self.d.to_f32() * (a.d * dot as f32 - 8.0 * a.sum)
    }

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (j, v) in out.iter_mut().enumerate().take(BLOCK) {
            *v = (nibble(&self.qs, j) - 8) as f32 * d;
        }
    }
}

impl Block for Q4_1 {
    fn dots<const N: usize>(level: Level, w: &[Self], a: [&[Act]; N]) -> [f32; N] {
        dots_by_level!(level, w, a, q4_1_avx2, q4_1_vnni)
    }

    fn dot_block(&self, a: &Act) -> f32 {
        let dot = nibble_dot(&self.qs, a);
        self.d.to_f32() * a.d * dot as f32 + self.m.to_f32() * a.sum
    }

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, v) in out.iter_mut().enumerate().take(BLOCK) {
            *v = nibble(&self.qs, j) as f32 * d + m;
        }
    }
}

impl Block for Q8_0 {
    fn dots<const N: usize>(level: Level, w: &[Self], a: [&[Act]; N]) -> [f32; N] {
        dots_by_level!(level, w, a, q8_0_avx2, q8_0_vnni)
    }

    fn dot_block(&self, a: &Act) -> f32 {
        let dot: i32 = self
            .qs
            .iter()
            .zip(&a.qs)
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum();
        self.d.to_f32() * a.d * dot as f32
    }

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (v, q) in out.iter_mut().zip(&self.qs) {
            *v = f32::from(*q) * d;
        }
    }
}

/// Σ nibble · activation over a block, nibbles unsigned (0..15).
fn nibble_dot(qs: &[u8; 16], a: &Act) -> i32 {
    (0..BLOCK).map(|j| nibble(qs, j) * i32::from(a.qs[j])).sum()
}

fn nibble(qs: &[u8; 16], j: usize) -> i32 {
    if j < 16 {
        i32::from(qs[j] & 0x0F)
    } else {
        i32::from(qs[j - 16] >> 4)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Four rows at a time; `kernels!` instantiates each loop for AVX2 (`maddubs`
    //! then `madd`) and for AVX-VNNI (one `dpbusd`), so each level's intrinsics
    //! inline into its own function.

    use std::arch::x86_64::*;

    use super::{Act, Q4_0, Q4_1, Q8_0};

    /// Two f16s (low half first) as `[a, b, 0, 0]`, inline (F16C); `half`'s
    /// conversion is an out-of-line call.
    macro_rules! f16x2 {
        ($bits:expr) => {
            _mm_cvtph_ps(_mm_cvtsi32_si128($bits as i32))
        };
    }

    /// 16 bytes of nibbles → 32 bytes 0..15: low nibbles first, then high ones.
    macro_rules! unpack_nibbles {
        ($qs:expr) => {{
            let packed = _mm_loadu_si128($qs.as_ptr() as *const __m128i);
            let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
        }};
    }

    macro_rules! horizontal_sum {
        ($v:expr) => {{
            let v = $v;
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }};
    }

    /// Σ u8 × i8 over 32 lanes, as 8 i32 sums.
    macro_rules! dot_avx2 {
        ($u:expr, $s:expr) => {
            _mm256_madd_epi16(_mm256_maddubs_epi16($u, $s), _mm256_set1_epi16(1))
        };
    }
    macro_rules! dot_vnni {
        ($u:expr, $s:expr) => {
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), $u, $s)
        };
    }

    /// One kernel. `$unpack` reads a weight block once; `$block` combines it with
    /// one activation block into the integer sums to accumulate and a pair
    /// `[scale, offset]` (lane 0 scales the sums; lane 1 adds up the offset terms).
    /// Two accumulators per activation row break the dependency between
    /// consecutive blocks.
    macro_rules! kernel {
        ($features:literal, $name:ident, $ty:ty, |$w:ident| $unpack:expr,
         |$a:ident, $q:ident| $block:expr, $finish:expr) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const N: usize>(w: &[$ty], a: [&[Act]; N]) -> [f32; N] {
                assert!(a.iter().all(|a| a.len() >= w.len()));
                // SAFETY: activations are at least as long as the row (checked
                // above), and every load reads within one block.
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); 2]; N];
                    let mut pair = [[_mm_setzero_ps(); 2]; N];
                    for (i, $w) in w.iter().enumerate() {
                        let $q = $unpack;
                        for t in 0..N {
                            let $a = a[t].get_unchecked(i);
                            let (so, sums): (__m128, __m256) = $block;
                            let k = i & 1;
                            acc[t][k] = _mm256_fmadd_ps(_mm256_broadcastss_ps(so), sums, acc[t][k]);
                            pair[t][k] = _mm_add_ps(pair[t][k], so);
                        }
                    }
                    let finish: fn(f32, f32) -> f32 = $finish;
                    std::array::from_fn(|t| {
                        let sum = horizontal_sum!(_mm256_add_ps(acc[t][0], acc[t][1]));
                        let pair = _mm_add_ps(pair[t][0], pair[t][1]);
                        finish(sum, _mm_cvtss_f32(_mm_movehdup_ps(pair)))
                    })
                }
            }
        };
    }

    /// An activation block's `[d, sum]`.
    macro_rules! act_pair {
        ($a:expr) => {
            _mm_castsi128_ps(_mm_loadl_epi64(&$a.d as *const f32 as *const __m128i))
        };
    }

    macro_rules! load {
        ($qs:expr) => {
            _mm256_loadu_si256($qs.as_ptr() as *const __m256i)
        };
    }

    macro_rules! kernels {
        ($features:literal, $dot:ident, $q4_0:ident, $q4_1:ident, $q8_0:ident) => {
            // [d, d] · [a.d, a.sum]
            kernel!(
                $features,
                $q4_0,
                Q4_0,
                |w| (
                    _mm_broadcastss_ps(f16x2!(w.d.to_bits() as u32)),
                    unpack_nibbles!(w.qs)
                ),
                |a, q| (
                    _mm_mul_ps(q.0, act_pair!(a)),
                    _mm256_cvtepi32_ps($dot!(q.1, load!(a.qs)))
                ),
                |sum, offset| sum - 8.0 * offset
            );
            // [d, m] · [a.d, a.sum]
            kernel!(
                $features,
                $q4_1,
                Q4_1,
                |w| (
                    f16x2!(w.d.to_bits() as u32 | (w.m.to_bits() as u32) << 16),
                    unpack_nibbles!(w.qs)
                ),
                |a, q| (
                    _mm_mul_ps(q.0, act_pair!(a)),
                    _mm256_cvtepi32_ps($dot!(q.1, load!(a.qs)))
                ),
                |sum, offset| sum + offset
            );
            // [d, 0] · [a.d, a.sum]; i8 × i8 as u8 × i8: |q| times x with q's sign.
            kernel!(
                $features,
                $q8_0,
                Q8_0,
                |w| {
                    let q = load!(w.qs);
                    (f16x2!(w.d.to_bits() as u32), _mm256_sign_epi8(q, q), q)
                },
                |a, q| {
                    let sums = $dot!(q.1, _mm256_sign_epi8(load!(a.qs), q.2));
                    (_mm_mul_ps(q.0, act_pair!(a)), _mm256_cvtepi32_ps(sums))
                },
                |sum, _| sum
            );
        };
    }

    kernels!("avx2,fma,f16c", dot_avx2, q4_0_avx2, q4_1_avx2, q8_0_avx2);
    kernels!(
        "avx2,fma,f16c,avxvnni",
        dot_vnni,
        q4_0_vnni,
        q4_1_vnni,
        q8_0_vnni
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn acts(x: &[f32]) -> Vec<Act> {
        let mut a = vec![Act::default(); x.len() / BLOCK];
        quantize(x, &mut a);
        a
    }

    fn levels() -> Vec<Level> {
        let mut all = vec![Level::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let best = level();
            if best != Level::Portable {
                all.push(Level::Avx2);
            }
            if best == Level::AvxVnni {
                all.push(Level::AvxVnni);
            }
        }
        all
    }

    /// Every level agrees with the dequantised weights dotted in f32.
    fn agrees<B: Block>(blocks: &[B]) {
        let n = blocks.len() * BLOCK;
        let x = sample(n, 7);
        let a = acts(&x);
        let mut w = vec![0f32; n];
        for (b, out) in blocks.iter().zip(w.chunks_mut(BLOCK)) {
            b.dequantize(out);
        }
        let exact: f32 = w.iter().zip(&x).map(|(w, x)| w * x).sum();
        let scale: f32 = w.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum();
        for level in levels() {
            let [got] = B::dots(level, blocks, [&a]);
            assert!(
                (got - exact).abs() <= 0.01 * scale,
                "{level:?}: {got} vs {exact} (scale {scale})"
            );
        }
        let portable = B::dot_portable(blocks, &a);
        for level in levels() {
            let [got] = B::dots(level, blocks, [&a]);
            assert!(
                (got - portable).abs() <= 1e-4 * scale,
                "{level:?}: {got} vs {portable}"
            );
        }
    }

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        sample(n, seed)
            .iter()
            .map(|v| ((v + 1.0) * 127.9) as u8)
            .collect()
    }

    #[test]
    fn q4_0_levels_agree() {
        let raw = bytes(16 * 18, 1);
        let blocks: Vec<Q4_0> = raw
            .chunks(16)
            .enumerate()
            .map(|(i, qs)| Q4_0 {
                d: f16::from_f32(0.01 + i as f32 * 0.001),
                qs: qs.try_into().unwrap(),
            })
            .collect();
        agrees(&blocks);
    }

    #[test]
    fn q4_1_levels_agree() {
        let raw = bytes(16 * 18, 2);
        let blocks: Vec<Q4_1> = raw
            .chunks(16)
            .enumerate()
            .map(|(i, qs)| Q4_1 {
                d: f16::from_f32(0.02 - i as f32 * 0.0005),
                m: f16::from_f32(-0.1 + i as f32 * 0.01),
                qs: qs.try_into().unwrap(),
            })
            .collect();
        agrees(&blocks);
    }

    #[test]
    fn q8_0_levels_agree_including_minus_128() {
        let raw = bytes(32 * 18, 3);
        let blocks: Vec<Q8_0> = raw
            .chunks(32)
            .enumerate()
            .map(|(i, qs)| {
                let mut q = [0i8; 32];
                for (o, b) in q.iter_mut().zip(qs) {
                    *o = *b as i8;
                }
                q[0] = -128;
                Q8_0 {
                    d: f16::from_f32(0.003 * (i + 1) as f32),
                    qs: q,
                }
            })
            .collect();
        agrees(&blocks);
    }
}
