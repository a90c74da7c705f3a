//! How close is close enough: the `torch.testing.assert_close` rule.

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// An elementwise tolerance: `actual` passes when
/// `|actual - expected| <= atol + rtol * |expected|`.
///
/// The rule is asymmetric on purpose: the reference (`expected`) sets the scale.
/// An infinity matches only the same infinity; NaN matches NaN only when
/// `equal_nan` is set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
    #[serde(default)]
    pub equal_nan: bool,
}

impl Tolerance {
    pub const fn new(rtol: f64, atol: f64) -> Self {
        Self {
            rtol,
            atol,
            equal_nan: false,
        }
    }

    /// Exact equality (integers, masks, token ids).
    pub const EXACT: Self = Self::new(0.0, 0.0);

    /// The defaults `torch.testing.assert_close` uses for a dtype; exact for integers.
    pub fn for_dtype(dtype: DType) -> Self {
        match dtype {
            DType::F16 => Self::new(1e-3, 1e-5),
            DType::BF16 => Self::new(1.6e-2, 1e-5),
            DType::F32 => Self::new(1.3e-6, 1e-5),
            DType::F64 => Self::new(1e-7, 1e-7),
            _ => Self::EXACT,
        }
    }

    pub const fn with_equal_nan(mut self, equal_nan: bool) -> Self {
        self.equal_nan = equal_nan;
        self
    }

    pub const fn with_rtol(mut self, rtol: f64) -> Self {
        self.rtol = rtol;
        self
    }

    pub const fn with_atol(mut self, atol: f64) -> Self {
        self.atol = atol;
        self
    }

    /// The largest absolute difference allowed where the reference is `expected`.
    pub fn allowed(&self, expected: f64) -> f64 {
        self.atol + self.rtol * expected.abs()
    }

    /// Whether one element passes.
    pub fn accepts(&self, actual: f64, expected: f64) -> bool {
        if actual.is_nan() || expected.is_nan() {
            return self.equal_nan && actual.is_nan() && expected.is_nan();
        }
        if actual.is_infinite() || expected.is_infinite() {
            return actual == expected;
        }
        (actual - expected).abs() <= self.allowed(expected)
    }

    /// Refuses tolerances that would make every verdict meaningless.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [("rtol", self.rtol), ("atol", self.atol)] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!("{name} must be a finite number >= 0, got {value}"));
            }
        }
        Ok(())
    }
}

impl Default for Tolerance {
    /// The f32 defaults.
    fn default() -> Self {
        Self::for_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_torch_testing() {
        assert_eq!(Tolerance::for_dtype(DType::F16), Tolerance::new(1e-3, 1e-5));
        assert_eq!(Tolerance::for_dtype(DType::BF16), Tolerance::new(1.6e-2, 1e-5));
        assert_eq!(Tolerance::for_dtype(DType::F32), Tolerance::new(1.3e-6, 1e-5));
        assert_eq!(Tolerance::for_dtype(DType::F64), Tolerance::new(1e-7, 1e-7));
        assert_eq!(Tolerance::for_dtype(DType::I64), Tolerance::EXACT);
    }

    #[test]
    fn rule_is_relative_to_expected() {
        let tol = Tolerance::new(0.1, 0.0);
        // 0.9 against 1.0 passes (0.1 allowed); 1.0 against 0.9 fails (0.09 allowed).
        assert!(!tol.accepts(1.0, 0.9));
        assert!(tol.accepts(0.9, 1.0));
    }

    #[test]
    fn nan_and_infinities() {
        let tol = Tolerance::new(1.0, 1.0);
        assert!(!tol.accepts(f64::NAN, f64::NAN));
        assert!(tol.with_equal_nan(true).accepts(f64::NAN, f64::NAN));
        assert!(!tol.with_equal_nan(true).accepts(f64::NAN, 0.0));
        assert!(!tol.with_equal_nan(true).accepts(0.0, f64::NAN));
        assert!(tol.accepts(f64::INFINITY, f64::INFINITY));
        assert!(!tol.accepts(f64::INFINITY, f64::NEG_INFINITY));
        assert!(!tol.accepts(f64::MAX, f64::INFINITY));
        assert!(!tol.accepts(f64::INFINITY, f64::MAX));
    }

    #[test]
    fn zeros_and_denormals() {
        let tol = Tolerance::for_dtype(DType::F32);
        let denormal = f32::from_bits(1) as f64;
        assert!(tol.accepts(0.0, -0.0));
        assert!(tol.accepts(denormal, 0.0));
        assert!(Tolerance::EXACT.accepts(denormal, denormal));
        assert!(!Tolerance::EXACT.accepts(denormal, 0.0));
    }

    #[test]
    fn validate_rejects_negative_and_nan() {
        assert!(Tolerance::new(-1.0, 0.0).validate().is_err());
        assert!(Tolerance::new(0.0, f64::NAN).validate().unwrap_err().contains("atol"));
        assert!(Tolerance::default().validate().is_ok());
    }
}
