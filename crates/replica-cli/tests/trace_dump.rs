//! `replica trace`: a run's dumped activations against a reference bundle. The
//! run is the built-in Gemma decoder on the Gemma fixture's weights, correct or
//! with a planted bug; the command names the first divergent module, and fails
//! on what the two sides do not share unless told how to match it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device};
use replica::blocks::{Activation, FeedForwardConfig, NormKind};
use replica::check::{Bundle, Namespace, Trace, TraceEntry};
use replica::models::decoder::{CausalDecoder, DecoderConfig, DecoderSpec};
use replica::models::{GemmaConfig, ModelConfig};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gemma.safetensors")
}

fn replica(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the replica binary runs")
}

/// The trace of Gemma on the fixture's input, with `planted` applied to its spec.
fn run(planted: impl FnOnce(&mut DecoderSpec)) -> Trace {
    let bundle = Bundle::load(reference(), &Device::Cpu).unwrap();
    let config = GemmaConfig::from_value(&bundle.metadata().config, bundle.origin()).unwrap();
    let mut spec = config.decoder_spec();
    planted(&mut spec);
    let params = bundle.namespace(Namespace::Param);
    let vb = candle_nn::VarBuilder::from_tensors(params.into_iter().collect(), DType::F32, &Device::Cpu);
    let model = CausalDecoder::new(&spec, vb).unwrap();
    let ids = bundle.input("0").unwrap();
    let (logits, trace) = replica::check::trace::record(|| model.logits_t(ids, None, false));
    logits.unwrap();
    trace
}

/// `replica trace` of `trace`, dumped under `dir`, with `extra` arguments.
fn check(dir: &Path, trace: &Trace, extra: &[&str]) -> Output {
    let dump = dir.join("dump.safetensors");
    trace.save(&dump, true).unwrap();
    let reference = reference();
    let args = [
        "trace",
        dump.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
    ];
    replica(&[&args[..], extra].concat())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_correct_run_matches_in_execution_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), &run(|_| {}), &[]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("The trace matches the reference."), "{text}");
    // Rows follow the reference's execution order: the embedding first, the final norm last.
    let embed = text.find("model.embed_tokens").unwrap();
    let norm = text.find(" model.norm ").unwrap();
    assert!(embed < norm, "{text}");
}

#[test]
fn planted_bugs_are_named_at_their_module() {
    let dir = tempfile::tempdir().unwrap();
    let llama_norm = run(|spec| spec.block.norm = NormKind::RmsNorm);
    let out = check(dir.path(), &llama_norm, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("First divergent module: `model.layers.0.input_layernorm`"),
        "{}",
        stdout(&out)
    );

    let erf = run(|spec| match &mut spec.block.feed_forward {
        FeedForwardConfig::Glu(mlp) => mlp.activation = Activation::Gelu,
        other => panic!("Gemma's MLP is gated, got {other:?}"),
    });
    let out = check(dir.path(), &erf, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("First divergent module: `model.layers.0.mlp.act_fn`"),
        "{}",
        stdout(&out)
    );

    let unscaled = run(|spec| spec.embedding.scale = None);
    let out = check(dir.path(), &unscaled, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("First divergent module: `model.embed_tokens`"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn unshared_names_fail_unless_renamed_or_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let trace = run(|_| {});
    // Another naming on the port's side, and the rotary tables not recorded.
    let renamed: Vec<TraceEntry> = trace
        .entries
        .iter()
        .filter(|e| !e.name.starts_with("model.rotary_emb"))
        .map(|e| TraceEntry {
            name: e.name.replacen("model.", "decoder.", 1),
            tensor: e.tensor.clone(),
        })
        .collect();
    let renamed = Trace::from_entries(renamed);

    let out = check(dir.path(), &renamed, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("The dump has activations the reference lacks"),
        "{}",
        stdout(&out)
    );

    let out = check(dir.path(), &renamed, &["--rename", r"^decoder\.=model."]);
    assert_eq!(out.status.code(), Some(1), "the rotary tables are still missing");
    assert!(
        stdout(&out).contains("never recorded: model.rotary_emb:0, model.rotary_emb:1"),
        "{}",
        stdout(&out)
    );

    let out = check(
        dir.path(),
        &renamed,
        &["--rename", r"^decoder\.=model.", "--ignore", "model.rotary_emb:*"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn a_dump_whose_order_does_not_list_its_tensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump.safetensors");
    let t = candle_core::Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let metadata = std::collections::HashMap::from([(
        replica::check::trace_dump::ORDER_KEY.to_string(),
        r#"["a", "b"]"#.to_string(),
    )]);
    replica::check::write_safetensors(&dump, [("act/a", &t)], metadata, true).unwrap();
    let reference = reference();
    let out = replica(&[
        "trace",
        dump.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lists `b`, which is not an `act/` tensor"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
