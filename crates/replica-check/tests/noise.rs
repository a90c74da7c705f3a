//! The calibrated verdict: the port's error against the reference's float64 shadow,
//! as a multiple of the reference's own.

mod common;

use candle_core::{DType, Device, Tensor};
use common::seeded;
use replica_check::{compare_with_shadow, Bundle, BundleMetadata, Namespace, Report, Rule, Tolerance, NOISE_LIMIT};

const CALIBRATED: Rule = Rule::Calibrated { limit: NOISE_LIMIT };

/// A float64 "exact" tensor, and its float32 rounding as the reference.
fn exact_and_reference(n: usize, scale: f64) -> (Tensor, Tensor) {
    let exact: Vec<f64> = seeded(n, 7)
        .iter()
        .map(|&v| v as f64 * scale + 1e-9 * v as f64)
        .collect();
    let shadow = Tensor::new(exact.as_slice(), &Device::Cpu).unwrap();
    let reference = shadow.to_dtype(DType::F32).unwrap();
    (shadow, reference)
}

/// `reference` moved by `ulps` units in the last place of each element (alternating sign).
fn nudged(reference: &Tensor, ulps: f32) -> Tensor {
    let values: Vec<f32> = reference
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            v + sign * ulps * v.abs() * f32::EPSILON
        })
        .collect();
    Tensor::new(values.as_slice(), &Device::Cpu).unwrap()
}

#[test]
fn a_port_as_close_as_the_reference_passes() {
    let (shadow, reference) = exact_and_reference(4096, 1.0);
    let port = nudged(&reference, 1.0);
    let c = compare_with_shadow(&port, &reference, Some(&shadow), Tolerance::default(), CALIBRATED);
    let noise = c.noise.as_ref().unwrap();
    assert!(c.decided_by_noise && c.passed(), "{c}");
    assert!(noise.multiple > 0.5 && noise.multiple < 4.0, "{c}");
}

#[test]
fn a_bug_far_below_atol_fails_while_assert_close_passes() {
    // Values of size 1e-2 (a small-weight model's activations): an error of 1e-6 is a
    // tenth of atol, and about a hundred times the reference's rounding.
    let (shadow, reference) = exact_and_reference(4096, 1e-2);
    let port = (&reference + 1e-6).unwrap();
    let c = compare_with_shadow(&port, &reference, Some(&shadow), Tolerance::default(), CALIBRATED);
    assert!(c.passed_assert_close(), "{c}");
    assert!(!c.passed(), "{c}");
    assert!(c.multiple().unwrap() > 10.0 * NOISE_LIMIT, "{c}");
    assert!(c.to_string().contains("noise multiple"), "{c}");
    // The same comparison under the assert_close rule passes, the multiple still reported.
    let c = compare_with_shadow(
        &port,
        &reference,
        Some(&shadow),
        Tolerance::default(),
        Rule::AssertClose,
    );
    assert!(c.passed() && !c.decided_by_noise && c.noise.is_some(), "{c}");
}

#[test]
fn one_wrong_element_fails_by_the_max_error() {
    let (shadow, reference) = exact_and_reference(4096, 1.0);
    let mut values = reference.to_vec1::<f32>().unwrap();
    values[123] += 4e-6; // below atol + rtol * |x|, far above one rounding
    let port = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
    let c = compare_with_shadow(&port, &reference, Some(&shadow), Tolerance::default(), CALIBRATED);
    assert!(c.passed_assert_close() && !c.passed(), "{c}");
    assert_eq!(c.noise.as_ref().unwrap().port_max_at, vec![123]);
}

#[test]
fn an_exact_reference_does_not_make_rounding_infinite() {
    // A copy or a ReLU: the reference equals its shadow; a port one ulp off passes.
    let exact: Vec<f64> = seeded(512, 3).iter().map(|&v| v as f64).collect();
    let shadow = Tensor::new(exact.as_slice(), &Device::Cpu).unwrap();
    let reference = shadow.to_dtype(DType::F32).unwrap();
    let c = compare_with_shadow(&reference, &reference, Some(&shadow), Tolerance::default(), CALIBRATED);
    assert_eq!(c.multiple(), Some(0.0));
    let port = nudged(&reference, 1.0);
    let c = compare_with_shadow(&port, &reference, Some(&shadow), Tolerance::default(), CALIBRATED);
    assert!(c.passed(), "{c}");
    let port = nudged(&reference, 64.0);
    let c = compare_with_shadow(&port, &reference, Some(&shadow), Tolerance::default(), CALIBRATED);
    assert!(!c.passed(), "{c}");
}

