//! Elementwise comparison of two tensors, with the statistics a reader needs to
//! tell where and by how much they differ.

use std::fmt;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Storage, Tensor};
use serde::{Deserialize, Serialize};

use crate::noise::{noise, Noise, Rule};
use crate::{ExactIntegers, Tolerance};

/// One element of the compared pair, located by its N-d index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Element {
    pub index: Vec<usize>,
    #[serde(with = "crate::float_json")]
    pub actual: f64,
    #[serde(with = "crate::float_json")]
    pub expected: f64,
}

/// The greatest value of a difference measure and the element where it occurs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extreme {
    #[serde(with = "crate::float_json")]
    pub value: f64,
    pub at: Element,
}

/// Counts of non-finite values on one side of a comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonFinite {
    pub nan: usize,
    pub pos_inf: usize,
    pub neg_inf: usize,
}

impl NonFinite {
    pub fn total(&self) -> usize {
        self.nan + self.pos_inf + self.neg_inf
    }

    fn count(&mut self, value: f64) {
        if value.is_nan() {
            self.nan += 1;
        } else if value == f64::INFINITY {
            self.pos_inf += 1;
        } else if value == f64::NEG_INFINITY {
            self.neg_inf += 1;
        }
    }
}

/// The verdict on `actual` against the reference `expected`.
///
/// Statistics are computed in f64. The difference measures (greatest absolute and
/// relative difference, mean absolute error, RMS error, cosine similarity) cover
/// the elements that are finite on both sides; the mismatch count covers all.
/// Integer tensors are compared exactly, as integers, and
/// [`integers`](Self::integers) holds their worst values unrounded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub actual_shape: Vec<usize>,
    pub expected_shape: Vec<usize>,
    pub actual_dtype: String,
    pub expected_dtype: String,
    pub tolerance: Tolerance,
    /// Why the pair fails before any element is looked at (shape or dtype disagreement).
    pub incompatible: Option<String>,
    pub elements: usize,
    pub mismatched: usize,
    /// The first failing element in row-major order.
    pub first_mismatch: Option<Element>,
    pub max_abs_diff: Option<Extreme>,
    pub max_rel_diff: Option<Extreme>,
    #[serde(with = "crate::float_json")]
    pub mean_abs_error: f64,
    #[serde(with = "crate::float_json")]
    pub rms_error: f64,
    /// Cosine similarity of the two tensors as flat vectors; 1 when both are all zero.
    pub cosine: Option<f64>,
    pub actual_nonfinite: NonFinite,
    pub expected_nonfinite: NonFinite,
    /// The port's error against the reference's float64 shadow, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<Noise>,
    /// Whether the noise multiple decides [`passed`](Self::passed) (else the tolerance does).
    #[serde(default)]
    pub decided_by_noise: bool,
    /// Integer tensors only: the worst and first failing values, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integers: Option<ExactIntegers>,
}

/// Compares `actual` against the reference `expected` under `tolerance`.
///
/// Never fails: disagreeing shapes or dtypes, or dtypes that cannot be read as
/// numbers, make a failed [`Comparison`] that says why.
pub fn compare(actual: &Tensor, expected: &Tensor, tolerance: Tolerance) -> Comparison {
    let mut comparison = Comparison {
        actual_shape: actual.dims().to_vec(),
        expected_shape: expected.dims().to_vec(),
        actual_dtype: dtype_name(actual.dtype()),
        expected_dtype: dtype_name(expected.dtype()),
        tolerance,
        incompatible: None,
        elements: expected.elem_count(),
        mismatched: 0,
        first_mismatch: None,
        max_abs_diff: None,
        max_rel_diff: None,
        mean_abs_error: 0.0,
        rms_error: 0.0,
        cosine: None,
        actual_nonfinite: NonFinite::default(),
        expected_nonfinite: NonFinite::default(),
        noise: None,
        decided_by_noise: false,
        integers: None,
    };
    if actual.dims() != expected.dims() {
        comparison.incompatible = Some(format!(
            "shapes differ: actual {:?}, expected {:?}",
            actual.dims(),
            expected.dims()
        ));
        return comparison;
    }
    if actual.dtype() != expected.dtype() {
        // Still compute the numbers: they tell whether a cast alone would fix it.
        comparison.incompatible = Some(format!(
            "dtypes differ: actual {}, expected {}",
            comparison.actual_dtype, comparison.expected_dtype
        ));
    }
    // Integers compare exactly, as integers: f64 cannot hold every i64.
    if actual.dtype().is_int() && expected.dtype().is_int() {
        crate::exact::compare_integers(&mut comparison, actual, expected);
        return comparison;
    }
    let on_cpu = |t: &Tensor| t.to_device(&candle_core::Device::Cpu).and_then(|t| t.contiguous());
    let (actual_cpu, expected_cpu) = match (on_cpu(actual), on_cpu(expected)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(err), _) | (_, Err(err)) => {
            comparison.incompatible = Some(format!("cannot read the values: {err}"));
            return comparison;
        }
    };
    let (a_storage, a_layout) = actual_cpu.storage_and_layout();
    let (e_storage, e_layout) = expected_cpu.storage_and_layout();
    let n = expected.elem_count();
    match (
        CpuValues::new(&a_storage, a_layout, n),
        CpuValues::new(&e_storage, e_layout, n),
    ) {
        (Ok(a), Ok(e)) => fill_statistics(&mut comparison, &a, &e),
        (Err(err), _) | (_, Err(err)) => comparison.incompatible = Some(format!("cannot read the values: {err}")),
    }
    comparison
}

