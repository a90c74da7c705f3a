//! candle's operations against the PyTorch fixtures, and proof that the harness
//! catches real mistakes in them: each planted bug must fail, at the right place.

use candle_core::{DType, Device, Module};
use candle_nn::Linear;
use replica_check::{compare_trace, trace, Error, Namespace, Parity, Tolerance, WeightMap};
use replica_suite::candle_ops::cases;

mod common;

use common::fixture;

#[test]
fn every_case_matches_its_torch_reference() {
    common::assert_all_pass(&cases());
}

#[test]
fn every_fixture_carries_gradients_where_the_case_checks_them() {
    common::assert_stored_tensors_checked(&cases());
}

#[test]
fn tanh_gelu_does_not_pass_for_erf_gelu() {
    let bundle = fixture("gelu_erf");
    let mut run = Parity::new(&bundle).unwrap();
    let wrong = run.input("0").unwrap().gelu().unwrap();
    run.check_outputs(&[("0", &wrong)]);
    let report = run.finish();
    assert!(!report.passed());
    let comparison = &report.rows[0].comparison;
    // The two approximations differ by up to ~5e-4 near |x| = 2: far above atol 1e-5.
    assert!(comparison.worst_abs() > 1e-4, "{comparison}");
    assert!(comparison.mismatched > comparison.elements / 4, "{comparison}");
}

#[test]
fn layer_norm_with_wrong_eps_is_caught() {
    let bundle = fixture("layer_norm");
    let mut run = Parity::new(&bundle).unwrap();
    let (x, w, b) = (
        run.input("0").unwrap(),
        run.param("weight").unwrap(),
        run.param("bias").unwrap(),
    );
    let y = candle_nn::ops::layer_norm(&x, &w, &b, 1e-3).unwrap();
    run.check_outputs(&[("0", &y)]);
    assert!(!run.finish().passed());
}

#[test]
fn a_weight_left_untransposed_is_caught() {
    let bundle = fixture("linear");
    let mut run = Parity::new(&bundle).unwrap();
    let w = run.param("weight").unwrap(); // [8, 16]
    let x = run.input("0").unwrap(); // [2, 5, 16]
    let (out, inp) = w.dims2().unwrap();
    // Reading the [out, in] matrix as if it were stored [in, out]: same numbers, wrong layout.
    let misread = w.reshape((inp, out)).unwrap().t().unwrap();
    let y = Linear::new(misread, Some(run.param("bias").unwrap()))
        .forward(&x)
        .unwrap();
    run.check_outputs(&[("0", &y)]);
    let report = run.finish();
    assert!(!report.passed());
    assert!(report.rows[0].comparison.cosine.unwrap() < 0.9);
}

#[test]
fn trace_names_the_first_divergent_module() {
    let bundle = fixture("two_layer_mlp");
    let p = |name: &str| bundle.param(name).unwrap().clone();
    let fc1 = Linear::new(p("0.weight"), Some(p("0.bias")));
    let fc2 = Linear::new(p("2.weight"), Some(p("2.bias")));
    let x = bundle.input("0").unwrap();
    // The planted bug: the tanh approximation where the reference used erf.
    let (_, recorded) = trace::record(|| {
        let h = fc1.forward(x).unwrap();
        trace::tap("0", &h);
        let h = h.gelu().unwrap();
        trace::tap("1", &h);
        trace::tap("2", &fc2.forward(&h).unwrap());
    });
    let report = compare_trace(&recorded, &bundle, Tolerance::for_dtype(DType::F32));
    assert_eq!(report.compared(), 3);
    assert!(report.rows[0].comparison.as_ref().unwrap().passed(), "{report}");
    assert_eq!(report.first_divergence.as_deref(), Some("1"), "{report}");
    assert!(report.to_string().contains("First divergent module: `1`"), "{report}");
}

#[test]
fn attention_without_the_qkv_split_lists_every_problem() {
    let bundle = fixture("multihead_attention");
    // Forgot the split: the model asks for q/k/v, the file has the fused in_proj.
    let weights = WeightMap::new()
        .rename(r"^attn\.", "")
        .apply(bundle.namespace(Namespace::Param), bundle.origin())
        .unwrap();
    let err = weights
        .build(DType::F32, &Device::Cpu, |vb| {
            for name in ["q", "k", "v", "out_proj"] {
                candle_nn::linear(16, 16, vb.pp(name))?;
            }
            Ok(())
        })
        .unwrap_err();
    let Error::Load(report) = &err else {
        panic!("expected a load report, got {err}")
    };
    assert_eq!(report.missing.len(), 6, "{err}"); // q, k, v: weight and bias
    assert_eq!(report.unused.len(), 2, "{err}"); // in_proj_weight, in_proj_bias
    let text = err.to_string();
    assert!(text.contains("multihead_attention.safetensors"), "{text}");
    assert!(
        text.contains("missing: `q.weight` (the model expects shape [16, 16])"),
        "{text}"
    );
    assert!(
        text.contains("unused: `in_proj_weight`") && text.contains("from `attn.in_proj_weight`"),
        "{text}"
    );
}

#[test]
fn a_wrong_gradient_is_caught() {
    let bundle = fixture("softmax");
    let mut run = Parity::new(&bundle).unwrap();
    let x = run.input("0").unwrap();
    // Softmax over the wrong axis: shapes agree, values and gradients do not.
    let y = candle_nn::ops::softmax(&x, 1).unwrap();
    run.check_backward(&[("0", &y)]).unwrap();
    let report = run.finish();
    let grad = report
        .rows
        .iter()
        .find(|r| r.name == "grad/input/0")
        .expect("input gradient row");
    assert!(!grad.comparison.passed(), "{report}");
}
