//! The port against HF `GemmaForCausalLM` (reference/gemma.safetensors, written by
//! capture.py): logits, every module's output, and every parameter's gradient.

use gemma_port::{Gemma, GemmaConfig};
use replica::blocks::{Activation, FeedForwardConfig, NormKind, TransformerBlockConfig};
use replica::check::{Bundle, Namespace, Parity, Report, Trace, TraceReport, Unmatched};
use replica::prelude::*;

fn bundle() -> Bundle {
    Bundle::load(
        concat!(env!("CARGO_MANIFEST_DIR"), "/reference/gemma.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// Runs the port, with a bug `planted` in its layer config, traced, and checks the
/// logits, the activations and the gradients.
fn check(bundle: &Bundle, planted: impl FnOnce(&mut TransformerBlockConfig)) -> (Report, TraceReport) {
    let config: GemmaConfig = bundle.config().unwrap();
    let mut layer = config.layer();
    planted(&mut layer);
    let mut run = Parity::new(bundle).unwrap();
    // Strict loading: a tensor the port does not read, or reads and the bundle lacks, is an error.
    let weights = WeightMap::new()
        .ignore(r"^lm_head\.weight$")
        .apply(run.params().clone(), bundle.origin());
    let model = weights
        .unwrap()
        .build(DType::F32, &Device::Cpu, |vb| Gemma::new(&config, &layer, vb))
        .unwrap();
    let ids = run.input("0").unwrap();
    let (logits, trace) = run.traced(Unmatched::NONE, || model.forward(&ids)).unwrap();
    run.tie("lm_head.weight", "model.embed_tokens.weight").unwrap();
    run.check_outputs_and_gradients(&[("logits", &logits)]).unwrap();
    (run.finish(), trace)
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
