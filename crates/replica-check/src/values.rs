//! Reading a tensor's values in place: widened to f64 a chunk at a time, or as
//! exact integers, and N-d indices for reports.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Storage};

/// A tensor's values in row-major order, read in place from CPU memory.
/// Elements are widened to f64 a chunk at a time, so comparing large tensors
/// allocates nothing in proportion to their size.
pub(crate) struct CpuValues<'a> {
    storage: &'a CpuStorage,
    start: usize,
    len: usize,
}

impl<'a> CpuValues<'a> {
    /// Views a contiguous CPU tensor's storage.
    pub(crate) fn new(storage: &'a Storage, layout: &candle_core::Layout, len: usize) -> candle_core::Result<Self> {
        let Storage::Cpu(storage) = storage else {
            candle_core::bail!("tensor is not on the CPU after moving it there")
        };
        let values = Self {
            storage,
            start: layout.start_offset(),
            len,
        };
        // Fail early on dtypes that cannot be widened, rather than per chunk.
        values.read(0, &mut [0.0; 0])?;
        Ok(values)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Calls `each` on every element, widened, a chunk at a time.
    pub(crate) fn for_each_chunk(&self, each: &mut dyn FnMut(&[f64])) {
        const CHUNK: usize = 1024;
        let mut buf = [0.0f64; CHUNK];
        let mut at = 0;
        while at < self.len {
            let n = CHUNK.min(self.len - at);
            // `new` read once already: a dtype error cannot appear here.
            if self.read(at, &mut buf[..n]).is_err() {
                return;
            }
            each(&buf[..n]);
            at += n;
        }
    }

    /// Widens elements `at..at + out.len()` into `out`.
    pub(crate) fn read(&self, at: usize, out: &mut [f64]) -> candle_core::Result<()> {
        let range = self.start + at..self.start + at + out.len();
        fn widen<T: Copy>(src: &[T], out: &mut [f64], f: impl Fn(T) -> f64) {
            out.iter_mut().zip(src).for_each(|(o, &v)| *o = f(v));
        }
        match &self.storage {
            CpuStorage::F32(v) => widen(&v[range], out, f64::from),
            CpuStorage::F64(v) => out.copy_from_slice(&v[range]),
            CpuStorage::F16(v) => widen(&v[range], out, f64::from),
            CpuStorage::BF16(v) => widen(&v[range], out, f64::from),
            CpuStorage::U8(v) => widen(&v[range], out, f64::from),
            CpuStorage::U32(v) => widen(&v[range], out, f64::from),
            CpuStorage::I16(v) => widen(&v[range], out, f64::from),
            CpuStorage::I32(v) => widen(&v[range], out, f64::from),
            CpuStorage::I64(v) => widen(&v[range], out, |x| x as f64),
            other => candle_core::bail!("cannot compare values of dtype {:?}", other.dtype()),
        }
        Ok(())
    }
}

pub(crate) fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

pub(crate) fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        *slot = flat % dim;
        flat /= dim;
    }
    index
}

/// A contiguous CPU integer tensor's elements.
#[derive(Clone, Copy)]
pub(crate) enum Ints<'a> {
    U8(&'a [u8]),
    U32(&'a [u32]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
}

impl<'a> Ints<'a> {
    pub(crate) fn new(storage: &'a Storage, start: usize, len: usize) -> Option<Self> {
        let range = start..start + len;
        Some(match storage {
            Storage::Cpu(CpuStorage::U8(v)) => Ints::U8(&v[range]),
            Storage::Cpu(CpuStorage::U32(v)) => Ints::U32(&v[range]),
            Storage::Cpu(CpuStorage::I16(v)) => Ints::I16(&v[range]),
            Storage::Cpu(CpuStorage::I32(v)) => Ints::I32(&v[range]),
            Storage::Cpu(CpuStorage::I64(v)) => Ints::I64(&v[range]),
            _ => return None,
        })
    }

    pub(crate) fn get(self, i: usize) -> i128 {
        match self {
            Ints::U8(v) => v[i].into(),
            Ints::U32(v) => v[i].into(),
            Ints::I16(v) => v[i].into(),
            Ints::I32(v) => v[i].into(),
            Ints::I64(v) => v[i].into(),
        }
    }
}

pub(crate) fn format_index(index: &[usize]) -> String {
    let parts: Vec<String> = index.iter().map(usize::to_string).collect();
    if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    }
}

/// Squares of magnitudes outside `[2^-LIMIT, 2^LIMIT]` may underflow or overflow
/// (or sum to infinity); within it they are safe for any element count.
const SAFE_EXPONENT: i32 = 400;

/// Whether `m`, a nonnegative magnitude, is too large or small to square safely.
pub(crate) fn out_of_range(m: f64) -> bool {
    let limit = 2f64.powi(SAFE_EXPONENT);
    m != 0.0 && !(1.0 / limit..=limit).contains(&m)
}

/// A power of two that brings the finite magnitude `m` near 1 (1 for 0).
pub(crate) fn unit_scale(m: f64) -> f64 {
    if m == 0.0 || !m.is_finite() {
        return 1.0;
    }
    2f64.powi((-m.log2().floor() as i32).clamp(-1000, 1000))
}