#[test]
fn a_reference_far_from_its_shadow_is_judged_by_assert_close() {
    // An edited bundle: the reference moved, the shadow not. The port matches the
    // shadow, but the bundle contradicts itself, so the multiple does not decide.
    let (shadow, reference) = exact_and_reference(64, 1.0);
    let mut edited = reference.to_vec1::<f32>().unwrap();
    edited[7] += 0.1;
    let edited = Tensor::new(edited.as_slice(), &Device::Cpu).unwrap();
    let c = compare_with_shadow(&reference, &edited, Some(&shadow), Tolerance::default(), CALIBRATED);
    assert!(!c.noise.as_ref().unwrap().reference_agrees, "{c}");
    assert!(!c.decided_by_noise && !c.passed(), "{c}");
}

#[test]
fn non_finite_elements_must_match_the_reference() {
    let shadow = Tensor::new(&[1.0f64, f64::INFINITY, 3.0], &Device::Cpu).unwrap();
    let reference = Tensor::new(&[1.0f32, f32::INFINITY, 3.0], &Device::Cpu).unwrap();
    let port = Tensor::new(&[1.0f32, f32::NEG_INFINITY, 3.0], &Device::Cpu).unwrap();
    let c = compare_with_shadow(&port, &reference, Some(&shadow), Tolerance::default(), CALIBRATED);
    assert_eq!(c.noise.as_ref().unwrap().nonfinite_mismatched, 1);
    assert!(!c.passed(), "{c}");
    let port = Tensor::new(&[1.0f32, f32::INFINITY, f32::NAN], &Device::Cpu).unwrap();
    let c = compare_with_shadow(&port, &reference, Some(&shadow), Tolerance::default(), CALIBRATED);
    assert!(!c.passed(), "{c}");
}

#[test]
fn a_shape_mismatch_is_a_shape_mismatch() {
    let (shadow, reference) = exact_and_reference(8, 1.0);
    let port = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let c = compare_with_shadow(&port, &reference, Some(&shadow), Tolerance::default(), CALIBRATED);
    assert!(
        !c.passed() && c.incompatible.as_deref().unwrap().starts_with("shapes differ"),
        "{c}"
    );
    assert!(c.max_abs_diff.is_none() && c.multiple().is_none(), "{c}");
}

fn bundle_with_shadow() -> Bundle {
    let (shadow, reference) = exact_and_reference(16, 1e-2);
    let mut bundle = Bundle::new(BundleMetadata::new("test", ("torch", "0"), "float32"));
    bundle.insert(Namespace::Output, "0", reference);
    bundle.insert_shadow(Namespace::Output, "0", shadow);
    bundle
}

#[test]
fn reports_use_the_shadow_and_the_bundle_rule() {
    let bundle = bundle_with_shadow();
    let port = (bundle.output("0").unwrap() + 1e-6).unwrap();
    let mut report = Report::new("noise");
    report.check(&bundle, Namespace::Output, "0", &port, Tolerance::default());
    assert!(!report.passed(), "{report}");
    assert!(report.worst_multiple().unwrap() > NOISE_LIMIT);
    let text = report.to_string();
    assert!(text.contains("FAIL (noise x"), "{text}");

    let bundle = bundle.with_rule(Rule::AssertClose);
    let mut report = Report::new("assert_close");
    report.check(&bundle, Namespace::Output, "0", &port, Tolerance::default());
    assert!(report.passed(), "{report}");
}

#[test]
fn shadows_round_trip_and_are_validated_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.safetensors");
    let bundle = bundle_with_shadow();
    bundle.save(&path, false).unwrap();
    let loaded = Bundle::load(&path, &Device::Cpu).unwrap();
    assert!(loaded.has_shadow() && loaded.metadata().shadow.as_ref().unwrap().is_present());
    assert_eq!(loaded.shadow(Namespace::Output, "0").unwrap().dtype(), DType::F64);

    // A shadow in f32, of another shape, or of a tensor the bundle lacks is refused.
    let cases: [(&str, Tensor, &str); 3] = [
        ("0", Tensor::zeros(16, DType::F32, &Device::Cpu).unwrap(), "must be f64"),
        (
            "0",
            Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap(),
            "must be f64 of shape [16]",
        ),
        (
            "1",
            Tensor::zeros(16, DType::F64, &Device::Cpu).unwrap(),
            "shadows no `output/1`",
        ),
    ];
    for (name, shadow, needle) in cases {
        let mut bad = bundle_with_shadow();
        bad.insert_shadow(Namespace::Output, name, shadow);
        let err = bad
            .save(dir.path().join("bad.safetensors"), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    // Parameters have no shadow: they are the reference's inputs, not its results.
    let mut bad = bundle_with_shadow();
    bad.insert(
        Namespace::Param,
        "w",
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    );
    bad.insert_shadow(
        Namespace::Param,
        "w",
        Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap(),
    );
    let err = bad
        .save(dir.path().join("bad.safetensors"), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("only outputs, activations and gradients"), "{err}");
}
