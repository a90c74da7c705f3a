//! Activation traces and module-by-module comparison against a bundle.

mod common;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use common::{flat_f64, seeded_tensor};
use replica_check::trace::{self, is_active};
use replica_check::{compare_trace, tap, tap_tuple, Bundle, BundleMetadata, Namespace, Tolerance, WeightMap};

fn t(v: f32) -> Tensor {
    Tensor::new(&[v], &Device::Cpu).unwrap()
}

fn value(tensor: &Tensor) -> f32 {
    tensor.to_vec1::<f32>().unwrap()[0]
}

#[test]
fn record_captures_taps_in_order() {
    let ((), trace) = trace::record(|| {
        tap("b", &t(1.0));
        tap("a", &t(2.0));
        tap("c.0", &t(3.0));
    });
    assert_eq!(trace.names().collect::<Vec<_>>(), ["b", "a", "c.0"]);
    assert_eq!(trace.len(), 3);
    assert!(!trace.is_empty());
    assert_eq!(value(trace.get("a").unwrap()), 2.0);
    assert!(trace.get("d").is_none());
}

#[test]
fn record_returns_the_closure_value() {
    let (value, trace) = trace::record(|| {
        assert!(is_active());
        41 + 1
    });
    assert_eq!(value, 42);
    assert!(trace.is_empty());
}

#[test]
fn repeated_calls_are_numbered() {
    let ((), trace) = trace::record(|| {
        tap("blk", &t(0.0));
        tap("other", &t(9.0));
        tap("blk", &t(1.0));
        tap("blk", &t(2.0));
    });
    assert_eq!(trace.names().collect::<Vec<_>>(), ["blk", "other", "blk#1", "blk#2"]);
    assert_eq!(value(trace.get("blk#2").unwrap()), 2.0);
}

#[test]
fn tuple_outputs_are_numbered_by_position() {
    let ((), trace) = trace::record(|| {
        tap_tuple("attn", &[&t(1.0), &t(2.0)]);
        tap_tuple("attn", &[&t(3.0), &t(4.0)]);
    });
    assert_eq!(
        trace.names().collect::<Vec<_>>(),
        ["attn:0", "attn:1", "attn#1:0", "attn#1:1"]
    );
    assert_eq!(value(trace.get("attn#1:0").unwrap()), 3.0);
}

#[test]
fn the_root_module_is_not_recorded() {
    let ((), trace) = trace::record(|| {
        tap("", &t(1.0));
        tap_tuple("", &[&t(1.0)]);
        tap("x", &t(2.0));
    });
    assert_eq!(trace.names().collect::<Vec<_>>(), ["x"]);
}

#[test]
fn taps_outside_record_record_nothing() {
    assert!(!is_active());
    tap("lost", &t(1.0));
    tap_tuple("lost", &[&t(1.0)]);
    let ((), trace) = trace::record(|| tap("kept", &t(2.0)));
    assert_eq!(trace.names().collect::<Vec<_>>(), ["kept"]);
    assert!(!is_active());
}

#[test]
fn nested_records_keep_inner_and_outer_apart() {
    let (inner, outer) = trace::record(|| {
        tap("outer.before", &t(1.0));
        tap("shared", &t(1.0));
        let ((), inner) = trace::record(|| {
            tap("inner", &t(2.0));
            tap("shared", &t(2.0));
        });
        assert!(is_active(), "the outer trace is still recording");
        tap("outer.after", &t(3.0));
        tap("shared", &t(3.0));
        inner
    });
    assert_eq!(inner.names().collect::<Vec<_>>(), ["inner", "shared"]);
    // Call numbering is per trace: the inner call did not count for the outer.
    assert_eq!(
        outer.names().collect::<Vec<_>>(),
        ["outer.before", "shared", "outer.after", "shared#1"]
    );
    assert_eq!(value(outer.get("shared#1").unwrap()), 3.0);
    assert!(!is_active());
}

#[test]
fn a_panic_inside_record_leaves_tracing_off() {
    let result = std::panic::catch_unwind(|| {
        trace::record(|| {
            tap("before.panic", &t(1.0));
            panic!("forward failed");
        })
    });
    assert!(result.is_err());
    assert!(!is_active());
    tap("after", &t(1.0));
    let ((), trace) = trace::record(|| tap("fresh", &t(1.0)));
    // Nothing from the panicked run leaks into the next trace.
    assert_eq!(trace.names().collect::<Vec<_>>(), ["fresh"]);
}

