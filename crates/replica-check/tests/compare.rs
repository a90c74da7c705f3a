//! `compare` and `Tolerance`: the verdict and the statistics on crafted tensors.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::{flat_f64, raw_safetensors, seeded, seeded_tensor, ScratchDir};
use half::{bf16, f16};
use replica_check::{
    compare, compare_default, compare_stored, open_safetensors, read_safetensors, Comparison, ExactPair, Tolerance,
};
use safetensors::Dtype;

fn f32s(values: &[f32]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

fn f64s(values: &[f64]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

fn first_index(c: &Comparison) -> Vec<usize> {
    c.first_mismatch.as_ref().expect("a first mismatch").index.clone()
}

#[test]
fn nan_fails_without_equal_nan_and_passes_with_it() {
    let a = f32s(&[1.0, f32::NAN, 3.0]);
    let e = f32s(&[1.0, f32::NAN, 3.0]);
    let strict = compare(&a, &e, Tolerance::default());
    assert!(!strict.passed());
    assert_eq!(strict.mismatched, 1);
    assert_eq!(first_index(&strict), vec![1]);
    assert!(strict.first_mismatch.as_ref().unwrap().actual.is_nan());
    assert_eq!(strict.actual_nonfinite.nan, 1);
    assert_eq!(strict.expected_nonfinite.nan, 1);

    let lenient = compare(&a, &e, Tolerance::default().with_equal_nan(true));
    assert!(lenient.passed(), "{lenient}");
    assert_eq!(lenient.mismatched, 0);
    assert!(lenient.first_mismatch.is_none());
}

#[test]
fn nan_against_a_number_fails_even_with_equal_nan() {
    let a = f32s(&[1.0, 2.0, f32::NAN, 4.0, f32::NAN]);
    let e = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0]);
    let c = compare(&a, &e, Tolerance::default().with_equal_nan(true));
    assert_eq!(c.mismatched, 2);
    assert_eq!(first_index(&c), vec![2]);
    assert_eq!(c.first_mismatch.as_ref().unwrap().expected, 3.0);
    // The NaN pairs are not part of the difference measures.
    assert_eq!(c.worst_abs(), 0.0);
    assert_eq!(c.mean_abs_error, 0.0);
}

#[test]
fn nan_in_the_reference_fails_unless_equal_nan() {
    let a = f32s(&[f32::NAN, 2.0]);
    let e = f32s(&[f32::NAN, 2.0]);
    assert!(!compare(&a, &e, Tolerance::new(1.0, 1.0)).passed());
    assert!(compare(&a, &e, Tolerance::new(0.0, 0.0).with_equal_nan(true)).passed());

    // A number where the reference has NaN fails however wide the tolerance.
    let finite = f32s(&[7.0, 2.0]);
    let c = compare(&finite, &e, Tolerance::new(1e9, 1e9).with_equal_nan(true));
    assert_eq!(c.mismatched, 1);
    assert_eq!(first_index(&c), vec![0]);
    assert_eq!(c.expected_nonfinite.nan, 1);
    assert_eq!(c.actual_nonfinite.total(), 0);
}

#[test]
fn same_infinity_passes() {
    let a = f32s(&[f32::INFINITY, f32::NEG_INFINITY, 1.0]);
    let c = compare(&a, &a.clone(), Tolerance::EXACT);
    assert!(c.passed(), "{c}");
    assert_eq!(c.actual_nonfinite.pos_inf, 1);
    assert_eq!(c.actual_nonfinite.neg_inf, 1);
    assert_eq!(c.expected_nonfinite.total(), 2);
}

#[test]
fn opposite_infinities_fail() {
    let a = f32s(&[0.0, f32::INFINITY]);
    let e = f32s(&[0.0, f32::NEG_INFINITY]);
    let c = compare(&a, &e, Tolerance::new(1e9, 1e9));
    assert_eq!(c.mismatched, 1);
    assert_eq!(first_index(&c), vec![1]);
}

#[test]
fn finite_against_infinity_fails_both_ways() {
    let wide = Tolerance::new(1e9, 1e9);
    let big = f32s(&[f32::MAX]);
    let inf = f32s(&[f32::INFINITY]);
    assert_eq!(compare(&big, &inf, wide).mismatched, 1);
    assert_eq!(compare(&inf, &big, wide).mismatched, 1);
    let neg = f32s(&[f32::NEG_INFINITY]);
    assert_eq!(compare(&f32s(&[-1.0]), &neg, wide).mismatched, 1);
}

