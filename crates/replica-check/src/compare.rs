//! Elementwise comparison of two tensors, with the statistics a reader needs to
//! tell where and by how much they differ.

use std::fmt;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::Tolerance;

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
    match (as_f64(actual), as_f64(expected)) {
        (Ok(a), Ok(e)) => fill_statistics(&mut comparison, &a, &e),
        (Err(err), _) | (_, Err(err)) => {
            comparison.incompatible = Some(format!("cannot read the values: {err}"));
        }
    }
    comparison
}

/// Compares under the default tolerance of the reference's dtype.
pub fn compare_default(actual: &Tensor, expected: &Tensor) -> Comparison {
    compare(actual, expected, Tolerance::for_dtype(expected.dtype()))
}

fn as_f64(tensor: &Tensor) -> candle_core::Result<Vec<f64>> {
    tensor.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

pub(crate) fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        *slot = flat % dim;
        flat /= dim;
    }
    index
}

fn fill_statistics(c: &mut Comparison, actual: &[f64], expected: &[f64]) {
    let shape = c.expected_shape.clone();
    let element = |i: usize| Element {
        index: unravel(i, &shape),
        actual: actual[i],
        expected: expected[i],
    };
    // (value, flat index) of the greatest absolute and relative differences.
    let mut worst_abs: Option<(f64, usize)> = None;
    let mut worst_rel = worst_abs;
    let (mut sum_abs, mut sum_sq, mut finite_pairs) = (0.0, 0.0, 0usize);
    let (mut dot, mut norm_a, mut norm_e) = (0.0, 0.0, 0.0);
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        c.actual_nonfinite.count(a);
        c.expected_nonfinite.count(e);
        if !c.tolerance.accepts(a, e) {
            c.mismatched += 1;
            if c.first_mismatch.is_none() {
                c.first_mismatch = Some(element(i));
            }
        }
        if !(a.is_finite() && e.is_finite()) {
            continue;
        }
        let abs = (a - e).abs();
        let rel = if abs == 0.0 { 0.0 } else { abs / e.abs() };
        if worst_abs.is_none_or(|(w, _)| abs > w) {
            worst_abs = Some((abs, i));
        }
        if worst_rel.is_none_or(|(w, _)| rel > w) {
            worst_rel = Some((rel, i));
        }
        finite_pairs += 1;
        sum_abs += abs;
        sum_sq += abs * abs;
        dot += a * e;
        norm_a += a * a;
        norm_e += e * e;
    }
    c.max_abs_diff = worst_abs.map(|(value, i)| Extreme { value, at: element(i) });
    c.max_rel_diff = worst_rel.map(|(value, i)| Extreme { value, at: element(i) });
    if finite_pairs > 0 {
        c.mean_abs_error = sum_abs / finite_pairs as f64;
        c.rms_error = (sum_sq / finite_pairs as f64).sqrt();
    }
    c.cosine = match (norm_a == 0.0, norm_e == 0.0) {
        (true, true) => Some(1.0),
        (true, false) | (false, true) => Some(0.0),
        (false, false) => Some(dot / (norm_a.sqrt() * norm_e.sqrt())),
    };
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.incompatible.is_none() && self.mismatched == 0
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
