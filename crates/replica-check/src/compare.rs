//! Elementwise comparison of two tensors: the `assert_close` statistics, the
//! exact integer path, and the noise multiple against a float64 shadow.

use candle_core::Tensor;
use safetensors::Dtype;

use crate::noise::{noise, Rule};
use crate::tensor_file::stored_dtype_name;
use crate::values::{dtype_name, out_of_range, unit_scale, unravel, CpuValues};
use crate::{Comparison, Element, Extreme, NonFinite, Tolerance};

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

/// Calls `f(flat_index, actual, expected)` on every pair, reading a chunk at a time.
fn for_each_pair(actual: &CpuValues<'_>, expected: &CpuValues<'_>, mut f: impl FnMut(usize, f64, f64)) {
    const CHUNK: usize = 1024;
    let (mut a_buf, mut e_buf) = ([0.0f64; CHUNK], [0.0f64; CHUNK]);
    let mut at = 0;
    while at < expected.len() {
        let n = CHUNK.min(expected.len() - at);
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

/// [`compare`] for tensors read from files, whose dtypes are the ones they were
/// stored with ([`TensorInfo::dtype`](crate::TensorInfo::dtype)): candle reads
/// `BOOL` as u8 and `U16` as u32, so its own dtypes would let a u16 tensor pass
/// against a u32 one. Stored dtypes that differ fail, and are the ones reported.
pub fn compare_stored(
    actual: &Tensor,
    actual_dtype: Dtype,
    expected: &Tensor,
    expected_dtype: Dtype,
    tolerance: Tolerance,
) -> Comparison {
    let mut c = compare(actual, expected, tolerance);
    c.actual_dtype = stored_dtype_name(actual_dtype);
    c.expected_dtype = stored_dtype_name(expected_dtype);
    // A shape disagreement stays the reason given; `compare` checked that first.
    if actual_dtype != expected_dtype && c.actual_shape == c.expected_shape {
        c.incompatible = Some(format!(
            "dtypes differ: actual {}, expected {}",
            c.actual_dtype, c.expected_dtype
        ));
    }
    c
}
