//! A quantised weight matrix as the GGUF stores it, and its product with a batch of
//! activation rows. Q4_0, Q4_1 and Q8_0 run on this crate's kernels; every other
//! GGUF type runs on candle's (`GgmlType::vec_dot`), or is re-quantised to Q8_0 at
//! load when candle has no SIMD kernel for it.

use std::ops::Range;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::kernels::{self, Act, BLOCK, Block, Level, Q4_0, Q4_1, Q8_0};
use super::parallel;
use crate::EngineError;

/// Activation rows quantised for one kind of weight.
pub enum Activations {
    /// For this crate's kernels: `blocks` per row.
    Native { blocks: usize, data: Vec<Act> },
    /// For a candle type: raw `VecDotType` blocks, `stride` bytes per row.
    Ggml { stride: usize, data: Vec<u64> },
}

/// One weight matrix: `rows` outputs, each a dot product over `cols` inputs.
pub trait Matrix: Send + Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// Quantises `tokens` rows of `x` (each `cols` long) for this matrix.
    fn activations(&self, x: &[f32], tokens: usize) -> Activations;
    /// `out[t * rows + r] = row r · token t`, for `r` in `rows` and every token.
    /// Writes nothing else.
    fn product(&self, act: &Activations, rows: Range<usize>, out: &parallel::Out);
    /// Row `row`, dequantised (an embedding lookup).
    fn row(&self, row: usize, out: &mut [f32]);
    /// The activation format it reads: `None` for this crate's kernels, else the
    /// candle block type.
    fn input(&self) -> Option<GgmlDType>;
}

/// `out = w · x` for `tokens` rows of `x`, split across the compute threads.
pub fn matmul(w: &dyn Matrix, x: &[f32], tokens: usize, out: &mut [f32]) {
    let act = w.activations(x, tokens);
    matmul_prepared(w, &act, out);
}

/// As [`matmul`], with activations already quantised (several matrices that read
/// the same input share them).
pub fn matmul_prepared(w: &dyn Matrix, act: &Activations, out: &mut [f32]) {
    let rows = w.rows();
    let shared = parallel::Out::new(out);
    // Shares of whole cache lines of output (16 f32), at least 64 rows each.
    parallel::split(rows, 64, 16, |range| w.product(act, range, &shared));
}

/// Whether two matrices read the same activations.
pub fn same_input(a: &dyn Matrix, b: &dyn Matrix) -> bool {
    a.cols() == b.cols() && a.input() == b.input()
}

/// Loads a GGUF tensor as a matrix. With `requantize`, types candle has no SIMD
/// kernel for (Q5_0, Q5_1, F16, BF16, F32) become Q8_0.
pub fn from_qtensor(t: &QTensor, requantize: bool) -> Result<Box<dyn Matrix>, EngineError> {
    let (rows, cols) = t
        .shape()
        .dims2()
        .map_err(|e| EngineError::Load(format!("a weight is not a matrix: {e}")))?;
    if !cols.is_multiple_of(BLOCK) {
        return Err(EngineError::Load(format!(
            "rows of {cols} values are not whole blocks"
        )));
    }
    let bytes = t.data().map_err(|e| EngineError::Load(e.to_string()))?;
    let level = kernels::level();
    let matrix: Box<dyn Matrix> = match t.dtype() {
        GgmlDType::Q4_0 => Box::new(Native::<Q4_0>::new(rows, cols, &bytes, level)?),
        GgmlDType::Q4_1 => Box::new(Native::<Q4_1>::new(rows, cols, &bytes, level)?),
        GgmlDType::Q8_0 => Box::new(Native::<Q8_0>::new(rows, cols, &bytes, level)?),
        GgmlDType::Q2K => Box::new(Ggml::<BlockQ2K>::new(rows, cols, &bytes)?),
        GgmlDType::Q3K => Box::new(Ggml::<BlockQ3K>::new(rows, cols, &bytes)?),
        GgmlDType::Q4K => Box::new(Ggml::<BlockQ4K>::new(rows, cols, &bytes)?),
        GgmlDType::Q5K => Box::new(Ggml::<BlockQ5K>::new(rows, cols, &bytes)?),
        GgmlDType::Q6K => Box::new(Ggml::<BlockQ6K>::new(rows, cols, &bytes)?),
        other if requantize => {
            let values = t
                .dequantize(&candle_core::Device::Cpu)
                .and_then(|v| v.flatten_all())
                .and_then(|v| v.to_vec1::<f32>())
                .map_err(|e| EngineError::Load(e.to_string()))?;
            tracing::debug!(dtype = ?other, rows, cols, "weights re-quantised to Q8_0");
            Box::new(Native::<Q8_0> {
                rows,
                cols,
                blocks: kernels::quantize_q8_0(&values),
                level,
            })
        }
        GgmlDType::Q5_0 => Box::new(Ggml::<BlockQ5_0>::new(rows, cols, &bytes)?),
        GgmlDType::Q5_1 => Box::new(Ggml::<BlockQ5_1>::new(rows, cols, &bytes)?),
        GgmlDType::F16 => Box::new(Ggml::<f16>::new(rows, cols, &bytes)?),
        GgmlDType::F32 => Box::new(Ggml::<f32>::new(rows, cols, &bytes)?),
        other => {
            return Err(EngineError::Load(format!(
                "weights of type {other:?} are not supported; re-quantise the file"
            )));
        }
    };
    Ok(matrix)
}

