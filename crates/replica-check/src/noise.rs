//! The calibrated verdict: a port's error measured against the reference's own.
//!
//! A reference computed in float32 (or f16/bf16) is itself off from the exact
//! answer by its rounding. A bundle's float64 *shadow* (the same module run in
//! float64 on the same inputs) stands in for the exact answer, so for every tensor
//! there are two errors against it: the reference's own and the port's. A correct
//! port's error is of the same size as the reference's; a bug's is many times
//! larger, even when it is far below any fixed `atol` (a small-weight model puts
//! most bugs there). The ratio is the *noise multiple*; a tensor fails when it
//! exceeds [`NOISE_LIMIT`] (measured: docs/noise-calibration.md).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::values::{unravel, CpuValues};
use crate::{Noise, Tolerance};

/// How far a port's error may exceed the reference's own before a tensor fails.
///
/// Measured (docs/noise-calibration.md): the largest multiple of a correct port was
/// 3.8 over every built-in case on both compute paths and 3.2 over correct GPT-2,
/// LLaMA and BERT ports at three seeds; the smallest multiple of a planted bug was 96.
pub const NOISE_LIMIT: f64 = 10.0;

/// Which rule decides a tensor's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The noise multiple against the float64 shadow where the bundle has one
    /// (failing above `limit`), the `assert_close` rule where it has none.
    Calibrated {
        /// The noise multiple above which a tensor fails ([`NOISE_LIMIT`] by default).
        limit: f64,
    },
    /// `|actual - expected| <= atol + rtol * |expected|` everywhere, shadow or not.
    AssertClose,
}

impl Default for Rule {
    fn default() -> Self {
        Rule::Calibrated { limit: NOISE_LIMIT }
    }
}

/// The distance from 1 to the next number of `dtype`: the scale of one rounding.
fn epsilon(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2f64.powi(-10),
        DType::BF16 => 2f64.powi(-7),
        DType::F32 => f32::EPSILON as f64,
        _ => f64::EPSILON,
    }
}

/// The smallest normal number of `dtype`: below it a difference is no rounding at all.
fn tiny(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2f64.powi(-14),
        DType::BF16 | DType::F32 => f32::MIN_POSITIVE as f64,
        _ => f64::MIN_POSITIVE,
    }
}

/// The noise multiple of `actual` against the reference `expected`, both measured
/// against `shadow`. `tolerance` decides only non-finite elements (an infinity
/// matches only itself; NaN matches NaN only with `equal_nan`). Shapes must agree.
pub fn noise(
    actual: &Tensor,
    expected: &Tensor,
    shadow: &Tensor,
    tolerance: Tolerance,
    limit: f64,
) -> Result<Noise, String> {
    if actual.dims() != expected.dims() || shadow.dims() != expected.dims() {
        return Err(format!(
            "shapes differ: actual {:?}, reference {:?}, shadow {:?}",
            actual.dims(),
            expected.dims(),
            shadow.dims()
        ));
    }
    let on_cpu = |t: &Tensor| t.to_device(&candle_core::Device::Cpu).and_then(|t| t.contiguous());
    let (a, e, s) = match (on_cpu(actual), on_cpu(expected), on_cpu(shadow)) {
        (Ok(a), Ok(e), Ok(s)) => (a, e, s),
        (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => return Err(format!("cannot read the values: {err}")),
    };
    let n = expected.elem_count();
    let (a_storage, a_layout) = a.storage_and_layout();
    let (e_storage, e_layout) = e.storage_and_layout();
    let (s_storage, s_layout) = s.storage_and_layout();
    let values =
        |storage, layout| CpuValues::new(storage, layout, n).map_err(|err| format!("cannot read the values: {err}"));
    let (a, e, s) = (
        values(&a_storage, a_layout)?,
        values(&e_storage, e_layout)?,
        values(&s_storage, s_layout)?,
    );

    // First pass: the greatest magnitudes, which also scale the sums of squares of
    // the second so that they neither overflow nor underflow.
    let (mut max_s, mut ref_max, mut port_max, mut port_max_at) = (0f64, 0f64, 0f64, 0usize);
    let (mut finite, mut nonfinite_mismatched) = (0usize, 0usize);
    for_each_triple(&a, &e, &s, |i, a, e, s| {
        if !(e.is_finite() && s.is_finite() && a.is_finite()) {
            // The shadow alone overflowing says nothing about the port.
            if !e.is_finite() || !a.is_finite() {
                nonfinite_mismatched += usize::from(!tolerance.accepts(a, e));
            }
            return;
        }
        finite += 1;
        max_s = max_s.max(s.abs());
        ref_max = ref_max.max((e - s).abs());
        let port = (a - s).abs();
        if port > port_max {
            (port_max, port_max_at) = (port, i);
        }
    });
    let scale = [max_s, ref_max, port_max].into_iter().fold(0.0, f64::max);
    let scale = if scale > 0.0 { scale } else { 1.0 };
    let (mut sum_s, mut sum_ref, mut sum_port) = (0f64, 0f64, 0f64);
    for_each_triple(&a, &e, &s, |_, a, e, s| {
        if a.is_finite() && e.is_finite() && s.is_finite() {
            sum_s += (s / scale).powi(2);
            sum_ref += ((e - s) / scale).powi(2);
            sum_port += ((a - s) / scale).powi(2);
        }
    });
    let rms = |sum: f64| {
        if finite == 0 {
            0.0
        } else {
            (sum / finite as f64).sqrt() * scale
        }
    };
    let (rms_s, reference_rms, port_rms) = (rms(sum_s), rms(sum_ref), rms(sum_port));
    let (eps, tiny) = (epsilon(expected.dtype()), tiny(expected.dtype()));
    let (floor_rms, floor_max) = (eps * rms_s, eps * max_s);
    let ratio = |port: f64, reference: f64, floor: f64| {
        if port == 0.0 {
            0.0
        } else {
            port / reference.max(floor).max(tiny)
        }
    };
    let multiple = ratio(port_rms, reference_rms, floor_rms).max(ratio(port_max, ref_max, floor_max));
    let half_digits = eps.sqrt();
    let reference_agrees = reference_rms <= half_digits * rms_s && ref_max <= half_digits * max_s;
    Ok(Noise {
        reference_rms,
        reference_max: ref_max,
        port_rms,
        port_max,
        port_max_at: unravel(port_max_at, expected.dims()),
        floor_rms,
        floor_max,
        multiple,
        limit,
        nonfinite_mismatched,
        reference_agrees,
    })
}

/// Calls `f(flat_index, actual, expected, shadow)` on every element, a chunk at a time.
fn for_each_triple(a: &CpuValues<'_>, e: &CpuValues<'_>, s: &CpuValues<'_>, mut f: impl FnMut(usize, f64, f64, f64)) {
    const CHUNK: usize = 1024;
    let (mut ab, mut eb, mut sb) = ([0.0f64; CHUNK], [0.0f64; CHUNK], [0.0f64; CHUNK]);
    let mut at = 0;
    while at < e.len() {
        let n = CHUNK.min(e.len() - at);
        // Each was read once in `CpuValues::new`: a dtype error cannot appear here.
        if a.read(at, &mut ab[..n])
            .and(e.read(at, &mut eb[..n]))
            .and(s.read(at, &mut sb[..n]))
            .is_err()
        {
            break;
        }
        for j in 0..n {
            f(at + j, ab[j], eb[j], sb[j]);
        }
        at += n;
    }
}