/// Compares `actual` against the reference `expected` and, with a `shadow` (the
/// reference's float64 twin), measures the noise multiple too; `rule` says which
/// of the two decides. The `assert_close` statistics are always filled in.
pub fn compare_with_shadow(
    actual: &Tensor,
    expected: &Tensor,
    shadow: Option<&Tensor>,
    tolerance: Tolerance,
    rule: Rule,
) -> Comparison {
    let mut comparison = compare(actual, expected, tolerance);
    let Some(shadow) = shadow else {
        return comparison;
    };
    let limit = match rule {
        Rule::Calibrated { limit } => limit,
        Rule::AssertClose => crate::NOISE_LIMIT,
    };
    match noise(actual, expected, shadow, tolerance, limit) {
        Ok(measured) => {
            comparison.decided_by_noise = matches!(rule, Rule::Calibrated { .. }) && measured.reference_agrees;
            comparison.noise = Some(measured);
        }
        Err(why) if comparison.incompatible.is_none() => comparison.incompatible = Some(why),
        Err(_) => {}
    }
    comparison
}

/// Compares under the default tolerance of the reference's dtype.
pub fn compare_default(actual: &Tensor, expected: &Tensor) -> Comparison {
    compare(actual, expected, Tolerance::for_dtype(expected.dtype()))
}

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

/// Running sums over the elements finite on both sides. The worst values start
/// below any difference, so the first finite pair always takes them.
struct Sums {
    worst_abs: (f64, usize),
    worst_rel: (f64, usize),
    /// The greatest magnitude on each side, to tell whether the sums below lost range.
    max_a: f64,
    max_e: f64,
    pairs: usize,
    moments: Moments,
}

/// Sums of the differences and of the products behind the cosine, over the
/// finite pairs, with each side multiplied by a power of two (exact) first.
#[derive(Default)]
struct Moments {
    abs: f64,
    squares: f64,
    dot: f64,
    norm_a: f64,
    norm_e: f64,
}

impl Moments {
    #[inline]
    fn add(&mut self, diff: f64, a: f64, e: f64) {
        self.abs += diff;
        self.squares += diff * diff;
        self.dot += a * e;
        self.norm_a += a * a;
        self.norm_e += e * e;
    }
}

/// Squares of magnitudes outside `[2^-LIMIT, 2^LIMIT]` may underflow or overflow
/// (or sum to infinity); within it they are safe for any element count.
const SAFE_EXPONENT: i32 = 400;

/// Whether `m`, a nonnegative magnitude, is too large or small to square safely.
fn out_of_range(m: f64) -> bool {
    let limit = 2f64.powi(SAFE_EXPONENT);
    m != 0.0 && !(1.0 / limit..=limit).contains(&m)
}

/// A power of two that brings the finite magnitude `m` near 1 (1 for 0).
fn unit_scale(m: f64) -> f64 {
    if m == 0.0 || !m.is_finite() {
        return 1.0;
    }
    2f64.powi((-m.log2().floor() as i32).clamp(-1000, 1000))
}

/// Calls `f(flat_index, actual, expected)` on every pair, reading a chunk at a time.
fn for_each_pair(actual: &CpuValues<'_>, expected: &CpuValues<'_>, mut f: impl FnMut(usize, f64, f64)) {
    const CHUNK: usize = 1024;
    let (mut a_buf, mut e_buf) = ([0.0f64; CHUNK], [0.0f64; CHUNK]);
    let mut at = 0;
    while at < expected.len {
        let n = CHUNK.min(expected.len - at);
        let (a_chunk, e_chunk) = (&mut a_buf[..n], &mut e_buf[..n]);
        // Both were read once in `CpuValues::new`: a dtype error cannot appear here.
        if actual.read(at, a_chunk).and(expected.read(at, e_chunk)).is_err() {
            break;
        }
        for (j, (&a, &e)) in a_chunk.iter().zip(e_chunk.iter()).enumerate() {
            f(at + j, a, e);
        }
        at += n;
    }
}

