//! What a comparison found: the verdict and the statistics a reader needs to tell
//! where and by how much two tensors differ.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::values::format_index;
use crate::Tolerance;

/// One element of the compared pair, located by its N-d index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Element {
    /// The N-d index.
    pub index: Vec<usize>,
    #[serde(with = "crate::float_json")]
    /// The value on the checked side.
    pub actual: f64,
    #[serde(with = "crate::float_json")]
    /// The reference's value.
    pub expected: f64,
}

/// The greatest value of a difference measure and the element where it occurs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extreme {
    #[serde(with = "crate::float_json")]
    /// The measure's value there.
    pub value: f64,
    /// The element where it occurs.
    pub at: Element,
}

/// Counts of non-finite values on one side of a comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonFinite {
    /// NaN values.
    pub nan: usize,
    /// +inf values.
    pub pos_inf: usize,
    /// -inf values.
    pub neg_inf: usize,
}

impl NonFinite {
    /// How many values are not finite.
    pub fn total(&self) -> usize {
        self.nan + self.pos_inf + self.neg_inf
    }

    pub(crate) fn count(&mut self, value: f64) {
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
    /// The checked tensor's shape.
    pub actual_shape: Vec<usize>,
    /// The reference's shape.
    pub expected_shape: Vec<usize>,
    /// The checked tensor's dtype (as stored, for tensors read from files).
    pub actual_dtype: String,
    /// The reference's dtype.
    pub expected_dtype: String,
    /// The tolerance the elements were held to.
    pub tolerance: Tolerance,
    /// Why the pair fails before any element is looked at (shape or dtype disagreement).
    pub incompatible: Option<String>,
    /// How many elements the reference has.
    pub elements: usize,
    /// How many elements fail the tolerance.
    pub mismatched: usize,
    /// The first failing element in row-major order.
    pub first_mismatch: Option<Element>,
    /// The greatest `|actual - expected|`.
    pub max_abs_diff: Option<Extreme>,
    /// The greatest `|actual - expected| / |expected|`.
    pub max_rel_diff: Option<Extreme>,
    #[serde(with = "crate::float_json")]
    /// The mean of `|actual - expected|` over finite pairs.
    pub mean_abs_error: f64,
    #[serde(with = "crate::float_json")]
    /// The root mean square of `actual - expected` over finite pairs.
    pub rms_error: f64,
    /// Cosine similarity of the two tensors as flat vectors; 1 when both are all zero.
    pub cosine: Option<f64>,
    /// Non-finite values on the checked side.
    pub actual_nonfinite: NonFinite,
    /// Non-finite values in the reference.
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

    /// The failing share of the elements, in percent.
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

/// An integer comparison's worst and first failing elements, exactly: the f64
/// fields of [`Comparison`] round integers beyond 2^53.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactIntegers {
    /// `|actual - expected|` at [`Comparison::max_abs_diff`]'s element.
    pub max_abs_diff: u128,
    /// The values at that element.
    pub worst: ExactPair,
    /// The values at [`Comparison::first_mismatch`].
    pub first_mismatch: Option<ExactPair>,
}

/// One element's values, exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactPair {
    /// The value on the checked side.
    pub actual: i128,
    /// The reference's value.
    pub expected: i128,
}

impl fmt::Display for ExactIntegers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ExactPair { actual, expected } = self.worst;
        write!(
            f,
            "Exact integer values: greatest absolute difference {} (actual {actual}, expected {expected})",
            self.max_abs_diff
        )?;
        if let Some(ExactPair { actual, expected }) = self.first_mismatch {
            write!(f, "; first mismatch actual {actual}, expected {expected}")?;
        }
        Ok(())
    }
}

/// The port's and the reference's errors against the float64 shadow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    /// RMS and greatest absolute error of the reference against the shadow.
    #[serde(with = "crate::float_json")]
    pub reference_rms: f64,
    #[serde(with = "crate::float_json")]
    /// The greatest absolute error of the reference against the shadow.
    pub reference_max: f64,
    /// RMS and greatest absolute error of the port against the shadow.
    #[serde(with = "crate::float_json")]
    pub port_rms: f64,
    #[serde(with = "crate::float_json")]
    /// The greatest absolute error of the port against the shadow.
    pub port_max: f64,
    /// Where the port is furthest from the shadow.
    pub port_max_at: Vec<usize>,
    /// The least reference error the multiple divides by: one machine epsilon of the
    /// reference's dtype times the shadow's RMS (for the RMS) and greatest magnitude
    /// (for the max), so an exact reference does not make every rounding infinite.
    #[serde(with = "crate::float_json")]
    pub floor_rms: f64,
    #[serde(with = "crate::float_json")]
    /// The floor of the reference's greatest error (see `floor_rms`).
    pub floor_max: f64,
    /// max(port RMS / reference RMS, port max / reference max), each reference
    /// error raised to its floor.
    #[serde(with = "crate::float_json")]
    pub multiple: f64,
    /// The multiple above which the tensor fails.
    pub limit: f64,
    /// Elements where the reference is not finite and the port differs from it
    /// (or the port is not finite and the reference is); any fails the tensor.
    pub nonfinite_mismatched: usize,
    /// Whether the reference agrees with its shadow to half its dtype's digits (RMS and
    /// max error within sqrt(epsilon) of the shadow's RMS and greatest magnitude). When
    /// not, the bundle is inconsistent (edited, or a shadow of something else) or the
    /// reference lost too much to rounding to calibrate against: `assert_close` decides.
    pub reference_agrees: bool,
}

impl Noise {
    /// The multiple is within the limit and every non-finite element matches.
    pub fn passed(&self) -> bool {
        self.nonfinite_mismatched == 0 && self.multiple <= self.limit
    }

    /// A one-line account for reports.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "noise multiple {} (fails above {}): against the float64 shadow the port is off by rms {:.3e}, max {:.3e} at {}; the reference by rms {:.3e}, max {:.3e}",
            format_multiple(self.multiple),
            self.limit,
            self.port_rms,
            self.port_max,
            format_index(&self.port_max_at),
            self.reference_rms,
            self.reference_max
        );
        if !self.reference_agrees {
            line.push_str("; the reference is too far from its own shadow to calibrate against");
        }
        if self.nonfinite_mismatched > 0 {
            line.push_str(&format!("; {} non-finite elements disagree", self.nonfinite_mismatched));
        }
        line
    }
}

/// A multiple as reports print it: two significant digits, `inf` when unbounded.
pub fn format_multiple(multiple: f64) -> String {
    if multiple.is_infinite() {
        "inf".into()
    } else if multiple >= 100.0 {
        format!("{multiple:.0}")
    } else if multiple >= 10.0 {
        format!("{multiple:.1}")
    } else {
        format!("{multiple:.2}")
    }
}
