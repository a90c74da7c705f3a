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
    /// The allowed difference relative to `|expected|`.
    pub rtol: f64,
    /// The allowed absolute difference.
    pub atol: f64,
    #[serde(default)]
    /// Whether a NaN in the reference may be matched by a NaN.
    pub equal_nan: bool,
}

impl Tolerance {
    /// `rtol` and `atol`, NaN never equal to NaN.
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

    /// This tolerance with `equal_nan` set.
    pub const fn with_equal_nan(mut self, equal_nan: bool) -> Self {
        self.equal_nan = equal_nan;
        self
    }

    /// This tolerance with another `rtol`.
    pub const fn with_rtol(mut self, rtol: f64) -> Self {
        self.rtol = rtol;
        self
    }

    /// This tolerance with another `atol`.
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

/// Part of a tolerance: the fields it sets replace those of the tolerance it
/// is laid over, the others stay. `{ rtol: Some(1e-4), .. }` loosens only rtol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ToleranceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Replaces `rtol` when set.
    pub rtol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Replaces `atol` when set.
    pub atol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Replaces `equal_nan` when set.
    pub equal_nan: Option<bool>,
}

impl ToleranceSpec {
    /// `base` with this spec's fields laid over it.
    pub fn apply(&self, base: Tolerance) -> Tolerance {
        Tolerance {
            rtol: self.rtol.unwrap_or(base.rtol),
            atol: self.atol.unwrap_or(base.atol),
            equal_nan: self.equal_nan.unwrap_or(base.equal_nan),
        }
    }

    /// Whether the spec sets nothing.
    pub fn is_empty(&self) -> bool {
        self.rtol.is_none() && self.atol.is_none() && self.equal_nan.is_none()
    }

    /// Refuses negative, infinite and NaN values, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        self.apply(Tolerance::EXACT).validate()
    }
}

/// Tolerances a user sets for a run, over the ones the component chose: one
/// for every tensor, one per reference dtype, one per tensor key pattern.
///
/// A [`Bundle`](crate::Bundle) carries them (`Bundle::with_tolerances`), and
/// [`Parity`](crate::Parity) and [`compare_trace`](crate::compare_trace) lay
/// them over their own tolerance for each tensor, so a registered component can
/// be run with looser or tighter tolerances without changing its code.
///
/// [`resolve`](Self::resolve) starts from the component's tolerance (or the
/// reference dtype's default), lays `all` over it, then every matching dtype
/// entry, then every tensor pattern that matches the key, in the order they
/// were added: a later layer wins for the fields it sets.
///
/// ```
/// use candle_core::DType;
/// use replica_check::{Tolerance, ToleranceOverrides, ToleranceSpec};
/// let loose = ToleranceSpec { rtol: Some(1e-4), ..Default::default() };
/// let overrides = ToleranceOverrides::default().tensor("grad/*", loose);
/// let base = Tolerance::for_dtype(DType::F32);
/// assert_eq!(overrides.resolve("grad/param/weight", DType::F32, base).rtol, 1e-4);
/// assert_eq!(overrides.resolve("output/0", DType::F32, base), base);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToleranceOverrides {
    /// Laid over every tensor.
    pub all: ToleranceSpec,
    /// Laid over the tensors whose reference has the dtype.
    pub by_dtype: Vec<(DType, ToleranceSpec)>,
    /// Bundle key patterns (`output/0`, `grad/*`, `act/h.?.attn`): `*` matches
    /// any run of characters, `?` one character, anything else itself.
    pub by_tensor: Vec<(String, ToleranceSpec)>,
}

impl ToleranceOverrides {
    /// Lays `spec` over every tensor.
    pub fn all(mut self, spec: ToleranceSpec) -> Self {
        self.all = self.all.then(spec);
        self
    }

    /// Lays `spec` over the tensors whose reference has `dtype`.
    pub fn dtype(mut self, dtype: DType, spec: ToleranceSpec) -> Self {
        self.by_dtype.push((dtype, spec));
        self
    }

    /// Lays `spec` over the tensors whose bundle key matches `pattern`.
    pub fn tensor(mut self, pattern: impl Into<String>, spec: ToleranceSpec) -> Self {
        self.by_tensor.push((pattern.into(), spec));
        self
    }