/// The moments again, each side and the differences scaled by a power of two,
/// for tensors whose magnitudes would overflow or underflow the plain sums: the
/// cosine of [1e200] with itself is 1, not inf/inf, and that of [1e-200] with
/// [1] is 1, not 0. Returns the moments and the scale of the differences.
fn rescaled_moments(actual: &CpuValues<'_>, expected: &CpuValues<'_>, s: &Sums) -> (Moments, f64) {
    let (scale_a, scale_e) = (unit_scale(s.max_a), unit_scale(s.max_e));
    // A difference that overflowed is taken between the scaled sides instead.
    let diff_overflowed = !s.worst_abs.0.is_finite();
    let scale_d = if diff_overflowed {
        unit_scale(s.max_a.max(s.max_e))
    } else {
        unit_scale(s.worst_abs.0)
    };
    let mut m = Moments::default();
    for_each_pair(actual, expected, |_, a, e| {
        if a.is_finite() && e.is_finite() {
            let diff = if diff_overflowed {
                (a * scale_d - e * scale_d).abs()
            } else {
                (a - e).abs() * scale_d
            };
            m.add(diff, a * scale_a, e * scale_e);
        }
    });
    (m, scale_d)
}

fn fill_statistics(c: &mut Comparison, actual: &CpuValues<'_>, expected: &CpuValues<'_>) {
    let tolerance = c.tolerance;
    let (mut a_nonfinite, mut e_nonfinite) = (NonFinite::default(), NonFinite::default());
    let (mut mismatched, mut first_mismatch) = (0usize, None);
    let mut s = Sums {
        worst_abs: (-1.0, 0),
        worst_rel: (-1.0, 0),
        max_a: 0.0,
        max_e: 0.0,
        pairs: 0,
        moments: Moments::default(),
    };
    for_each_pair(actual, expected, |i, a, e| {
        if !tolerance.accepts(a, e) {
            mismatched += 1;
            first_mismatch.get_or_insert(i);
        }
        if !(a.is_finite() && e.is_finite()) {
            a_nonfinite.count(a);
            e_nonfinite.count(e);
            return;
        }
        let abs = (a - e).abs();
        let rel = if abs == 0.0 { 0.0 } else { abs / e.abs() };
        if abs > s.worst_abs.0 {
            s.worst_abs = (abs, i);
        }
        if rel > s.worst_rel.0 {
            s.worst_rel = (rel, i);
        }
        s.max_a = s.max_a.max(a.abs());
        s.max_e = s.max_e.max(e.abs());
        s.pairs += 1;
        s.moments.add(abs, a, e);
    });
    let element = |i: usize| {
        let (mut a, mut e) = ([0.0], [0.0]);
        let _ = actual.read(i, &mut a).and(expected.read(i, &mut e));
        Element {
            index: unravel(i, &c.expected_shape),
            actual: a[0],
            expected: e[0],
        }
    };
    let found = s.pairs > 0;
    let max_abs_diff = found.then(|| Extreme {
        value: s.worst_abs.0,
        at: element(s.worst_abs.1),
    });
    let max_rel_diff = found.then(|| Extreme {
        value: s.worst_rel.0,
        at: element(s.worst_rel.1),
    });
    let first_mismatch = first_mismatch.map(element);
    c.max_abs_diff = max_abs_diff;
    c.max_rel_diff = max_rel_diff;
    c.first_mismatch = first_mismatch;
    c.mismatched = mismatched;
    c.actual_nonfinite = a_nonfinite;
    c.expected_nonfinite = e_nonfinite;
    let extreme = found && [s.worst_abs.0, s.max_a, s.max_e].into_iter().any(out_of_range);
    let (m, scale_d) = if extreme {
        rescaled_moments(actual, expected, &s)
    } else {
        (std::mem::take(&mut s.moments), 1.0)
    };
    if found {
        c.mean_abs_error = m.abs / s.pairs as f64 / scale_d;
        c.rms_error = (m.squares / s.pairs as f64).sqrt() / scale_d;
    }
    c.cosine = match (m.norm_a == 0.0, m.norm_e == 0.0) {
        (true, true) => Some(1.0),
        (true, false) | (false, true) => Some(0.0),
        (false, false) => Some(m.dot / (m.norm_a.sqrt() * m.norm_e.sqrt())),
    };
}