#[test]
fn traces_are_per_thread() {
    let ((), trace) = trace::record(|| {
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(!is_active());
                tap("other.thread", &t(1.0));
            });
        });
        tap("this.thread", &t(1.0));
    });
    assert_eq!(trace.names().collect::<Vec<_>>(), ["this.thread"]);
}

/// `nn.Sequential(Linear(4, 5), ReLU(), Linear(5, 3))`, tapping as PyTorch names it.
struct Mlp {
    first: Linear,
    second: Linear,
}

impl Mlp {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            first: candle_nn::linear(4, 5, vb.pp("0"))?,
            second: candle_nn::linear(5, 3, vb.pp("2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.first.forward(x)?;
        tap("0", &h);
        let h = h.relu()?;
        tap("1", &h);
        let y = self.second.forward(&h)?;
        tap("2", &y);
        Ok(y)
    }
}

fn params() -> Vec<(&'static str, Tensor)> {
    vec![
        ("0.weight", seeded_tensor(&[5, 4], 1)),
        ("0.bias", seeded_tensor(&[5], 2)),
        ("2.weight", seeded_tensor(&[3, 5], 3)),
        ("2.bias", seeded_tensor(&[3], 4)),
    ]
}

fn input() -> Tensor {
    seeded_tensor(&[6, 4], 5)
}

/// A reference bundle from a correct run.
fn reference() -> Bundle {
    let mut bundle = Bundle::new(BundleMetadata::new(
        "torch.nn.Sequential",
        ("torch", "2.5.1"),
        "float32",
    ));
    for (name, tensor) in params() {
        bundle.insert(Namespace::Param, name, tensor);
    }
    bundle.insert(Namespace::Input, "0", input());
    let model = load(&bundle, |_, t| t);
    let (y, trace) = trace::record(|| model.forward(&input()).unwrap());
    for entry in &trace.entries {
        bundle.insert(Namespace::Activation, entry.name.clone(), entry.tensor.clone());
    }
    bundle.insert(Namespace::Output, "0", y);
    bundle
}

/// The model from the bundle's parameters, each passed through `edit` first.
fn load(bundle: &Bundle, edit: impl Fn(&str, Tensor) -> Tensor) -> Mlp {
    let params = bundle
        .namespace(Namespace::Param)
        .into_iter()
        .map(|(name, tensor)| {
            let edited = edit(&name, tensor);
            (name, edited)
        })
        .collect();
    WeightMap::new()
        .apply(params, bundle.origin())
        .unwrap()
        .build(DType::F32, &Device::Cpu, Mlp::new)
        .unwrap()
}

fn run(model: &Mlp) -> replica_check::Trace {
    trace::record(|| model.forward(&input()).unwrap()).1
}

#[test]
fn a_faithful_model_matches_every_module() {
    let bundle = reference();
    assert_eq!(bundle.metadata().activations, ["0", "1", "2"]);
    let report = compare_trace(&run(&load(&bundle, |_, t| t)), &bundle, Tolerance::default());
    assert!(report.passed(), "{report}");
    assert_eq!(report.first_divergence, None);
    assert_eq!(report.compared(), 3);
    assert!(report.not_recorded.is_empty());
    assert_eq!(
        report.rows.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["0", "1", "2"]
    );
    assert_eq!(report.rows[2].shape, vec![6, 3]);
    let text = report.to_string();
    assert!(
        text.contains("3 modules recorded, 3 compared with the reference."),
        "{text}"
    );
    assert!(text.ends_with("No module diverges."), "{text}");
}

#[test]
fn a_perturbed_second_layer_diverges_at_module_2() {
    let bundle = reference();
    let model = load(
        &bundle,
        |name, t| {
            if name == "2.weight" {
                (t + 1e-2).unwrap()
            } else {
                t
            }
        },
    );
    let report = compare_trace(&run(&model), &bundle, Tolerance::default());
    assert!(!report.passed());
    assert_eq!(report.first_divergence.as_deref(), Some("2"));
    let verdicts: Vec<bool> = report
        .rows
        .iter()
        .map(|r| r.comparison.as_ref().unwrap().passed())
        .collect();
    assert_eq!(verdicts, [true, true, false]);
    assert_eq!(report.first_failure().unwrap().path, "2");
    let text = report.to_string();
    assert!(text.contains("First divergent module: `2`"), "{text}");
    assert!(text.contains("<- first divergence"), "{text}");
    assert!(text.contains("Mismatched elements:"), "{text}");
}

#[test]
fn a_perturbed_first_layer_diverges_at_module_0() {
    let bundle = reference();
    let model = load(&bundle, |name, t| if name == "0.bias" { (t + 0.5).unwrap() } else { t });
    let report = compare_trace(&run(&model), &bundle, Tolerance::default());
    assert_eq!(report.first_divergence.as_deref(), Some("0"));
    assert!(report.to_string().contains("First divergent module: `0`"));
}

#[test]
fn an_activation_never_recorded_is_listed() {
    let mut bundle = reference();
    bundle.insert(Namespace::Activation, "3", seeded_tensor(&[6, 3], 9));
    let report = compare_trace(&run(&load(&bundle, |_, t| t)), &bundle, Tolerance::default());
    assert_eq!(report.not_recorded, vec!["3".to_string()]);
    assert!(report.passed(), "missing activations are listed, not failures");
    assert!(report
        .to_string()
        .contains("The reference has activations the trace never recorded: 3"));
}

#[test]
fn a_recorded_activation_without_reference_has_no_comparison() {
    let full = reference();
    let mut meta = full.metadata().clone();
    meta.activations.clear();
    let mut bundle = Bundle::new(meta);
    for (name, tensor) in full.namespace(Namespace::Param) {
        bundle.insert(Namespace::Param, name, tensor);
    }
    for name in ["0", "2"] {
        bundle.insert(Namespace::Activation, name, full.activation(name).unwrap().clone());
    }
    let report = compare_trace(&run(&load(&bundle, |_, t| t)), &bundle, Tolerance::default());
    assert_eq!(report.rows.len(), 3);
    assert_eq!(report.rows[1].path, "1");
    assert!(report.rows[1].comparison.is_none());
    assert_eq!(report.compared(), 2);
    assert!(report.passed());
    let text = report.to_string();
    assert!(text.contains("no reference"), "{text}");
    assert!(
        text.contains("3 modules recorded, 2 compared with the reference."),
        "{text}"
    );
}

#[test]
fn an_extra_call_has_no_reference() {
    let bundle = reference();
    let model = load(&bundle, |_, t| t);
    let trace = trace::record(|| {
        let y = model.forward(&input()).unwrap();
        // A second call of module "2": the reference has no "2#1".
        tap("2", &y.narrow(0, 0, 2).unwrap());
    })
    .1;
    let report = compare_trace(&trace, &bundle, Tolerance::default());
    assert!(report.passed(), "{report}");
    assert_eq!(report.rows[3].path, "2#1");
    assert!(report.rows[3].comparison.is_none());
}

#[test]
fn a_shape_change_diverges_without_panicking() {
    let bundle = reference();
    let model = load(&bundle, |_, t| t);
    // A reference whose "1" has another shape fails at "1".
    let mut wrong = Bundle::new(bundle.metadata().clone());
    for (name, tensor) in bundle.activations() {
        let tensor = if name == "1" {
            tensor.narrow(0, 0, 1).unwrap()
        } else {
            tensor.clone()
        };
        wrong.insert(Namespace::Activation, name, tensor);
    }
    let report = compare_trace(&run(&model), &wrong, Tolerance::default());
    assert_eq!(report.first_divergence.as_deref(), Some("1"));
    let c = report.rows[1].comparison.as_ref().unwrap();
    assert!(c.incompatible.as_deref().unwrap().contains("shapes differ"));
}

#[test]
fn the_reference_output_matches_the_trace_tail() {
    let bundle = reference();
    assert_eq!(
        flat_f64(bundle.output("0").unwrap()),
        flat_f64(bundle.activation("2").unwrap())
    );
}