#[test]
fn signed_zeros_are_equal() {
    let a = f32s(&[0.0, -0.0, 0.0]);
    let e = f32s(&[-0.0, 0.0, 0.0]);
    let c = compare(&a, &e, Tolerance::EXACT);
    assert!(c.passed(), "{c}");
    assert_eq!(c.worst_abs(), 0.0);
    assert_eq!(c.worst_rel(), 0.0);
    // Both all zero: cosine is defined as 1.
    assert_eq!(c.cosine, Some(1.0));
}

#[test]
fn zero_against_nonzero_has_infinite_relative_difference() {
    let c = compare(&f32s(&[0.5]), &f32s(&[0.0]), Tolerance::default());
    assert_eq!(c.mismatched, 1);
    assert_eq!(c.worst_abs(), 0.5);
    assert_eq!(c.worst_rel(), f64::INFINITY);
    assert_eq!(c.cosine, Some(0.0));
}

#[test]
fn f32_denormals_are_compared_not_flushed() {
    let d = f32::from_bits(1);
    let d3 = f32::from_bits(3);
    assert!(d.is_subnormal() && d3.is_subnormal());

    assert!(compare(&f32s(&[d, d3]), &f32s(&[d, d3]), Tolerance::EXACT).passed());

    let c = compare(&f32s(&[d3]), &f32s(&[d]), Tolerance::EXACT);
    assert_eq!(c.mismatched, 1);
    assert_eq!(c.worst_abs(), 2.0 * d as f64);
    assert_eq!(c.worst_rel(), 2.0);

    let c = compare(&f32s(&[d]), &f32s(&[0.0]), Tolerance::EXACT);
    assert_eq!(c.mismatched, 1);
    assert_eq!(c.worst_abs(), d as f64);
    // Under the f32 defaults a denormal is as good as zero.
    assert!(compare(&f32s(&[d]), &f32s(&[0.0]), Tolerance::default()).passed());
}

#[test]
fn empty_tensors_pass() {
    for shape in [vec![0], vec![2, 0, 3]] {
        let a = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
        let c = compare(&a, &a.clone(), Tolerance::EXACT);
        assert!(c.passed(), "{c}");
        assert_eq!(c.elements, 0);
        assert_eq!(c.mismatched, 0);
        assert_eq!(c.mismatched_percent(), 0.0);
        assert!(c.first_mismatch.is_none());
        assert!(c.max_abs_diff.is_none());
        assert_eq!(c.expected_shape, shape);
        assert!(c.to_string().contains("0 elements"), "{c}");
    }
}

#[test]
fn rank0_tensors_use_the_empty_index() {
    let a = Tensor::new(1.5f32, &Device::Cpu).unwrap();
    let e = Tensor::new(1.0f32, &Device::Cpu).unwrap();
    let c = compare(&a, &e, Tolerance::default());
    assert_eq!(c.elements, 1);
    assert_eq!(c.mismatched, 1);
    assert_eq!(first_index(&c), Vec::<usize>::new());
    assert_eq!(c.max_abs_diff.as_ref().unwrap().at.index, Vec::<usize>::new());
    assert_eq!(c.worst_abs(), 0.5);
    let text = c.to_string();
    assert!(text.contains("at index ()"), "{text}");
    assert!(compare(&e, &e.clone(), Tolerance::EXACT).passed());
}

#[test]
fn shape_mismatch_is_a_reported_failure() {
    let a = seeded_tensor(&[2, 3], 1);
    let e = seeded_tensor(&[3, 2], 1);
    let c = compare(&a, &e, Tolerance::default());
    assert!(!c.passed());
    let reason = c.incompatible.as_deref().expect("incompatible");
    assert!(reason.contains("shapes differ"), "{reason}");
    assert!(reason.contains("[2, 3]") && reason.contains("[3, 2]"), "{reason}");
    assert_eq!(c.actual_shape, vec![2, 3]);
    assert_eq!(c.expected_shape, vec![3, 2]);
    assert!(c.max_abs_diff.is_none());
    assert!(c.to_string().contains("shapes differ"));
    assert!(c.summary().contains("shapes differ"));

    // Different element counts and ranks, including rank 0 against [1].
    let c = compare(&f32s(&[1.0, 2.0]), &f32s(&[1.0, 2.0, 3.0]), Tolerance::default());
    assert!(c.incompatible.is_some() && !c.passed());
    let scalar = Tensor::new(1.0f32, &Device::Cpu).unwrap();
    let c = compare(&scalar, &f32s(&[1.0]), Tolerance::default());
    assert!(c.incompatible.is_some() && !c.passed());
    let empty = Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap();
    assert!(!compare(&empty, &f32s(&[1.0]), Tolerance::default()).passed());
}

