//! Integer tensors compared exactly, as i128, not within a tolerance of f64.

use candle_core::{Device, Tensor};

use crate::values::{unravel, Ints};
use crate::{Comparison, Element, ExactIntegers, ExactPair, Extreme, Tolerance};

/// Whether `|a - e| <= atol + rtol * |e|` for an exact difference: the
/// allowance is rounded down to a whole number, which an integer difference
/// may not exceed, so no rounding of the values can let a pair pass.
fn accepts(tolerance: &Tolerance, diff: u128, expected: i128) -> bool {
    // `as` saturates: an infinite allowance admits everything, a negative one nothing.
    diff == 0 || diff <= tolerance.allowed(expected as f64).floor() as u128
}

/// Fills `c` by comparing two integer tensors (any of candle's integer dtypes)
/// exactly, as i128. The f64 statistics are taken from the exact differences.
pub(crate) fn compare_integers(c: &mut Comparison, actual: &Tensor, expected: &Tensor) {
    let on_cpu = |t: &Tensor| t.to_device(&Device::Cpu).and_then(|t| t.contiguous());
    let (actual, expected) = match (on_cpu(actual), on_cpu(expected)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(err), _) | (_, Err(err)) => {
            c.incompatible = Some(format!("cannot read the values: {err}"));
            return;
        }
    };
    let n = expected.elem_count();
    let (a_storage, a_layout) = actual.storage_and_layout();
    let (e_storage, e_layout) = expected.storage_and_layout();
    let (Some(a), Some(e)) = (
        Ints::new(&a_storage, a_layout.start_offset(), n),
        Ints::new(&e_storage, e_layout.start_offset(), n),
    ) else {
        c.incompatible = Some("cannot read the values: not integers on the CPU".into());
        return;
    };
    let tolerance = c.tolerance;
    let (mut mismatched, mut first) = (0usize, None);
    let mut worst: Option<(u128, usize)> = None;
    let mut worst_rel = (-1.0f64, 0usize);
    let (mut abs, mut squares, mut dot, mut norm_a, mut norm_e) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (a.get(i), e.get(i));
        let diff = x.abs_diff(y);
        if !accepts(&tolerance, diff, y) {
            mismatched += 1;
            first.get_or_insert(i);
        }
        if worst.is_none_or(|(d, _)| diff > d) {
            worst = Some((diff, i));
        }
        // Statistics in f64 (no overflow: every term is below 2^128).
        let (d, xf, yf) = (diff as f64, x as f64, y as f64);
        let rel = if diff == 0 { 0.0 } else { d / yf.abs() };
        if rel > worst_rel.0 {
            worst_rel = (rel, i);
        }
        abs += d;
        squares += d * d;
        dot += xf * yf;
        norm_a += xf * xf;
        norm_e += yf * yf;
    }
    let pair = |i: usize| ExactPair {
        actual: a.get(i),
        expected: e.get(i),
    };
    let element = |i: usize| Element {
        index: unravel(i, &c.expected_shape),
        actual: a.get(i) as f64,
        expected: e.get(i) as f64,
    };
    c.mismatched = mismatched;
    c.first_mismatch = first.map(element);
    if let Some((diff, at)) = worst {
        c.max_abs_diff = Some(Extreme {
            value: diff as f64,
            at: element(at),
        });
        c.max_rel_diff = Some(Extreme {
            value: worst_rel.0,
            at: element(worst_rel.1),
        });
        c.mean_abs_error = abs / n as f64;
        c.rms_error = (squares / n as f64).sqrt();
        c.integers = Some(ExactIntegers {
            max_abs_diff: diff,
            worst: pair(at),
            first_mismatch: first.map(pair),
        });
    }
    c.cosine = Some(match (norm_a == 0.0, norm_e == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        (false, false) => dot / (norm_a.sqrt() * norm_e.sqrt()),
    });
}
