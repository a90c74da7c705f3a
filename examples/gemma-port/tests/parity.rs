//! The port against HF `GemmaForCausalLM` (reference/gemma.safetensors, written by
//! capture.py): logits, every module's output, and every parameter's gradient.

use gemma_port::{parity, Gemma, GemmaConfig};
use replica::blocks::{Activation, FeedForwardConfig, NormKind, TransformerBlockConfig};
use replica::check::{Bundle, Namespace, Report, Trace, TraceReport};
use replica::prelude::*;

fn bundle() -> Bundle {
    Bundle::load(
        concat!(env!("CARGO_MANIFEST_DIR"), "/reference/gemma.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// The port, with a bug `planted` in its layer config, against the bundle.
fn check(bundle: &Bundle, planted: impl FnOnce(&mut TransformerBlockConfig)) -> (Report, TraceReport) {
    let config: GemmaConfig = bundle.config().unwrap();
    let mut layer = config.layer();
    planted(&mut layer);
    parity(bundle, &config, &layer).unwrap()
}

#[test]
fn the_port_matches_hf_gemma() {
    let bundle = bundle();
    let (report, trace) = check(&bundle, |_| {});
    println!("{report}");
    assert!(report.passed());
    assert!(trace.passed());
    assert_eq!(report.rows.len(), 56);
}

/// LLaMA's RMSNorm (scale `w`, not `1 + w`) in Gemma's layers.
#[test]
fn llamas_norm_is_named_at_the_first_norm() {
    let bundle = bundle();
    let (report, trace) = check(&bundle, |layer| layer.norm = NormKind::RmsNorm);
    println!("{trace}");
    assert!(!report.passed());
    assert_eq!(
        trace.first_divergence.as_deref(),
        Some("model.layers.0.input_layernorm")
    );
}

/// The erf GELU where Gemma's MLP uses the tanh approximation.
#[test]
fn the_erf_gelu_is_named_at_the_first_activation() {
    let bundle = bundle();
    let (report, trace) = check(&bundle, |layer| match &mut layer.feed_forward {
        FeedForwardConfig::Glu(mlp) => mlp.activation = Activation::Gelu,
        other => panic!("Gemma's MLP is gated, got {other:?}"),
    });
    assert!(!report.passed());
    assert_eq!(trace.first_divergence.as_deref(), Some("model.layers.0.mlp.act_fn"));
}

/// A dump of the port's activations, for `replica trace` (docs/porting-a-paper.md).
#[test]
fn the_trace_dumps_for_replica_trace() {
    let bundle = bundle();
    let config: GemmaConfig = bundle.config().unwrap();
    let vb = VarBuilder::from_tensors(
        bundle.namespace(Namespace::Param).into_iter().collect(),
        DType::F32,
        &Device::Cpu,
    );
    let model = Gemma::new(&config, &config.layer(), vb).unwrap();
    let ids = bundle.input("0").unwrap();
    let (logits, trace) = replica::check::trace::record(|| model.forward(ids));
    logits.unwrap();
    let dump = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gemma-trace.safetensors");
    trace.save(&dump, true).unwrap();
    assert_eq!(
        Trace::load(&dump, &Device::Cpu).unwrap().names().collect::<Vec<_>>(),
        trace.names().collect::<Vec<_>>()
    );
}