#[test]
fn dtype_mismatch_is_a_failure_that_still_measures() {
    let a = f32s(&[1.0, 2.0, 3.0]);
    let e = f64s(&[1.0, 2.0, 3.5]);
    let c = compare(&a, &e, Tolerance::default());
    assert!(!c.passed());
    let reason = c.incompatible.as_deref().expect("incompatible");
    assert_eq!(reason, "dtypes differ: actual f32, expected f64");
    assert_eq!((c.actual_dtype.as_str(), c.expected_dtype.as_str()), ("f32", "f64"));
    assert_eq!(c.mismatched, 1);
    assert_eq!(c.worst_abs(), 0.5);
    let text = c.to_string();
    assert!(text.contains("dtypes differ") && text.contains("Mismatched elements: 1 / 3"));

    // Same values, different dtype: still a failure, and not a panic.
    let ids = Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap();
    let c = compare(&ids, &a, Tolerance::default());
    assert!(!c.passed());
    assert_eq!(c.mismatched, 0);
    assert!(c.incompatible.as_deref().unwrap().contains("i64"));
}

#[test]
fn integer_tensors_compare_exactly_by_default() {
    let a = Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap();
    let e = Tensor::new(&[1i64, 2, 4], &Device::Cpu).unwrap();
    let c = compare_default(&a, &e);
    assert_eq!(c.tolerance, Tolerance::EXACT);
    assert_eq!(c.mismatched, 1);
    assert_eq!(first_index(&c), vec![2]);
    assert!(compare_default(&a, &a.clone()).passed());
}

/// The row-major offset of [i, j, k] in shape (2, 3, 4).
fn flat(i: usize, j: usize, k: usize) -> usize {
    (i * 3 + j) * 4 + k
}

/// Values of shape (2, 3, 4) with three known perturbations:
/// a small one at [0, 0, 1], the largest relative at [0, 1, 2] (tiny reference),
/// the largest absolute at [1, 2, 3].
fn perturbed_rank3() -> (Tensor, Tensor, Vec<f32>, Vec<f32>) {
    let mut expected: Vec<f32> = seeded(24, 7).iter().map(|v| 1.0 + v.abs()).collect();
    expected[flat(0, 1, 2)] = 1e-3;
    let mut actual = expected.clone();
    actual[flat(0, 0, 1)] += 1e-3;
    actual[flat(0, 1, 2)] += 1e-2;
    actual[flat(1, 2, 3)] += 0.5;
    let t = |v: &Vec<f32>| Tensor::from_vec(v.clone(), (2, 3, 4), &Device::Cpu).unwrap();
    (t(&actual), t(&expected), actual, expected)
}

#[test]
fn worst_elements_and_their_indices_on_rank3() {
    let (a, e, av, ev) = perturbed_rank3();
    let c = compare(&a, &e, Tolerance::default());
    assert_eq!(c.elements, 24);
    assert_eq!(c.mismatched, 3);
    assert_eq!(first_index(&c), vec![0, 0, 1]);

    let i_abs = flat(1, 2, 3);
    let abs = c.max_abs_diff.as_ref().unwrap();
    assert_eq!(abs.at.index, vec![1, 2, 3]);
    assert_eq!(abs.value, (av[i_abs] as f64 - ev[i_abs] as f64).abs());
    assert_eq!(abs.at.actual, av[i_abs] as f64);
    assert_eq!(abs.at.expected, ev[i_abs] as f64);

    let i_rel = flat(0, 1, 2);
    let rel = c.max_rel_diff.as_ref().unwrap();
    assert_eq!(rel.at.index, vec![0, 1, 2]);
    let hand = (av[i_rel] as f64 - ev[i_rel] as f64).abs() / (ev[i_rel] as f64).abs();
    assert_eq!(rel.value, hand);
    assert!((rel.value - 10.0).abs() < 1e-3, "{}", rel.value);
}

