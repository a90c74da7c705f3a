//! Property tests of `compare` and the tolerance rule on generated tensors:
//! shapes with size-1, empty and odd dimensions; values that include NaN, ±inf,
//! signed zeros, subnormals, huge and tiny magnitudes; actual tensors that are
//! the expected ones perturbed by small, large or non-finite amounts.
//!
//! The oracle is a plain f64 loop over the pairs, written here from the rule
//! `|actual - expected| <= atol + rtol * |expected|` (NaN equals NaN only with
//! `equal_nan`, an infinity matches only itself), not through `compare`.

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use replica_check::{check_close, compare, compare_default, Comparison, Tolerance};

// ------------------------------------------------------------------------------------
// Strategies

/// Up to rank 4, dimensions 0, 1, small and odd; at most 256 elements in all.
fn shape() -> impl Strategy<Value = Vec<usize>> {
    let dim = prop_oneof![1 => Just(0usize), 3 => Just(1usize), 6 => 2usize..8, 1 => 8usize..40];
    prop::collection::vec(dim, 0..=4).prop_map(|mut dims| {
        while dims.iter().product::<usize>() > 256 {
            let largest = (0..dims.len()).max_by_key(|&i| dims[i]).unwrap();
            dims[largest] /= 2;
        }
        dims
    })
}

/// Any f64 worth comparing: ordinary numbers, signed zeros, subnormals (of f64
/// and of f32), huge and tiny magnitudes, infinities and NaN.
fn value() -> impl Strategy<Value = f64> {
    use prop::num::f64 as f;
    prop_oneof![
        8 => -10.0f64..10.0,
        2 => (-1i32..=1, -300.0f64..300.0).prop_map(|(sign, exp)| sign as f64 * 10f64.powf(exp)),
        2 => f::NORMAL | f::SUBNORMAL | f::ZERO,
        1 => (1u32..1 << 23).prop_map(|bits| f32::from_bits(bits) as f64),
        1 => Just(f64::MAX),
        1 => Just(-0.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ]
}

/// How the actual element is made from the expected one.
#[derive(Clone, Debug)]
enum Perturb {
    Same,
    /// `e · (1 + r)`, `|r|` from 1e-12 to 1.
    Relative(f64),
    /// `e + d`, `|d|` from 1e-12 to 1.
    Absolute(f64),
    /// Unrelated to `e`.
    Other(f64),
}

impl Perturb {
    fn apply(&self, e: f64) -> f64 {
        match *self {
            Perturb::Same => e,
            Perturb::Relative(r) => e * (1.0 + r),
            Perturb::Absolute(d) => e + d,
            Perturb::Other(v) => v,
        }
    }
}

fn signed_log_uniform() -> impl Strategy<Value = f64> {
    (any::<bool>(), -12.0f64..0.0).prop_map(|(neg, exp)| if neg { -1.0 } else { 1.0 } * 10f64.powf(exp))
}

fn perturb() -> impl Strategy<Value = Perturb> {
    prop_oneof![
        4 => Just(Perturb::Same),
        4 => signed_log_uniform().prop_map(Perturb::Relative),
        3 => signed_log_uniform().prop_map(Perturb::Absolute),
        2 => value().prop_map(Perturb::Other),
    ]
}

/// 0 or 1e-12 ..= 1, on a log scale.
fn tol_part() -> impl Strategy<Value = f64> {
    prop_oneof![1 => Just(0.0), 4 => (-12.0f64..0.0).prop_map(|e| 10f64.powf(e))]
}

fn tolerance() -> impl Strategy<Value = Tolerance> {
    (tol_part(), tol_part(), any::<bool>()).prop_map(|(rtol, atol, nan)| Tolerance::new(rtol, atol).with_equal_nan(nan))
}

fn float_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F64)]
}

/// A shape and, for each element, an expected value and how the actual one differs.
#[derive(Clone, Debug)]
struct Pair {
    shape: Vec<usize>,
    expected: Vec<f64>,
    actual: Vec<f64>,
}

fn pair() -> impl Strategy<Value = Pair> {
    shape().prop_flat_map(|shape| {
        let n = shape.iter().product::<usize>();
        prop::collection::vec((value(), perturb()), n).prop_map(move |elems| Pair {
            shape: shape.clone(),
            expected: elems.iter().map(|(e, _)| *e).collect(),
            actual: elems.iter().map(|(e, p)| p.apply(*e)).collect(),
        })
    })
}

