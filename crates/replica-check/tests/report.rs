//! `Report`: named comparisons against a bundle, as one table.

use candle_core::{Device, Tensor};
use replica_check::{Bundle, BundleMetadata, Namespace, Report, Tolerance};

fn f32s(values: &[f32]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

fn bundle() -> Bundle {
    let mut b = Bundle::new(BundleMetadata::new("m", ("torch", "2.5.1"), "float32"));
    b.insert(Namespace::Output, "0", f32s(&[1.0, 2.0]));
    b.insert(Namespace::Output, "1", f32s(&[3.0, 4.0]));
    b
}

#[test]
fn a_report_passes_only_when_every_row_passes() {
    let b = bundle();
    let mut report = Report::new("case");
    report.check(&b, Namespace::Output, "0", &f32s(&[1.0, 2.0]), Tolerance::default());
    assert!(report.passed());
    report.check(&b, Namespace::Output, "1", &f32s(&[3.0, 5.0]), Tolerance::default());
    assert!(!report.passed());
    let failed: Vec<&str> = report.failures().map(|r| r.name.as_str()).collect();
    assert_eq!(failed, ["output/1"]);
    let text = report.to_string();
    assert!(text.starts_with("case\n"), "{text}");
    assert!(text.contains("1 of 2 tensors match."), "{text}");
    assert!(text.contains("FAIL (1/2)"), "{text}");
    assert!(text.contains("output/1: Tensors are not close!"), "{text}");
}

#[test]
fn a_missing_reference_is_a_failed_row_not_an_error() {
    let b = bundle();
    let mut report = Report::new("");
    report.check(&b, Namespace::Output, "logits", &f32s(&[1.0]), Tolerance::default());
    assert!(!report.passed());
    let row = &report.rows[0];
    assert_eq!(row.name, "output/logits");
    let why = row.comparison.incompatible.as_deref().unwrap();
    assert!(
        why.contains("bundle has no `output/logits`") && why.contains("it holds 0, 1"),
        "{why}"
    );
    assert!(report.to_string().contains("FAIL (missing)"));
    assert!(row.missing_reference && report.missing().count() == 1);
}

#[test]
fn a_report_round_trips_through_json() {
    let b = bundle();
    let mut report = Report::new("json");
    report.check(
        &b,
        Namespace::Output,
        "0",
        &f32s(&[1.0, f32::NAN]),
        Tolerance::default(),
    );
    let json = serde_json::to_string(&report).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    assert_eq!(back.rows[0].comparison.mismatched, 1);
}

#[test]
fn an_input_the_port_never_reads_fails_the_run() {
    let mut metadata = BundleMetadata::new("m", ("torch", "2.5.1"), "float32");
    metadata.inputs = vec!["0".into(), "attention_mask".into()];
    let mut b = Bundle::new(metadata);
    b.insert(Namespace::Output, "0", f32s(&[1.0, 2.0]));
    b.insert(Namespace::Input, "0", f32s(&[1.0, 2.0]));
    b.insert(Namespace::Input, "attention_mask", f32s(&[1.0, 0.0]));
    let mut run = replica_check::Parity::new(&b).unwrap();
    let x = run.input("0").unwrap();
    run.check_outputs(&[("0", &x)]);
    let report = run.finish();
    assert!(!report.passed());
    let failed: Vec<&str> = report.failures().map(|r| r.name.as_str()).collect();
    assert_eq!(failed, ["input/attention_mask"]);
    assert!(report.to_string().contains("the port never read it"), "{report}");
}

#[test]
fn a_config_stored_as_json_text_is_read_as_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let with_config = |config: &str| {
        let mut metadata = BundleMetadata::new("m", ("torch", "2.5.1"), "float32");
        metadata.config = serde_json::Value::String(config.into());
        let mut b = Bundle::new(metadata);
        b.insert(Namespace::Output, "0", f32s(&[1.0, 2.0]));
        b
    };
    with_config(r#"{"hidden_size": 8}"#)
        .save(dir.path().join("text.safetensors"), false)
        .unwrap();
    let read = Bundle::load(dir.path().join("text.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(read.metadata().config, serde_json::json!({"hidden_size": 8}));

    with_config("hidden_size=8")
        .save(dir.path().join("bad.safetensors"), false)
        .unwrap();
    let err = Bundle::load(dir.path().join("bad.safetensors"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field `config` is a string that is not the text of a JSON object"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_bundle_without_activations_runs_the_forward_pass_untraced() {
    let b = bundle();
    let mut run = replica_check::Parity::new(&b).unwrap();
    let (y, trace) = run
        .traced(replica_check::Unmatched::NONE, || {
            let y = f32s(&[1.0, 2.0]);
            replica_check::tap("some.module", &y);
            Ok(y)
        })
        .unwrap();
    assert!(trace.rows.is_empty() && trace.passed(), "{trace}");
    run.check_outputs(&[("0", &y)]);
    let report = run.finish();
    // Only the output: the tap recorded nothing the bundle could not compare.
    assert_eq!(report.rows.len(), 1);
    assert!(report.passed(), "{report}");
}