impl Comparison {
    /// The verdict: no incompatibility, and the noise multiple within its limit
    /// where it decides, every element within the tolerance elsewhere.
    pub fn passed(&self) -> bool {
        if self.incompatible.is_some() {
            return false;
        }
        match (&self.noise, self.decided_by_noise) {
            (Some(noise), true) => noise.passed(),
            _ => self.mismatched == 0,
        }
    }

    /// What `torch.testing.assert_close` would say, whatever rule decides.
    pub fn passed_assert_close(&self) -> bool {
        self.incompatible.is_none() && self.mismatched == 0
    }

    /// The noise multiple, when the reference has a shadow.
    pub fn multiple(&self) -> Option<f64> {
        self.noise.as_ref().map(|n| n.multiple)
    }

    pub fn mismatched_percent(&self) -> f64 {
        if self.elements == 0 {
            0.0
        } else {
            100.0 * self.mismatched as f64 / self.elements as f64
        }
    }

    /// The greatest absolute difference, 0 when nothing finite was compared.
    pub fn worst_abs(&self) -> f64 {
        self.max_abs_diff.as_ref().map_or(0.0, |e| e.value)
    }

    /// The greatest relative difference, 0 when nothing finite was compared.
    pub fn worst_rel(&self) -> f64 {
        self.max_rel_diff.as_ref().map_or(0.0, |e| e.value)
    }

    /// A one-line summary for tables and logs.
    pub fn summary(&self) -> String {
        if let Some(reason) = &self.incompatible {
            if self.max_abs_diff.is_none() {
                return reason.clone();
            }
        }
        let mut line = format!(
            "{} / {} mismatched, max abs {:.3e}, max rel {:.3e}",
            self.mismatched,
            self.elements,
            self.worst_abs(),
            self.worst_rel()
        );
        if let Some(reason) = &self.incompatible {
            line = format!("{reason}; {line}");
        }
        line
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

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tol = &self.tolerance;
        if self.passed() {
            writeln!(f, "Tensors are close ({} elements).", self.elements)?;
        } else {
            writeln!(f, "Tensors are not close!")?;
        }
        if let Some(reason) = &self.incompatible {
            writeln!(f, "\n{reason}")?;
            if self.max_abs_diff.is_none() && self.mismatched == 0 {
                return Ok(());
            }
        }
        if let Some(noise) = &self.noise {
            let rule = if self.decided_by_noise {
                format!(
                    "decides; assert_close alone would say {}",
                    if self.passed_assert_close() {
                        "close"
                    } else {
                        "not close"
                    }
                )
            } else if !noise.reference_agrees {
                "not applicable: assert_close decides".into()
            } else {
                "reported only: assert_close decides".into()
            };
            writeln!(f, "\nNoise multiple ({rule}): {}", noise.summary())?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Mismatched elements: {} / {} ({:.1}%)",
            self.mismatched,
            self.elements,
            self.mismatched_percent()
        )?;
        if let Some(m) = &self.max_abs_diff {
            writeln!(
                f,
                "Greatest absolute difference: {:e} at index {} (actual {:e}, expected {:e}; up to {:e} allowed there)",
                m.value,
                format_index(&m.at.index),
                m.at.actual,
                m.at.expected,
                tol.allowed(m.at.expected)
            )?;
        }
        if let Some(m) = &self.max_rel_diff {
            writeln!(
                f,
                "Greatest relative difference: {:e} at index {} (up to {:e} allowed)",
                m.value,
                format_index(&m.at.index),
                tol.rtol
            )?;
        }
        if let Some(first) = &self.first_mismatch {
            writeln!(
                f,
                "First mismatch: index {} (actual {:e}, expected {:e})",
                format_index(&first.index),
                first.actual,
                first.expected
            )?;
        }
        if let Some(exact) = &self.integers {
            writeln!(f, "{exact}")?;
        }
        write!(
            f,
            "Mean absolute error: {:e}, RMS error: {:e}",
            self.mean_abs_error, self.rms_error
        )?;
        if let Some(cosine) = self.cosine {
            write!(f, ", cosine similarity: {cosine:.9}")?;
        }
        writeln!(f)?;
        let (a, e) = (&self.actual_nonfinite, &self.expected_nonfinite);
        if a.total() + e.total() > 0 {
            writeln!(
                f,
                "Non-finite values: actual {} NaN, {} +inf, {} -inf; expected {} NaN, {} +inf, {} -inf (equal_nan: {})",
                a.nan, a.pos_inf, a.neg_inf, e.nan, e.pos_inf, e.neg_inf, tol.equal_nan
            )?;
        }
        write!(
            f,
            "Tolerance: rtol {:e}, atol {:e} (|actual - expected| <= atol + rtol * |expected|), shape {:?}, dtype {}",
            tol.rtol, tol.atol, self.expected_shape, self.expected_dtype
        )
    }
}