/// Copies raw little-endian blocks into typed storage.
fn typed<T: Clone>(bytes: &[u8], zero: T, count: usize) -> Result<Box<[T]>, EngineError> {
    let size = std::mem::size_of::<T>();
    if bytes.len() != count * size {
        return Err(EngineError::Load(format!(
            "a weight holds {} bytes; its shape needs {}",
            bytes.len(),
            count * size
        )));
    }
    let mut out = vec![zero; count].into_boxed_slice();
    // SAFETY: `T` is a plain `repr(C)` block of integers and f16s, valid for any
    // bytes, and `out` holds exactly `bytes.len()` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), bytes.len());
    }
    Ok(out)
}

// === impl Native ===

/// Q4_0, Q4_1 or Q8_0 weights on this crate's kernels.
struct Native<B: Block> {
    rows: usize,
    cols: usize,
    blocks: Box<[B]>,
    level: Level,
}

impl<B: Block> Native<B> {
    fn new(rows: usize, cols: usize, bytes: &[u8], level: Level) -> Result<Self, EngineError> {
        // SAFETY: every `Block` type is plain old data; zeroed bytes are a valid value.
        let zero: B = unsafe { std::mem::zeroed() };
        Ok(Native {
            rows,
            cols,
            blocks: typed(bytes, zero, rows * cols / BLOCK)?,
            level,
        })
    }
}

impl<B: Block> Matrix for Native<B> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn activations(&self, x: &[f32], tokens: usize) -> Activations {
        let blocks = self.cols / BLOCK;
        let mut data = vec![Act::default(); tokens * blocks];
        kernels::quantize(&x[..tokens * self.cols], &mut data);
        Activations::Native { blocks, data }
    }

    fn product(&self, act: &Activations, rows: Range<usize>, out: &parallel::Out) {
        let Activations::Native { blocks, data } = act else {
            unreachable!("activations are made by the matrix that reads them")
        };
        let tokens = data.len() / blocks;
        let act = |t: usize| &data[t * blocks..(t + 1) * blocks];
        // Row by row, so the weights stream through once; four tokens at a time
        // (a prompt), so each weight block is unpacked once for all four.
        for r in rows {
            let w = &self.blocks[r * blocks..(r + 1) * blocks];
            let mut t = 0;
            while t + 4 <= tokens {
                let dots = B::dots(self.level, w, [act(t), act(t + 1), act(t + 2), act(t + 3)]);
                for (k, dot) in dots.into_iter().enumerate() {
                    out.set((t + k) * self.rows + r, dot);
                }
                t += 4;
            }
            for t in t..tokens {
                let [dot] = B::dots(self.level, w, [act(t)]);
                out.set(t * self.rows + r, dot);
            }
        }
    }

    fn row(&self, row: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        for (b, chunk) in self.blocks[row * blocks..(row + 1) * blocks]
            .iter()
            .zip(out.chunks_mut(BLOCK))
        {
            b.dequantize(chunk);
        }
    }

    fn input(&self) -> Option<GgmlDType> {
        None
    }
}

