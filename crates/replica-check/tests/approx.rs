//! `Approx`, `assert_tensor_close!`, `assert_close` and `check_close`.

use approx::{abs_diff_eq, abs_diff_ne, assert_abs_diff_eq, assert_relative_eq, relative_eq, relative_ne};
use candle_core::{DType, Device, Tensor};
use replica_check::{assert_close, assert_tensor_close, check_close, Approx, Tolerance};

fn f32s(values: &[f32]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

fn base() -> Tensor {
    f32s(&[1.0, -2.0, 4.0, 100.0])
}

/// `base()` with every element moved by `factor` of itself.
fn scaled(factor: f64) -> Tensor {
    base().to_dtype(DType::F64).unwrap().affine(1.0 + factor, 0.0).unwrap()
}

#[test]
fn relative_eq_passes_within_max_relative() {
    let a = base().to_dtype(DType::F64).unwrap();
    assert_relative_eq!(Approx(scaled(1e-6)), Approx(a.clone()), max_relative = 1e-5);
    assert!(relative_ne!(Approx(scaled(1e-4)), Approx(a), max_relative = 1e-5));
}

#[test]
#[should_panic(expected = "assert_relative_eq!")]
fn relative_eq_macro_fails_outside_max_relative() {
    let a = base().to_dtype(DType::F64).unwrap();
    assert_relative_eq!(Approx(scaled(1e-3)), Approx(a), max_relative = 1e-5);
}

#[test]
fn abs_diff_eq_uses_the_epsilon() {
    let a = f32s(&[0.0, 1.0, 2.0]);
    let b = f32s(&[0.0, 1.0005, 2.0]);
    assert_abs_diff_eq!(Approx(a.clone()), Approx(b.clone()), epsilon = 1e-3);
    assert!(abs_diff_ne!(Approx(a.clone()), Approx(b.clone()), epsilon = 1e-4));
    // The default epsilon is f32's.
    assert!(abs_diff_ne!(Approx(a.clone()), Approx(b)));
    let c = f32s(&[0.0, 1.0 + f32::EPSILON / 2.0, 2.0]);
    assert!(abs_diff_eq!(Approx(a), Approx(c)));
}

#[test]
#[should_panic(expected = "assert_abs_diff_eq!")]
fn abs_diff_eq_macro_fails_outside_epsilon() {
    assert_abs_diff_eq!(Approx(f32s(&[1.0])), Approx(f32s(&[1.1])), epsilon = 1e-3);
}

#[test]
fn different_shapes_are_never_equal() {
    let a = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap();
    let rows = a.reshape((2, 3)).unwrap();
    let cols = a.reshape((3, 2)).unwrap();
    assert!(relative_ne!(
        Approx(rows.clone()),
        Approx(cols.clone()),
        max_relative = 1e9
    ));
    assert!(abs_diff_ne!(Approx(rows.clone()), Approx(a.clone()), epsilon = 1e9));
    assert!(Approx(rows.clone()) != Approx(cols));
    assert!(Approx(rows.clone()) == Approx(rows.clone()));
    assert!(relative_eq!(Approx(rows.clone()), Approx(rows.contiguous().unwrap())));
}

#[test]
fn dtypes_are_compared_by_value() {
    let a = f32s(&[1.0, 2.5]);
    let b = a.to_dtype(DType::F64).unwrap();
    assert!(Approx(a.clone()) == Approx(b.clone()));
    assert!(relative_eq!(Approx(a.to_dtype(DType::F16).unwrap()), Approx(b)));
}

#[test]
fn nan_is_never_approximately_equal() {
    let a = f32s(&[f32::NAN]);
    assert!(relative_ne!(Approx(a.clone()), Approx(a.clone()), max_relative = 1.0));
    assert!(Approx(a.clone()) != Approx(a));
}

#[test]
fn debug_shows_shape_dtype_and_leading_values() {
    let text = format!("{:?}", Approx(Tensor::arange(0f32, 10.0, &Device::Cpu).unwrap()));
    assert!(text.starts_with("Tensor[[10], F32]"), "{text}");
    assert!(text.contains("7e0") && text.ends_with(", ...]"), "{text}");
    assert!(!text.contains("8e0"), "{text}");
}

#[test]
fn assert_tensor_close_passes_on_close_tensors() {
    let a = f32s(&[1.0, 2.0]);
    let b = f32s(&[1.0, 2.000001]);
    assert_tensor_close!(a, b);
    assert_tensor_close!(a, f32s(&[1.0005, 2.0]), Tolerance::new(1e-3, 0.0));
}

#[test]
#[should_panic(expected = "Mismatched elements: 1 / 2")]
fn assert_tensor_close_panics_on_far_tensors() {
    assert_tensor_close!(f32s(&[1.0, 2.0]), f32s(&[1.0, 2.1]));
}

#[test]
#[should_panic(expected = "Mismatched elements")]
fn assert_tensor_close_with_tolerance_panics_on_far_tensors() {
    assert_tensor_close!(f32s(&[1.0]), f32s(&[1.5]), Tolerance::new(0.1, 0.1));
}

#[test]
#[should_panic(expected = "shapes differ")]
fn assert_tensor_close_panics_on_shape_mismatch() {
    assert_tensor_close!(f32s(&[1.0, 2.0]), f32s(&[1.0, 2.0, 3.0]));
}

#[test]
#[should_panic(expected = "output/logits: Tensors are not close!")]
fn assert_close_names_the_pair() {
    assert_close("output/logits", &f32s(&[0.0]), &f32s(&[1.0]), Tolerance::default());
}

#[test]
fn assert_close_panic_message_holds_the_whole_comparison() {
    let result =
        std::panic::catch_unwind(|| assert_close("x", &f32s(&[0.0, 3.0]), &f32s(&[0.0, 1.0]), Tolerance::default()));
    let payload = result.expect_err("should panic");
    let message = payload.downcast_ref::<String>().expect("a formatted message");
    for needle in [
        "x: Tensors are not close!",
        "Mismatched elements: 1 / 2 (50.0%)",
        "Greatest absolute difference: 2e0 at index (1,)",
        "Greatest relative difference: 2e0 at index (1,)",
    ] {
        assert!(message.contains(needle), "missing {needle:?} in:\n{message}");
    }
}

#[test]
fn check_close_returns_the_comparison_either_way() {
    let ok = check_close(&f32s(&[1.0]), &f32s(&[1.0]), Tolerance::EXACT).expect("close");
    assert!(ok.passed());
    assert_eq!(ok.elements, 1);

    let err =
        check_close(&f32s(&[1.0, 5.0, 9.0]), &f32s(&[1.0, 2.0, 3.0]), Tolerance::default()).expect_err("not close");
    assert_eq!(err.mismatched, 2);
    assert_eq!(err.first_mismatch.as_ref().unwrap().index, vec![1]);
    assert_eq!(err.max_abs_diff.as_ref().unwrap().at.index, vec![2]);
}