#[test]
fn display_names_count_index_and_greatest_differences() {
    let (a, e, _, _) = perturbed_rank3();
    let text = compare(&a, &e, Tolerance::default()).to_string();
    for needle in [
        "Tensors are not close!",
        "Mismatched elements: 3 / 24 (12.5%)",
        "Greatest absolute difference",
        "at index (1, 2, 3)",
        "Greatest relative difference",
        "at index (0, 1, 2)",
        "First mismatch: index (0, 0, 1)",
        "Tolerance: rtol 1.3e-6, atol 1e-5",
        "shape [2, 3, 4], dtype f32",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let rank1 = compare(&f32s(&[0.0, 1.0]), &f32s(&[0.0, 2.0]), Tolerance::default());
    assert!(rank1.to_string().contains("at index (1,)"), "{rank1}");
}

#[test]
fn display_of_a_pass_says_close_and_names_non_finite_counts() {
    let a = f32s(&[1.0, f32::NAN, f32::INFINITY]);
    let c = compare(&a, &a.clone(), Tolerance::default().with_equal_nan(true));
    let text = c.to_string();
    assert!(text.starts_with("Tensors are close (3 elements)."), "{text}");
    assert!(text.contains("actual 1 NaN, 1 +inf, 0 -inf"), "{text}");
    assert!(text.contains("equal_nan: true"), "{text}");
}

#[test]
fn mismatch_count_matches_brute_force() {
    let n = 2000;
    let expected = seeded(n, 11);
    let noise = seeded(n, 12);
    // Noise of widely varying size, so some elements pass and some fail.
    let actual: Vec<f32> = expected
        .iter()
        .zip(&noise)
        .enumerate()
        .map(|(i, (e, z))| e + z * 10f32.powi(-((i % 6) as i32)))
        .collect();
    let tol = Tolerance::new(1e-3, 1e-4);
    let brute: Vec<usize> = actual
        .iter()
        .zip(&expected)
        .enumerate()
        .filter(|(_, (a, e))| {
            let (a, e) = (**a as f64, **e as f64);
            (a - e).abs() > tol.atol + tol.rtol * e.abs()
        })
        .map(|(i, _)| i)
        .collect();
    assert!(!brute.is_empty() && brute.len() < n, "{}", brute.len());

    let shape = (10, 200);
    let a = Tensor::from_vec(actual, shape, &Device::Cpu).unwrap();
    let e = Tensor::from_vec(expected, shape, &Device::Cpu).unwrap();
    let c = compare(&a, &e, tol);
    assert_eq!(c.mismatched, brute.len());
    assert_eq!(first_index(&c), vec![brute[0] / 200, brute[0] % 200]);
    let percent = 100.0 * brute.len() as f64 / n as f64;
    assert!((c.mismatched_percent() - percent).abs() < 1e-12);
}

#[test]
fn error_statistics_match_hand_formulas() {
    let a = f64s(&[1.0, 2.0, 3.0, 4.0]);
    let e = f64s(&[1.5, 2.0, 2.0, 4.0]);
    let c = compare(&a, &e, Tolerance::default());
    // |a - e| = [0.5, 0, 1, 0]
    assert_eq!(c.mean_abs_error, 1.5 / 4.0);
    assert_eq!(c.rms_error, ((0.25 + 1.0) / 4.0f64).sqrt());
    let dot = 1.5 + 4.0 + 6.0 + 16.0;
    let cosine = dot / (30.0f64.sqrt() * 26.25f64.sqrt());
    assert!((c.cosine.unwrap() - cosine).abs() < 1e-15);
    assert_eq!(c.worst_abs(), 1.0);
    assert_eq!(c.max_abs_diff.as_ref().unwrap().at.index, vec![2]);
    assert_eq!(c.worst_rel(), 0.5);
    assert_eq!(c.max_rel_diff.as_ref().unwrap().at.index, vec![2]);
    assert_eq!(c.mismatched, 2);
}

#[test]
fn statistics_skip_non_finite_pairs() {
    let a = f64s(&[1.0, f64::NAN, 3.0, f64::INFINITY]);
    let e = f64s(&[2.0, f64::NAN, 3.0, f64::INFINITY]);
    let c = compare(&a, &e, Tolerance::default().with_equal_nan(true));
    assert_eq!(c.mismatched, 1);
    // Only the pairs (1, 2) and (3, 3) are finite.
    assert_eq!(c.mean_abs_error, 0.5);
    assert_eq!(c.rms_error, 0.5f64.sqrt());
    let cosine = (2.0 + 9.0) / (10.0f64.sqrt() * 13.0f64.sqrt());
    assert!((c.cosine.unwrap() - cosine).abs() < 1e-15);
}

#[test]
fn cosine_is_zero_when_one_side_is_all_zero() {
    let zeros = f32s(&[0.0, 0.0]);
    let ones = f32s(&[1.0, 1.0]);
    assert_eq!(compare(&zeros, &ones, Tolerance::default()).cosine, Some(0.0));
    assert_eq!(compare(&ones, &zeros, Tolerance::default()).cosine, Some(0.0));
    let c = compare(&ones, &ones.neg().unwrap(), Tolerance::default());
    assert!((c.cosine.unwrap() + 1.0).abs() < 1e-15);
}

/// Everything but the tensors' own layout must agree.
fn assert_same_verdict(x: &Comparison, y: &Comparison) {
    assert_eq!(x, y, "\n{x}\n---\n{y}");
}

#[test]
fn transposed_views_compare_like_contiguous_copies() {
    let base = seeded_tensor(&[3, 4], 3);
    let mut perturbed = flat_f64(&base).iter().map(|v| *v as f32).collect::<Vec<_>>();
    perturbed[2] += 0.25; // base [0, 2], which is [2, 0] in the transpose
    perturbed[7] += 0.125; // base [1, 3] -> transpose [3, 1]
    let perturbed = Tensor::from_vec(perturbed, (3, 4), &Device::Cpu).unwrap();

    let view = perturbed.t().unwrap();
    assert!(!view.is_contiguous());
    let copy = view.contiguous().unwrap();
    let reference = base.t().unwrap().contiguous().unwrap();
    let tol = Tolerance::default();

    let from_view = compare(&view, &reference, tol);
    assert_same_verdict(&from_view, &compare(&copy, &reference, tol));
    assert_eq!(from_view.mismatched, 2);
    assert_eq!(first_index(&from_view), vec![2, 0]);
    assert_eq!(from_view.max_abs_diff.as_ref().unwrap().at.index, vec![2, 0]);
    // Row-major over the transposed shape (4, 3): [2, 0] comes before [3, 1].
    let e_view = base.t().unwrap();
    assert_same_verdict(&compare(&view, &e_view, tol), &from_view);
}

#[test]
fn narrowed_views_compare_like_contiguous_copies() {
    let e_full = seeded_tensor(&[4, 6], 5);
    let a_full = (&e_full + 1e-3).unwrap();
    let a = a_full.narrow(1, 2, 3).unwrap().narrow(0, 1, 2).unwrap();
    let e = e_full.narrow(1, 2, 3).unwrap().narrow(0, 1, 2).unwrap();
    assert!(!a.is_contiguous());
    let tol = Tolerance::new(0.0, 5e-4);
    let c = compare(&a, &e, tol);
    assert_same_verdict(&c, &compare(&a.contiguous().unwrap(), &e.contiguous().unwrap(), tol));
    assert_eq!(c.expected_shape, vec![2, 3]);
    assert_eq!(c.elements, 6);
    assert_eq!(c.mismatched, 6);
    let first = c.first_mismatch.as_ref().unwrap();
    let e_val = e_full.i((1, 2)).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(first.expected, e_val as f64);
}

#[test]
fn f16_tolerance_is_one_ulp_near_one() {
    let one = f16::from_f32(1.0);
    let next = f16::from_bits(one.to_bits() + 1);
    let two_up = f16::from_bits(one.to_bits() + 2);
    let t = |v: f16| Tensor::new(&[v, f16::from_f32(-2.0)], &Device::Cpu).unwrap();
    let c = compare_default(&t(next), &t(one));
    assert!(c.passed(), "{c}");
    assert_eq!(c.worst_abs(), 2f64.powi(-10));
    assert_eq!(c.expected_dtype, "f16");
    let c = compare_default(&t(two_up), &t(one));
    assert_eq!(c.mismatched, 1);
    assert_eq!(c.worst_abs(), 2f64.powi(-9));
    assert_eq!(c.tolerance, Tolerance::new(1e-3, 1e-5));
}

#[test]
fn bf16_tolerance_allows_one_ulp_not_three() {
    let one = bf16::from_f32(1.0);
    let t = |bits_up: u16| {
        let v = bf16::from_bits(one.to_bits() + bits_up);
        Tensor::new(&[v, v], &Device::Cpu).unwrap()
    };
    let c = compare_default(&t(1), &t(0));
    assert!(c.passed(), "{c}");
    assert_eq!(c.worst_abs(), 2f64.powi(-7));
    assert_eq!(c.expected_dtype, "bf16");
    let c = compare_default(&t(3), &t(0));
    assert_eq!(c.mismatched, 2);
    assert_eq!(c.worst_abs(), 3.0 * 2f64.powi(-7));
}

#[test]
fn f64_tolerance_is_tighter_than_f32() {
    let e = f64s(&[1.0, -3.0]);
    assert!(compare_default(&f64s(&[1.0 + 5e-8, -3.0]), &e).passed());
    let c = compare_default(&f64s(&[1.0 + 1e-6, -3.0]), &e);
    assert_eq!(c.mismatched, 1);
    assert_eq!(c.expected_dtype, "f64");
    // The same gap passes under the f32 defaults.
    assert!(compare(&f64s(&[1.0 + 1e-6, -3.0]), &e, Tolerance::default()).passed());
}

#[test]
fn summary_is_one_line() {
    let (a, e, _, _) = perturbed_rank3();
    let summary = compare(&a, &e, Tolerance::default()).summary();
    assert!(!summary.contains('\n'));
    assert!(summary.starts_with("3 / 24 mismatched"), "{summary}");
}

#[test]
fn json_round_trip_keeps_nan_and_infinities() {
    let a = f32s(&[f32::NEG_INFINITY, 1.0, 2.0]);
    let e = f32s(&[f32::NAN, 0.0, 2.0]);
    let c = compare(&a, &e, Tolerance::default());
    let first = c.first_mismatch.as_ref().unwrap();
    assert_eq!(first.index, vec![0]);
    assert_eq!(c.worst_rel(), f64::INFINITY);

    let json = serde_json::to_string(&c).unwrap();
    assert!(json.contains(r#""actual":"-inf""#), "{json}");
    assert!(json.contains(r#""expected":"NaN""#), "{json}");
    assert!(json.contains(r#""value":"inf""#), "{json}");

    let back: Comparison = serde_json::from_str(&json).unwrap();
    let first = back.first_mismatch.as_ref().unwrap();
    assert_eq!(first.actual, f64::NEG_INFINITY);
    assert!(first.expected.is_nan());
    assert_eq!(back.worst_rel(), f64::INFINITY);
    assert_eq!(back.mismatched, c.mismatched);
    assert_eq!(back.expected_nonfinite, c.expected_nonfinite);
    // NaN != NaN, so compare the re-serialised text instead of the structs.
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

#[test]
fn json_round_trip_of_a_finite_comparison_is_exact() {
    let (a, e, _, _) = perturbed_rank3();
    let c = compare(&a, &e, Tolerance::default().with_equal_nan(true));
    let back: Comparison = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn json_with_a_bad_float_string_is_refused() {
    let c = compare(&f32s(&[1.0]), &f32s(&[2.0]), Tolerance::default());
    let json = serde_json::to_string(&c).unwrap();
    let bad = json.replacen(r#""mean_abs_error":1.0"#, r#""mean_abs_error":"huge""#, 1);
    assert_ne!(bad, json, "{json}");
    let err = serde_json::from_str::<Comparison>(&bad).unwrap_err().to_string();
    assert!(err.contains("huge"), "{err}");
}

#[test]
fn tolerance_defaults_and_rule() {
    assert_eq!(Tolerance::for_dtype(DType::BF16), Tolerance::new(1.6e-2, 1e-5));
    assert_eq!(Tolerance::for_dtype(DType::U8), Tolerance::EXACT);
    assert_eq!(Tolerance::default(), Tolerance::for_dtype(DType::F32));
    let tol = Tolerance::new(0.5, 0.25).with_atol(1.0).with_rtol(0.1);
    assert_eq!(tol.allowed(-10.0), 2.0);
    assert!(tol.accepts(12.0, 10.0));
    assert!(!tol.accepts(12.0 + 1e-9, 10.0));
    assert!(Tolerance::new(f64::INFINITY, 0.0)
        .validate()
        .unwrap_err()
        .contains("rtol"));
}

// ---- integers, exactly ------------------------------------------------------

fn i64s(values: &[i64]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

const TWO_53: i64 = 1 << 53;

#[test]
fn i64_above_2_53_compares_exactly() {
    // 2^53 + 1 rounds to 2^53 in f64: the pair must fail all the same.
    assert_eq!((TWO_53 + 1) as f64, TWO_53 as f64);
    let c = compare(&i64s(&[7, TWO_53 + 1]), &i64s(&[7, TWO_53]), Tolerance::EXACT);
    assert!(!c.passed(), "{c}");
    assert_eq!(c.mismatched, 1);
    assert_eq!(first_index(&c), vec![1]);
    assert_eq!(c.worst_abs(), 1.0);
    let exact = c.integers.as_ref().expect("exact values");
    assert_eq!(exact.max_abs_diff, 1);
    let pair = ExactPair {
        actual: (TWO_53 + 1).into(),
        expected: TWO_53.into(),
    };
    assert_eq!((exact.worst, exact.first_mismatch), (pair, Some(pair)));
    let text = c.to_string();
    assert!(
        text.contains("greatest absolute difference 1 (actual 9007199254740993, expected 9007199254740992)"),
        "{text}"
    );
    // The default tolerance of an integer dtype is exact too.
    assert!(!compare_default(&i64s(&[TWO_53 + 1]), &i64s(&[TWO_53])).passed());
}

#[test]
fn equal_integers_pass() {
    for values in [vec![0i64, -3, 5], vec![TWO_53 + 1, i64::MAX, i64::MIN]] {
        let c = compare(&i64s(&values), &i64s(&values), Tolerance::EXACT);
        assert!(c.passed(), "{c}");
        assert_eq!((c.worst_abs(), c.mean_abs_error, c.mismatched), (0.0, 0.0, 0));
        assert!((c.cosine.unwrap() - 1.0).abs() < 1e-15, "{c}");
        assert_eq!(c.integers.as_ref().unwrap().max_abs_diff, 0);
    }
}

#[test]
fn the_largest_and_smallest_i64_compare_exactly() {
    // Neighbours that f64 cannot tell apart, at both ends.
    for (a, e) in [(i64::MAX, i64::MAX - 1), (i64::MIN, i64::MIN + 1)] {
        let c = compare(&i64s(&[a]), &i64s(&[e]), Tolerance::EXACT);
        assert_eq!(c.mismatched, 1, "{a} against {e}: {c}");
        assert_eq!(c.integers.unwrap().max_abs_diff, 1);
    }
    // The widest difference there is, 2^64 - 1, without overflow.
    let c = compare(&i64s(&[i64::MAX]), &i64s(&[i64::MIN]), Tolerance::EXACT);
    assert_eq!(c.mismatched, 1);
    let exact = c.integers.as_ref().unwrap();
    assert_eq!(exact.max_abs_diff, u64::MAX as u128);
    assert_eq!(
        exact.worst,
        ExactPair {
            actual: i64::MAX.into(),
            expected: i64::MIN.into()
        }
    );
    assert_eq!(c.worst_abs(), 2f64.powi(64));
    assert_eq!(c.cosine, Some(-1.0));
}

#[test]
fn integer_tolerances_apply_to_the_exact_difference() {
    // f64 steps by 256 at 2^60: in f64 the pair would differ by 0.
    let big = 1i64 << 60;
    let (a, e) = (i64s(&[big + 2]), i64s(&[big]));
    assert_eq!(compare(&a, &e, Tolerance::new(0.0, 1.0)).mismatched, 1);
    assert_eq!(compare(&a, &e, Tolerance::new(0.0, 1.999)).mismatched, 1);
    assert!(compare(&a, &e, Tolerance::new(0.0, 2.0)).passed());
}

#[test]
fn a_negative_i32_against_its_bit_pattern_in_u32_fails() {
    let a = Tensor::new(&[-1i32, 5], &Device::Cpu).unwrap();
    let e = Tensor::new(&[u32::MAX, 5], &Device::Cpu).unwrap();
    let c = compare(&a, &e, Tolerance::EXACT);
    assert!(!c.passed());
    assert_eq!(
        c.incompatible.as_deref(),
        Some("dtypes differ: actual i32, expected u32")
    );
    // The values differ too, by 2^32, not by a reinterpretation of the bits.
    assert_eq!(c.mismatched, 1);
    assert_eq!(c.integers.unwrap().max_abs_diff, 1 << 32);
}

#[test]
fn json_round_trip_keeps_exact_integers() {
    let c = compare(
        &i64s(&[i64::MAX, TWO_53 + 1]),
        &i64s(&[i64::MIN, TWO_53]),
        Tolerance::EXACT,
    );
    let json = serde_json::to_string(&c).unwrap();
    assert!(json.contains(r#""max_abs_diff":18446744073709551615"#), "{json}");
    let back: Comparison = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
    // Float comparisons carry no `integers` field.
    let floats = compare(&f32s(&[1.0]), &f32s(&[1.0]), Tolerance::default());
    assert!(floats.integers.is_none());
    assert!(!serde_json::to_string(&floats).unwrap().contains("integers"));
}

// ---- dtypes as stored -------------------------------------------------------

fn le_bytes<const N: usize, T: Copy>(values: &[T], to_le: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to_le(v)).collect()
}

#[test]
fn stored_dtypes_are_kept_and_must_agree() {
    let dir = ScratchDir::new("stored-dtypes");
    let tensors: [(&str, &str, Vec<u8>); 4] = [
        ("u16", "U16", le_bytes(&[1u16, 65535], u16::to_le_bytes)),
        ("u32", "U32", le_bytes(&[1u32, 65535], u32::to_le_bytes)),
        ("bool", "BOOL", vec![0, 1]),
        ("u8", "U8", vec![0, 1]),
    ];
    let (mut header, mut data) = (serde_json::json!({}), Vec::new());
    for (key, dtype, bytes) in &tensors {
        let offsets = [data.len(), data.len() + bytes.len()];
        header[*key] = serde_json::json!({"dtype": dtype, "shape": [2], "data_offsets": offsets});
        data.extend_from_slice(bytes);
    }
    let path = dir.write("t.safetensors", &raw_safetensors(&header, &data));

    let file = read_safetensors(&path, &Device::Cpu).unwrap();
    // candle holds u16 as u32 and bool as u8, values intact; the stored tags are kept.
    assert_eq!(file.tensors["u16"].dtype(), DType::U32);
    assert_eq!(file.tensors["u16"].to_vec1::<u32>().unwrap(), [1, 65535]);
    assert_eq!(file.tensors["bool"].dtype(), DType::U8);
    assert_eq!((file.dtypes["u16"], file.dtypes["bool"]), (Dtype::U16, Dtype::BOOL));
    let opened = open_safetensors(&path).unwrap();
    assert_eq!(opened.info("u16").unwrap().dtype_name(), "u16");

    let stored = |a: &str, e: &str| {
        compare_stored(
            &file.tensors[a],
            file.dtypes[a],
            &file.tensors[e],
            file.dtypes[e],
            Tolerance::EXACT,
        )
    };
    for (a, e) in [("u16", "u32"), ("bool", "u8"), ("u32", "u16"), ("u8", "bool")] {
        // By candle's dtypes alone the pair would pass.
        assert!(compare(&file.tensors[a], &file.tensors[e], Tolerance::EXACT).passed());
        let c = stored(a, e);
        assert!(!c.passed(), "{a} against {e}: {c}");
        assert_eq!(c.incompatible, Some(format!("dtypes differ: actual {a}, expected {e}")));
        assert_eq!((c.actual_dtype.as_str(), c.expected_dtype.as_str()), (a, e));
        assert_eq!(c.mismatched, 0, "the values themselves agree");
    }
    for key in ["u16", "u32", "bool", "u8"] {
        let c = stored(key, key);
        assert!(c.passed(), "{c}");
        assert_eq!(c.expected_dtype, key);
    }
    // A shape disagreement stays the reason given.
    let wide = file.tensors["u32"].reshape((2, 1)).unwrap();
    let c = compare_stored(&wide, Dtype::U32, &file.tensors["u16"], Dtype::U16, Tolerance::EXACT);
    assert!(c.incompatible.unwrap().starts_with("shapes differ"));
}
