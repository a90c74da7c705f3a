//! Test helpers that fail with the whole comparison, not just "not equal".

use candle_core::Tensor;

use crate::{compare, Comparison, Tolerance};

/// `Ok` when `actual` is close to `expected`, else the failed comparison (boxed: it is large).
pub fn check_close(actual: &Tensor, expected: &Tensor, tolerance: Tolerance) -> Result<Comparison, Box<Comparison>> {
    let comparison = compare(actual, expected, tolerance);
    if comparison.passed() {
        Ok(comparison)
    } else {
        Err(Box::new(comparison))
    }
}

/// Panics with the full comparison message when `actual` is not close to `expected`.
/// `what` names the pair in the message (a tensor key or module path).
#[track_caller]
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tolerance: Tolerance) {
    if let Err(comparison) = check_close(actual, expected, tolerance) {
        panic!("{what}: {comparison}");
    }
}

/// Asserts two candle tensors are close, failing with the full comparison.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use replica_check::{assert_tensor_close, Tolerance};
/// let a = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
/// let b = Tensor::new(&[1.0f32, 2.000001], &Device::Cpu).unwrap();
/// assert_tensor_close!(a, b);                                   // the reference dtype's default
/// assert_tensor_close!(a, b, Tolerance::new(1e-3, 0.0));        // an explicit tolerance
/// ```
#[macro_export]
macro_rules! assert_tensor_close {
    ($actual:expr, $expected:expr $(,)?) => {{
        let expected = &$expected;
        $crate::assert_close(
            concat!(stringify!($actual), " vs ", stringify!($expected)),
            &$actual,
            expected,
            $crate::Tolerance::for_dtype(expected.dtype()),
        )
    }};
    ($actual:expr, $expected:expr, $tolerance:expr $(,)?) => {
        $crate::assert_close(
            concat!(stringify!($actual), " vs ", stringify!($expected)),
            &$actual,
            &$expected,
            $tolerance,
        )
    };
}