// === impl Ggml ===

/// Any other GGUF type, on candle's kernels.
struct Ggml<T: GgmlType> {
    rows: usize,
    cols: usize,
    blocks: Box<[T]>,
}

impl<T: GgmlType + 'static> Ggml<T> {
    fn new(rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, EngineError> {
        if !cols.is_multiple_of(T::BLCK_SIZE) {
            return Err(EngineError::Load(format!(
                "rows of {cols} values are not whole {:?} blocks",
                T::DTYPE
            )));
        }
        Ok(Ggml {
            rows,
            cols,
            blocks: typed(bytes, T::zeros(), rows * cols / T::BLCK_SIZE)?,
        })
    }

    fn blocks_per_row(&self) -> usize {
        self.cols / T::BLCK_SIZE
    }
}

impl<T: GgmlType + 'static> Matrix for Ggml<T> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn activations(&self, x: &[f32], tokens: usize) -> Activations {
        let per_row = self.cols / T::VecDotType::BLCK_SIZE;
        let stride = per_row * std::mem::size_of::<T::VecDotType>();
        let mut data = vec![0u64; (tokens * stride).div_ceil(8)];
        for t in 0..tokens {
            let dst = vec_dot_blocks_mut::<T>(&mut data, t * per_row, per_row);
            T::VecDotType::from_float(&x[t * self.cols..(t + 1) * self.cols], dst);
        }
        Activations::Ggml { stride, data }
    }

    fn product(&self, act: &Activations, rows: Range<usize>, out: &parallel::Out) {
        let Activations::Ggml { stride, data } = act else {
            unreachable!("activations are made by the matrix that reads them")
        };
        let per_row = self.cols / T::VecDotType::BLCK_SIZE;
        let tokens = if *stride == 0 {
            0
        } else {
            data.len() * 8 / stride
        };
        let blocks = self.blocks_per_row();
        for r in rows {
            let w = &self.blocks[r * blocks..(r + 1) * blocks];
            for t in 0..tokens {
                let a = vec_dot_blocks::<T>(data, t * per_row, per_row);
                out.set(t * self.rows + r, T::vec_dot(self.cols, w, a));
            }
        }
    }

    fn row(&self, row: usize, out: &mut [f32]) {
        let blocks = self.blocks_per_row();
        T::to_float(
            &self.blocks[row * blocks..(row + 1) * blocks],
            &mut out[..self.cols],
        );
    }

    fn input(&self) -> Option<GgmlDType> {
        Some(T::VecDotType::DTYPE)
    }
}

fn vec_dot_blocks<T: GgmlType>(data: &[u64], start: usize, len: usize) -> &[T::VecDotType] {
    let size = std::mem::size_of::<T::VecDotType>();
    assert!((start + len) * size <= data.len() * 8);
    assert!(std::mem::align_of::<T::VecDotType>() <= 8);
    // SAFETY: in bounds (checked above), aligned (u64 storage, and block sizes are
    // multiples of their alignment), and the blocks are plain old data.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>().add(start * size).cast(), len) }
}

fn vec_dot_blocks_mut<T: GgmlType>(
    data: &mut [u64],
    start: usize,
    len: usize,
) -> &mut [T::VecDotType] {
    let size = std::mem::size_of::<T::VecDotType>();
    assert!((start + len) * size <= data.len() * 8);
    assert!(std::mem::align_of::<T::VecDotType>() <= 8);
    // SAFETY: as in `vec_dot_blocks`, and `data` is borrowed mutably.
    unsafe {
        std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>().add(start * size).cast(), len)
    }
}
