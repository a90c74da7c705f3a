//! A check that compared nothing, or compared the wrong thing, is never read as clean:
//! an empty trace fails, a reference tensor the component needs and the bundle lacks
//! is an input error (exit 2) naming it, and a shape mismatch says so instead of
//! printing a difference of zero.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use replica_check::{Bundle, BundleMetadata, Namespace};

fn fixture(stem: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(format!("{stem}.safetensors"))
}

fn replica(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the replica binary runs")
}

/// `replica check` of the `linear_with_bias` case against the bundle at `reference`.
fn check_linear(reference: &Path, extra: &[&str]) -> Output {
    let reference = reference.to_str().unwrap();
    let args = ["check", "--model", "linear_with_bias", "--reference", reference];
    replica(&[&args[..], extra].concat())
}

/// `stem`'s bundle rebuilt with `edit` applied to its tensors, saved under `dir`.
fn edited(dir: &Path, stem: &str, edit: impl Fn(Namespace, &str, Tensor) -> Option<(String, Tensor)>) -> PathBuf {
    let original = Bundle::load(fixture(stem), &Device::Cpu).unwrap();
    let mut metadata = original.metadata().clone();
    (metadata.activations, metadata.inputs, metadata.outputs) = (Vec::new(), Vec::new(), Vec::new());
    metadata.shadow = None;
    let mut bundle = Bundle::new(metadata);
    for ns in Namespace::ALL {
        for (name, tensor) in original.namespace(ns) {
            if let Some((name, tensor)) = edit(ns, &name, tensor) {
                bundle.insert(ns, name, tensor);
            }
        }
    }
    let path = dir.join("edited.safetensors");
    bundle.save(&path, true).unwrap();
    path
}

#[test]
fn a_trace_that_compared_nothing_fails_and_says_so() {
    // The reference holds an activation; a Linear at the root records none.
    let dir = tempfile::tempdir().unwrap();
    let mut bundle = Bundle::load(fixture("blocks/linear"), &Device::Cpu).unwrap();
    let y = bundle.output("0").unwrap().clone();
    bundle.insert(Namespace::Activation, "fc", y);
    let path = dir.path().join("with_activation.safetensors");
    bundle.save(&path, true).unwrap();
    let out = check_linear(&path, &["--trace"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("the port never recorded it"), "{text}");
    assert!(
        text.contains("nothing was compared with them, so the case is not clean"),
        "{text}"
    );
    assert!(!text.contains("No module diverges"), "{text}");
}

#[test]
fn a_misnamed_output_is_missing_not_a_zero_difference() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited(dir.path(), "blocks/linear", |ns, name, t| match (ns, name) {
        (Namespace::Output, "0") => Some(("y".into(), t)),
        (Namespace::OutputGrad | Namespace::ParamGrad | Namespace::InputGrad, _) => None,
        _ => Some((name.into(), t)),
    });
    let out = check_linear(&path, &[]);
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(2), "{text}\n{err}");
    assert!(err.contains("lacks 1 tensor the component compares: output/0"), "{err}");
    assert!(err.contains("it holds y"), "{err}");
    assert!(text.contains("ERROR"), "{text}");
}

#[test]
fn a_shape_mismatch_is_reported_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited(dir.path(), "blocks/linear", |ns, name, t| match (ns, name) {
        (Namespace::Output, "0") => Some((name.into(), t.narrow(0, 0, 1).unwrap())),
        (Namespace::OutputGrad | Namespace::ParamGrad | Namespace::InputGrad, _) => None,
        _ => Some((name.into(), t)),
    });
    let out = check_linear(&path, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL (shape)"), "{text}");
    assert!(text.contains("shapes differ"), "{text}");
    let row = text.lines().find(|l| l.starts_with("output/0")).unwrap();
    assert!(!row.contains("0.00e0"), "{row}");
}

#[test]
fn an_empty_report_is_not_clean() {
    let report = replica_check::Report::new("empty");
    assert!(!report.passed());
    assert!(report.to_string().contains("Nothing was compared"));
    let bundle = Bundle::new(BundleMetadata::new("c", ("torch", "0"), "float32"));
    assert!(!bundle.has_shadow());
}
