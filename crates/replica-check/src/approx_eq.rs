//! `approx` integration, so `approx::assert_relative_eq!` and friends work on tensors.

use std::fmt;

use approx::{AbsDiffEq, RelativeEq, UlpsEq};
use candle_core::{DType, Tensor};

/// A tensor seen through `approx`: `assert_relative_eq!(Approx(a), Approx(b), max_relative = 1e-5)`.
///
/// Values are compared in f64, element by element, with `approx`'s own f64 rules;
/// tensors of different shapes are never equal. The default epsilon is f32's,
/// the dtype candle models usually run in.
#[derive(Clone)]
pub struct Approx(pub Tensor);

impl Approx {
    fn values(&self) -> Option<Vec<f64>> {
        self.0.flatten_all().ok()?.to_dtype(DType::F64).ok()?.to_vec1().ok()
    }

    fn all_pairs(&self, other: &Self, ok: impl Fn(f64, f64) -> bool) -> bool {
        if self.0.dims() != other.0.dims() {
            return false;
        }
        match (self.values(), other.values()) {
            (Some(a), Some(b)) => a.iter().zip(&b).all(|(&x, &y)| ok(x, y)),
            _ => false,
        }
    }
}

impl fmt::Debug for Approx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        write!(f, "Tensor[{:?}, {:?}]", self.0.dims(), self.0.dtype())?;
        if let Some(values) = self.values() {
            let head: Vec<String> = values.iter().take(SHOWN).map(|v| format!("{v:e}")).collect();
            let more = if values.len() > SHOWN { ", ..." } else { "" };
            write!(f, " [{}{more}]", head.join(", "))?;
        }
        Ok(())
    }
}

impl PartialEq for Approx {
    fn eq(&self, other: &Self) -> bool {
        self.all_pairs(other, |a, b| a == b)
    }
}

impl AbsDiffEq for Approx {
    type Epsilon = f64;

    fn default_epsilon() -> f64 {
        f32::EPSILON as f64
    }

    fn abs_diff_eq(&self, other: &Self, epsilon: f64) -> bool {
        self.all_pairs(other, |a, b| a.abs_diff_eq(&b, epsilon))
    }
}

impl RelativeEq for Approx {
    fn default_max_relative() -> f64 {
        f32::EPSILON as f64
    }

    fn relative_eq(&self, other: &Self, epsilon: f64, max_relative: f64) -> bool {
        self.all_pairs(other, |a, b| a.relative_eq(&b, epsilon, max_relative))
    }
}

impl UlpsEq for Approx {
    fn default_max_ulps() -> u32 {
        4
    }

    fn ulps_eq(&self, other: &Self, epsilon: f64, max_ulps: u32) -> bool {
        self.all_pairs(other, |a, b| a.ulps_eq(&b, epsilon, max_ulps))
    }
}