// ------------------------------------------------------------------------------------
// Helpers and the oracle

fn tensor(values: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The values a tensor holds, in row-major order, as f64.
fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The rule, element by element.
fn oracle_accepts(a: f64, e: f64, tol: &Tolerance) -> bool {
    match (a.is_nan(), e.is_nan()) {
        (true, true) => return tol.equal_nan,
        (true, false) | (false, true) => return false,
        (false, false) => {}
    }
    if a.is_infinite() || e.is_infinite() {
        return a.is_infinite() && e.is_infinite() && a.signum() == e.signum();
    }
    let diff = (a - e).abs();
    diff <= tol.atol + tol.rtol * e.abs()
}

/// The row-major flat index of an N-d index.
fn flat_index(index: &[usize], shape: &[usize]) -> usize {
    assert_eq!(index.len(), shape.len(), "index {index:?} for shape {shape:?}");
    index.iter().zip(shape).fold(0, |flat, (&i, &d)| {
        assert!(i < d, "index {index:?} out of shape {shape:?}");
        flat * d + i
    })
}

/// The bit patterns, with every NaN the same (a cast may change a NaN's payload).
fn bits(vs: &[f64]) -> Vec<u64> {
    vs.iter()
        .map(|v| if v.is_nan() { u64::MAX } else { v.to_bits() })
        .collect()
}

fn finite_pair(a: f64, e: f64) -> bool {
    a.is_finite() && e.is_finite()
}

/// A comparison's content as text: equality that treats NaN statistics as equal.
fn as_json(c: &Comparison) -> String {
    serde_json::to_string(c).unwrap()
}

/// Within `slack` relative to the larger magnitude.
fn close(x: f64, y: f64, slack: f64) -> bool {
    x == y || (x - y).abs() <= slack * x.abs().max(y.abs())
}

/// 256 cases per property; failures are kept in `proptest-regressions/properties.txt`
/// (relative to the crate, where `cargo test` runs) and replayed first.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/properties.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config())]

    /// A tensor matches itself: every element passes except NaN, which passes only with equal_nan.
    #[test]
    fn a_tensor_matches_itself(pair in pair(), dtype in prop_oneof![
        Just(DType::F16), Just(DType::BF16), Just(DType::F32), Just(DType::F64)
    ], tol in tolerance()) {
        let t = tensor(&pair.expected, &pair.shape, dtype);
        let nans = values(&t).iter().filter(|v| v.is_nan()).count();
        let c = compare(&t, &t, tol);
        let _ = c.to_string();
        prop_assert!(c.incompatible.is_none());
        prop_assert_eq!(c.mismatched, if tol.equal_nan { 0 } else { nans });
        prop_assert_eq!(c.passed(), tol.equal_nan || nans == 0, "{}", c);
        prop_assert_eq!(c.worst_abs(), 0.0);
        prop_assert_eq!(c.worst_rel(), 0.0);
        prop_assert_eq!(c.mean_abs_error, 0.0);
        // Identical vectors point the same way, whatever their magnitude.
        let cosine = c.cosine.unwrap();
        prop_assert!(close(cosine, 1.0, 1e-12), "cosine {} of a tensor with itself", cosine);
    }

    /// Raising rtol or atol (or setting equal_nan) never turns a passing element into a failing one.
    #[test]
    fn raising_the_tolerance_never_turns_a_pass_into_a_fail(
        pair in pair(), dtype in float_dtype(), tol in tolerance(),
        more_rtol in tol_part(), more_atol in tol_part(), nan in any::<bool>(),
    ) {
        let (a, e) = (tensor(&pair.actual, &pair.shape, dtype), tensor(&pair.expected, &pair.shape, dtype));
        let looser = Tolerance::new(tol.rtol + more_rtol, tol.atol + more_atol).with_equal_nan(tol.equal_nan || nan);
        let (strict, loose) = (compare(&a, &e, tol), compare(&a, &e, looser));
        prop_assert!(loose.mismatched <= strict.mismatched, "{} then {}", strict.mismatched, loose.mismatched);
        if strict.passed() {
            prop_assert!(loose.passed(), "passed under {:?}, failed under {:?}:\n{}", tol, looser, loose);
        }
        // Element by element: the looser failures are a subset of the stricter ones.
        for (&x, &y) in values(&a).iter().zip(&values(&e)) {
            if tol.accepts(x, y) {
                prop_assert!(looser.accepts(x, y), "{} vs {} passes {:?}, fails {:?}", x, y, tol, looser);
            }
        }
    }

    /// The reported greatest absolute and relative differences are the greatest over the
    /// finite pairs, at the first index where they occur, with that element's values.
    #[test]
    fn the_worst_element_is_the_worst(pair in pair(), dtype in float_dtype(), tol in tolerance()) {
        let (a, e) = (tensor(&pair.actual, &pair.shape, dtype), tensor(&pair.expected, &pair.shape, dtype));
        let (av, ev) = (values(&a), values(&e));
        let c = compare(&a, &e, tol);
        let abs: Vec<Option<f64>> = av.iter().zip(&ev)
            .map(|(&x, &y)| finite_pair(x, y).then(|| (x - y).abs()))
            .collect();
        let rel: Vec<Option<f64>> = av.iter().zip(&ev).zip(&abs)
            .map(|((_, &y), d)| d.map(|d| if d == 0.0 { 0.0 } else { d / y.abs() }))
            .collect();
        for (what, diffs, reported) in [("abs", &abs, &c.max_abs_diff), ("rel", &rel, &c.max_rel_diff)] {
            let worst = diffs.iter().flatten().copied().fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
            match (worst, reported) {
                (None, None) => {}
                (Some(worst), Some(r)) => {
                    prop_assert_eq!(r.value, worst, "max {} diff", what);
                    let first = diffs.iter().position(|d| *d == Some(worst)).unwrap();
                    let at = flat_index(&r.at.index, &pair.shape);
                    prop_assert_eq!(at, first, "max {} diff at {:?}", what, r.at.index);
                    prop_assert_eq!(r.at.actual.to_bits(), av[at].to_bits());
                    prop_assert_eq!(r.at.expected.to_bits(), ev[at].to_bits());
                }
                (w, r) => prop_assert!(false, "max {} diff: oracle {:?}, reported {:?}", what, w, r),
            }
        }
    }

    /// The mismatch count, the first mismatch and the non-finite counts equal a brute-force count.
    #[test]
    fn the_mismatch_count_equals_a_brute_force_count(pair in pair(), dtype in float_dtype(), tol in tolerance()) {
        let (a, e) = (tensor(&pair.actual, &pair.shape, dtype), tensor(&pair.expected, &pair.shape, dtype));
        let (av, ev) = (values(&a), values(&e));
        let failing: Vec<usize> = (0..av.len()).filter(|&i| !oracle_accepts(av[i], ev[i], &tol)).collect();
        let c = compare(&a, &e, tol);
        let _ = c.to_string();
        prop_assert_eq!(c.elements, av.len());
        prop_assert_eq!(c.mismatched, failing.len());
        prop_assert_eq!(c.passed(), failing.is_empty());
        prop_assert_eq!(check_close(&a, &e, tol).is_ok(), failing.is_empty());
        prop_assert_eq!(c.first_mismatch.as_ref().map(|m| flat_index(&m.index, &pair.shape)), failing.first().copied());
        let count = |vs: &[f64], f: fn(&f64) -> bool| vs.iter().filter(|v| f(v)).count();
        for (side, vs, nf) in [("actual", &av, c.actual_nonfinite), ("expected", &ev, c.expected_nonfinite)] {
            prop_assert_eq!(nf.nan, count(vs, |v| v.is_nan()), "{} NaN", side);
            prop_assert_eq!(nf.pos_inf, count(vs, |v| *v == f64::INFINITY), "{} +inf", side);
            prop_assert_eq!(nf.neg_inf, count(vs, |v| *v == f64::NEG_INFINITY), "{} -inf", side);
        }
    }

    /// The summary statistics stay within their bounds whatever the magnitudes:
    /// mean <= RMS <= greatest difference, cosine in [-1, 1], -1 against the negation.
    #[test]
    fn statistics_are_bounded(pair in pair(), dtype in float_dtype()) {
        let (a, e) = (tensor(&pair.actual, &pair.shape, dtype), tensor(&pair.expected, &pair.shape, dtype));
        let c = compare(&a, &e, Tolerance::default());
        let worst = c.worst_abs();
        let slack = 1e-12;
        prop_assert!(c.mean_abs_error <= worst * (1.0 + slack), "mean {:e} > max {:e}", c.mean_abs_error, worst);
        prop_assert!(c.rms_error <= worst * (1.0 + slack), "rms {:e} > max {:e}", c.rms_error, worst);
        prop_assert!(c.mean_abs_error <= c.rms_error * (1.0 + slack), "mean {:e} > rms {:e}", c.mean_abs_error, c.rms_error);
        if worst.is_finite() {
            let cosine = c.cosine.unwrap();
            prop_assert!(cosine.abs() <= 1.0 + slack, "cosine {}", cosine);
        }
        let negated = compare(&e.neg().unwrap(), &e, Tolerance::default());
        let any_nonzero = values(&e).iter().any(|v| v.is_finite() && *v != 0.0);
        if any_nonzero {
            let cosine = negated.cosine.unwrap();
            prop_assert!(close(cosine, -1.0, slack), "cosine {} of a tensor with its negation", cosine);
        }
    }

    /// Contiguous tensors, transposed views, sliced views and views with a start offset
    /// holding the same values give the same comparison.
    #[test]
    fn the_memory_layout_does_not_matter(
        rows in 1usize..9, cols in 1usize..9,
        elems in prop::collection::vec((value(), perturb()), 64),
        layouts in (0u8..4, 0u8..4), dtype in float_dtype(), tol in tolerance(),
    ) {
        let n = rows * cols;
        let expected: Vec<f64> = elems[..n].iter().map(|(e, _)| *e).collect();
        let actual: Vec<f64> = elems[..n].iter().map(|(e, p)| p.apply(*e)).collect();
        let view = |vs: &[f64], layout: u8| -> Tensor {
            let plain = tensor(vs, &[rows, cols], dtype);
            let t = match layout {
                0 => plain,
                // Stored transposed, viewed back.
                1 => plain.t().unwrap().contiguous().unwrap().t().unwrap(),
                // A window of a larger tensor whose other elements are NaN.
                2 => Tensor::full(f64::NAN, (rows + 2, cols + 3), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
                    .slice_assign(&[1..rows + 1, 2..cols + 2], &plain).unwrap()
                    .narrow(0, 1, rows).unwrap().narrow(1, 2, cols).unwrap(),
                // Contiguous, but starting part-way into its storage.
                _ => Tensor::cat(&[&plain.ones_like().unwrap(), &plain], 0).unwrap().narrow(0, rows, rows).unwrap(),
            };
            assert_eq!(bits(&values(&t)), bits(&values(&tensor(vs, &[rows, cols], dtype))));
            t
        };
        let contiguous = compare(&tensor(&actual, &[rows, cols], dtype), &tensor(&expected, &[rows, cols], dtype), tol);
        let viewed = compare(&view(&actual, layouts.0), &view(&expected, layouts.1), tol);
        prop_assert_eq!(as_json(&viewed), as_json(&contiguous), "layouts {:?}", layouts);
    }

    /// f16, bf16, f32 and f64 tensors holding the same values give the same comparison.
    #[test]
    fn the_dtype_does_not_matter_for_the_same_values(
        shape in shape(),
        // m · 2^k with |m| < 256 and -24 <= k <= 7 is exact in f16 (subnormals included) and bf16;
        // the actual element is (m + step) · 2^k, or a non-finite value.
        lattice in prop::collection::vec((
            -255i32..=255, -24i32..=7,
            prop_oneof![3 => Just(0i32), 2 => -2i32..=2, 1 => -255i32..=255],
            prop_oneof![8 => Just(None), 1 => Just(Some(f64::NAN)), 1 => Just(Some(f64::INFINITY)),
                        1 => Just(Some(f64::NEG_INFINITY)), 1 => Just(Some(-0.0))],
            any::<bool>(),
        ), 256),
        tol in tolerance(),
    ) {
        let n = shape.iter().product::<usize>();
        let on_lattice = |m: i32, k: i32| m.clamp(-255, 255) as f64 * 2f64.powi(k);
        let expected: Vec<f64> = lattice[..n].iter()
            .map(|&(m, k, _, special, on_expected)| match special {
                Some(v) if on_expected => v,
                _ => on_lattice(m, k),
            })
            .collect();
        let actual: Vec<f64> = lattice[..n].iter()
            .map(|&(m, k, step, special, on_expected)| match special {
                Some(v) if !on_expected => v,
                _ => on_lattice(m + step, k),
            })
            .collect();
        let mut results = Vec::new();
        for dtype in [DType::F16, DType::BF16, DType::F32, DType::F64] {
            let (a, e) = (tensor(&actual, &shape, dtype), tensor(&expected, &shape, dtype));
            prop_assert_eq!(bits(&values(&e)), bits(&expected), "{:?} holds the expected values", dtype);
            prop_assert_eq!(bits(&values(&a)), bits(&actual), "{:?} holds the actual values", dtype);
            let mut c = compare(&a, &e, tol);
            c.actual_dtype.clear();
            c.expected_dtype.clear();
            results.push((dtype, as_json(&c)));
        }
        for (dtype, json) in &results[1..] {
            prop_assert_eq!(json, &results[0].1, "{:?} against f16", dtype);
        }
    }

    /// Disagreeing shapes or dtypes are a reported failure, never a panic.
    #[test]
    fn disagreement_fails_without_panicking(
        shapes in (shape(), shape()),
        dtypes in (0usize..7, 0usize..7),
        fill in value(),
        tol in tolerance(),
    ) {
        const DTYPES: [DType; 7] = [DType::U8, DType::U32, DType::I64, DType::F16, DType::BF16, DType::F32, DType::F64];
        let make = |shape: &[usize], dtype: DType| {
            let fill = if dtype.is_float() || !fill.is_finite() { fill } else { fill.abs().min(200.0) };
            Tensor::full(fill, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
        };
        let (da, de) = (DTYPES[dtypes.0], DTYPES[dtypes.1]);
        let (a, e) = (make(&shapes.0, da), make(&shapes.1, de));
        for c in [compare(&a, &e, tol), compare_default(&a, &e)] {
            let _ = (c.to_string(), c.summary());
            if shapes.0 != shapes.1 || da != de {
                prop_assert!(!c.passed(), "{:?} {:?} against {:?} {:?} passed", shapes.0, da, shapes.1, de);
                prop_assert!(c.incompatible.is_some());
            } else {
                prop_assert!(c.incompatible.is_none(), "{:?}", c.incompatible);
            }
        }
    }
}

/// The cases the properties above first failed on, spelled out: sums of squares that
/// overflow or underflow f64 must not leak into the statistics.
#[test]
fn statistics_of_extreme_magnitudes() {
    let f64s = |v: &[f64]| Tensor::new(v, &Device::Cpu).unwrap();
    // |a - e| = [2e200, 0]: the squares overflow f64.
    let c = compare(&f64s(&[3e200, 1e200]), &f64s(&[1e200, 1e200]), Tolerance::default());
    assert!(close(c.mean_abs_error, 1e200, 1e-15), "{}", c.mean_abs_error);
    assert!(close(c.rms_error, 2f64.sqrt() * 1e200, 1e-15), "{}", c.rms_error);
    assert!(close(c.cosine.unwrap(), 4.0 / (10f64.sqrt() * 2f64.sqrt()), 1e-15));
    // The squares underflow to 0: the sides still point the same way.
    let c = compare(&f64s(&[1e-200, 2e-200]), &f64s(&[1.0, 2.0]), Tolerance::default());
    assert!(close(c.cosine.unwrap(), 1.0, 1e-15), "{:?}", c.cosine);
    let c = compare(&f64s(&[3e-170, 1e-170]), &f64s(&[1e-170, 1e-170]), Tolerance::default());
    assert!(close(c.rms_error, 2f64.sqrt() * 1e-170, 1e-15), "{}", c.rms_error);
    // A difference beyond f64::MAX is infinite, and so are its mean and RMS.
    let c = compare(&f64s(&[f64::MAX]), &f64s(&[-f64::MAX]), Tolerance::default());
    assert_eq!(
        (c.worst_abs(), c.mean_abs_error, c.rms_error),
        (f64::INFINITY, f64::INFINITY, f64::INFINITY)
    );
    assert_eq!(c.cosine, Some(-1.0));
}
