//! The port against HF `GemmaForCausalLM` (reference/gemma.safetensors, written by
//! capture.py): logits, every module's output, and every parameter's gradient.

use gemma_port::{parity, GemmaConfig};
use replica::blocks::{Activation, FeedForwardConfig, NormKind};
use replica::check::{Bundle, Namespace, Report, Trace, TraceReport};
use replica::models::decoder::{CausalDecoder, DecoderSpec};
use replica::prelude::*;

fn bundle() -> Bundle {
    Bundle::load(
        concat!(env!("CARGO_MANIFEST_DIR"), "/reference/gemma.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// The port, with a bug `planted` in its spec, against the bundle.
fn check(bundle: &Bundle, planted: impl FnOnce(&mut DecoderSpec)) -> (Report, TraceReport) {
    let mut spec = bundle.config::<GemmaConfig>().unwrap().spec();
    planted(&mut spec);
    parity(bundle, &spec).unwrap()
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
    let (report, trace) = check(&bundle, |spec| spec.block.norm = NormKind::RmsNorm);
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
    let (report, trace) = check(&bundle, |spec| match &mut spec.block.feed_forward {
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
    let spec = bundle.config::<GemmaConfig>().unwrap().spec();
    let params = bundle.namespace(Namespace::Param).into_iter().collect();
    let model = CausalDecoder::new(&spec, VarBuilder::from_tensors(params, DType::F32, &Device::Cpu)).unwrap();
    let ids = bundle.input("0").unwrap();
    let (logits, trace) = replica::check::trace::record(|| model.logits_t(ids, None, false));
    logits.unwrap();
    let dump = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gemma-trace.safetensors");
    trace.save(&dump, true).unwrap();
    assert_eq!(
        Trace::load(&dump, &Device::Cpu).unwrap().names().collect::<Vec<_>>(),
        trace.names().collect::<Vec<_>>()
    );
}