    /// These overrides followed by `later`'s, which win where both set a field
    /// (a suite's overrides, then a case's).
    pub fn then(mut self, later: &ToleranceOverrides) -> Self {
        self.all = self.all.then(later.all);
        self.by_dtype.extend(later.by_dtype.iter().cloned());
        self.by_tensor.extend(later.by_tensor.iter().cloned());
        self
    }

    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_dtype.is_empty() && self.by_tensor.is_empty()
    }

    /// The tolerance for the tensor at bundle key `key` whose reference has
    /// `dtype`, where the component would have used `base`.
    pub fn resolve(&self, key: &str, dtype: DType, base: Tolerance) -> Tolerance {
        let mut tolerance = self.all.apply(base);
        for (_, spec) in self.by_dtype.iter().filter(|(d, _)| *d == dtype) {
            tolerance = spec.apply(tolerance);
        }
        for (_, spec) in self.by_tensor.iter().filter(|(p, _)| glob_match(p, key)) {
            tolerance = spec.apply(tolerance);
        }
        tolerance
    }

    /// Refuses negative, infinite and NaN values, naming where they are.
    pub fn validate(&self) -> Result<(), String> {
        self.all.validate()?;
        for (dtype, spec) in &self.by_dtype {
            spec.validate().map_err(|err| format!("{dtype:?}: {err}"))?;
        }
        for (pattern, spec) in &self.by_tensor {
            spec.validate().map_err(|err| format!("`{pattern}`: {err}"))?;
        }
        Ok(())
    }
}

impl ToleranceSpec {
    fn then(self, later: ToleranceSpec) -> ToleranceSpec {
        ToleranceSpec {
            rtol: later.rtol.or(self.rtol),
            atol: later.atol.or(self.atol),
            equal_nan: later.equal_nan.or(self.equal_nan),
        }
    }
}

/// Whether `text` matches `pattern`, where `*` is any run of characters and `?` one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently standing for.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((star_p, star_t)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = star_p + 1;
            ti = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
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
    #[test]
    fn globs() {
        assert!(glob_match("grad/*", "grad/param/weight"));
        assert!(glob_match("*", ""));
        assert!(glob_match("act/h.?.attn", "act/h.0.attn"));
        assert!(!glob_match("act/h.?.attn", "act/h.10.attn"));
        assert!(glob_match("*.weight", "param/fc.weight"));
        assert!(glob_match("a*b*c", "aXXbYYbc"));
        assert!(!glob_match("output/0", "output/01"));
        assert!(!glob_match("a*c", "abcd"));
    }

    #[test]
    fn overrides_layer_in_order() {
        let spec = |rtol: Option<f64>, atol: Option<f64>| ToleranceSpec {
            rtol,
            atol,
            equal_nan: None,
        };
        let base = Tolerance::new(1.0, 1.0);
        let overrides = ToleranceOverrides::default()
            .all(spec(Some(2.0), None))
            .dtype(DType::F16, spec(None, Some(3.0)))
            .tensor("grad/*", spec(Some(4.0), None))
            .tensor("grad/input/*", spec(Some(5.0), None));
        assert_eq!(
            overrides.resolve("output/0", DType::F32, base),
            Tolerance::new(2.0, 1.0)
        );
        assert_eq!(
            overrides.resolve("output/0", DType::F16, base),
            Tolerance::new(2.0, 3.0)
        );
        assert_eq!(
            overrides.resolve("grad/param/w", DType::F16, base),
            Tolerance::new(4.0, 3.0)
        );
        assert_eq!(
            overrides.resolve("grad/input/0", DType::F32, base),
            Tolerance::new(5.0, 1.0)
        );
        let case = ToleranceOverrides::default().all(spec(None, Some(9.0)));
        let merged = overrides.clone().then(&case);
        assert_eq!(merged.resolve("output/0", DType::F32, base), Tolerance::new(2.0, 9.0));
        assert!(ToleranceOverrides::default().is_empty());
        assert_eq!(ToleranceOverrides::default().resolve("x", DType::F32, base), base);
    }

    #[test]
    fn override_validation_names_the_place() {
        let bad = ToleranceSpec {
            atol: Some(-1.0),
            ..Default::default()
        };
        let err = ToleranceOverrides::default()
            .tensor("grad/*", bad)
            .validate()
            .unwrap_err();
        assert!(err.contains("`grad/*`") && err.contains("atol"), "{err}");
    }
}
