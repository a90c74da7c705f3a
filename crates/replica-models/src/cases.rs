//! The models' parity cases, run by the tests and by `replica check`: each model
//! against the real reference implementation with random weights at a tiny
//! configuration (`python/fixtures_models.py`): the outputs, every activation the
//! reference recorded that the Rust model records too (by module path), the
//! gradients of every GPT-2 parameter, and greedy generation against HF
//! `generate`, with and without the KV cache.
//!
//! HF attention modules return `(output, probabilities)`; the models record both
//! (`attn:0`, `attn:1`), computing the probabilities only while a trace is on. A
//! reference activation the Rust model does not record (BERT's pre-projection
//! context `attention.self:0`, which the attention block keeps internal) is listed
//! in the trace report as not recorded; that is not a failure. Every recorded
//! activation with a reference must match.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use replica_blocks::cases::basics::dtype_of;
use replica_check::{Bundle, Case, Namespace, Parity, Report, Tolerance, TraceReport};

use crate::bert::{Bert, BertConfig};
use crate::config::bundle_config;
use crate::divergence;
use crate::generation::{generate_greedy, CausalLm, GenerateOptions};
use crate::gpt2::{Gpt2, Gpt2Config};
use crate::llama::{Llama, LlamaConfig};
use crate::papers;
use crate::vit::{Vit, VitConfig};
use crate::{Architecture, Error, Result};

/// The directory of the committed reference bundles (the workspace's `tests/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    dir.canonicalize().unwrap_or(dir)
}

/// A model's parity report, and its module-by-module trace comparison.
#[derive(Clone, Debug)]
pub struct ModelParity {
    pub report: Report,
    pub trace: TraceReport,
}

/// Every model case.
pub fn cases() -> Vec<Case> {
    let gpt2 = Some(papers::GPT2.arxiv);
    let llama = Some(papers::LLAMA.arxiv);
    vec![
        Case {
            name: "gpt2_lm_head_model",
            reference: "transformers.GPT2LMHeadModel",
            paper: gpt2,
            fixture: "models/gpt2",
            run: |b| report_of(b, gpt2_parity(b)),
        },
        Case {
            name: "gpt2_greedy_generate",
            reference: "transformers.GPT2LMHeadModel.generate",
            paper: gpt2,
            fixture: "models/gpt2_generate",
            run: |b| as_check(b, gpt2_generate(b)),
        },
        Case {
            name: "llama_causal_lm",
            reference: "transformers.LlamaForCausalLM",
            paper: llama,
            fixture: "models/llama",
            run: |b| report_of(b, llama_parity(b)),
        },
        Case {
            name: "llama_greedy_generate",
            reference: "transformers.LlamaForCausalLM.generate",
            paper: llama,
            fixture: "models/llama_generate",
            run: |b| as_check(b, llama_generate(b)),
        },
        Case {
            name: "vit_timm",
            reference: "timm.models.vision_transformer.VisionTransformer",
            paper: Some(replica_blocks::papers::VIT.arxiv),
            fixture: "models/vit",
            run: |b| report_of(b, vit_parity(b)),
        },
        Case {
            name: "bert_model",
            reference: "transformers.BertModel",
            paper: Some(papers::BERT.arxiv),
            fixture: "models/bert",
            run: |b| report_of(b, bert_parity(b)),
        },
    ]
}

fn as_check<T>(bundle: &Bundle, result: Result<T>) -> replica_check::Result<T> {
    result.map_err(|err| match err {
        Error::Check(err) => err,
        other => replica_check::Error::file(bundle.origin(), other.to_string()),
    })
}

fn report_of(bundle: &Bundle, result: Result<ModelParity>) -> replica_check::Result<Report> {
    as_check(bundle, result).map(|parity| parity.report)
}

/// Adds a row for every recorded activation that has a reference.
fn add_trace_rows(report: &mut Report, trace: &TraceReport) {
    for row in &trace.rows {
        if let Some(comparison) = &row.comparison {
            report.push(format!("{}{}", Namespace::Activation, row.path), comparison.clone());
        }
    }
}

fn device_of(run: &Parity) -> Device {
    run.params().values().next().map_or(Device::Cpu, |t| t.device().clone())
}

/// Runs `forward` traced, compares the trace, and adds its rows to the run.
fn traced<T>(
    run: &mut Parity,
    bundle: &Bundle,
    forward: impl FnOnce() -> candle_core::Result<T>,
) -> Result<(T, TraceReport)> {
    let dtype = dtype_of(bundle)?;
    let (output, recorded) = divergence::record(forward);
    let output = output?;
    let trace = divergence::compare(&recorded, bundle, Tolerance::for_dtype(dtype));
    add_trace_rows(run.report_mut(), &trace);
    Ok((output, trace))
}

/// Backpropagates the bundle's loss through `outputs` and compares the gradient of
/// every parameter the bundle has one for. A tied parameter (`ties`: its name and
/// the name of the tensor it shares) is compared with the shared tensor's
/// gradient, as torch stores the sum of both uses under each name.
fn check_gradients(
    run: &mut Parity,
    bundle: &Bundle,
    outputs: &[(&str, &Tensor)],
    ties: &[(&str, &str)],
) -> Result<()> {
    let grads = bundle.upstream_loss(outputs)?.backward()?;
    let params: BTreeMap<String, Tensor> = run.params().clone();
    let names: Vec<String> = bundle.names(Namespace::ParamGrad).map(str::to_string).collect();
    for name in names {
        let source = ties
            .iter()
            .find(|(tied, _)| *tied == name)
            .map_or(name.as_str(), |(_, shared)| shared);
        let Some(param) = params.get(source) else {
            continue;
        };
        let grad = match grads.get(param) {
            Some(grad) => grad.clone(),
            None => param.zeros_like()?,
        };
        let tolerance = Tolerance::for_dtype(param.dtype());
        let tolerance =
            bundle
                .tolerances()
                .resolve(&format!("{}{name}", Namespace::ParamGrad), param.dtype(), tolerance);
        run.report_mut()
            .check(bundle, Namespace::ParamGrad, &name, &grad, tolerance);
    }
    Ok(())
}

/// HF `GPT2LMHeadModel`: logits, every block's activation, and the gradient of
/// every parameter (the tied `lm_head.weight` against the token embedding's).
pub fn gpt2_parity(bundle: &Bundle) -> Result<ModelParity> {
    let mut run = Parity::new(bundle)?;
    let config: Gpt2Config = bundle_config(bundle)?;
    let device = device_of(&run);
    let model = Gpt2::from_tensors(
        &config,
        run.params().clone(),
        bundle.origin(),
        dtype_of(bundle)?,
        &device,
    )?;
    let ids = run.input("0")?;
    let (logits, trace) = traced(&mut run, bundle, || model.forward(&ids, None))?;
    run.check_outputs(&[("logits", &logits)]);
    if bundle.names(Namespace::ParamGrad).next().is_some() {
        check_gradients(
            &mut run,
            bundle,
            &[("logits", &logits)],
            &[("lm_head.weight", "transformer.wte.weight")],
        )?;
    }
    Ok(ModelParity {
        report: run.finish(),
        trace,
    })
}

/// HF `LlamaForCausalLM` with grouped-query attention: logits and every block's activation.
pub fn llama_parity(bundle: &Bundle) -> Result<ModelParity> {
    let mut run = Parity::new(bundle)?;
    let config: LlamaConfig = bundle_config(bundle)?;
    let device = device_of(&run);
    let model = Llama::from_tensors(
        &config,
        run.params().clone(),
        bundle.origin(),
        dtype_of(bundle)?,
        &device,
    )?;
    let ids = run.input("0")?;
    let (logits, trace) = traced(&mut run, bundle, || model.forward(&ids, None))?;
    run.check_outputs(&[("logits", &logits)]);
    Ok(ModelParity {
        report: run.finish(),
        trace,
    })
}

/// timm `VisionTransformer`: classification logits and every block's activation.
pub fn vit_parity(bundle: &Bundle) -> Result<ModelParity> {
    let mut run = Parity::new(bundle)?;
    let config: VitConfig = bundle_config(bundle)?;
    let device = device_of(&run);
    let model = Vit::from_tensors(
        &config,
        run.params().clone(),
        bundle.origin(),
        dtype_of(bundle)?,
        &device,
    )?;
    let images = run.input("0")?;
    let (logits, trace) = traced(&mut run, bundle, || model.forward(&images))?;
    run.check_outputs(&[("0", &logits)]);
    Ok(ModelParity {
        report: run.finish(),
        trace,
    })
}

/// HF `BertModel` on a ragged, padded batch with two segments: the last hidden
/// states, the pooler output and every block's activation.
pub fn bert_parity(bundle: &Bundle) -> Result<ModelParity> {
    let mut run = Parity::new(bundle)?;
    let config: BertConfig = bundle_config(bundle)?;
    let device = device_of(&run);
    let model = Bert::from_tensors(
        &config,
        run.params().clone(),
        bundle.origin(),
        dtype_of(bundle)?,
        &device,
    )?;
    let (ids, types, mask) = (
        run.input("0")?,
        run.input("token_type_ids")?,
        run.input("attention_mask")?,
    );
    let (output, trace) = traced(&mut run, bundle, || model.forward(&ids, Some(&types), Some(&mask)))?;
    let pooled = output
        .pooler_output
        .ok_or_else(|| Error::config(bundle.origin(), "the model has no pooler"))?;
    run.check_outputs(&[
        ("last_hidden_state", &output.last_hidden_state),
        ("pooler_output", &pooled),
    ]);
    Ok(ModelParity {
        report: run.finish(),
        trace,
    })
}

/// The prompt (`input/0`, `[1, n]`) and the number of tokens the reference generated.
fn generation_task(bundle: &Bundle) -> Result<(Vec<u32>, usize)> {
    let prompt = bundle
        .input("0")?
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    let expected = bundle.output("0")?.elem_count();
    let prompt: Vec<u32> = prompt.into_iter().map(|t| t as u32).collect();
    let new_tokens = expected
        .checked_sub(prompt.len())
        .ok_or_else(|| Error::config(bundle.origin(), "output/0 is shorter than the prompt"))?;
    Ok((prompt, new_tokens))
}

/// Greedy decoding with and without the KV cache against HF `generate(do_sample=False)`.
fn check_generation(bundle: &Bundle, model: &impl CausalLm) -> Result<Report> {
    let (prompt, new_tokens) = generation_task(bundle)?;
    let mut run = Parity::new(bundle)?;
    let options = GenerateOptions::greedy(new_tokens);
    for (variant, options) in [("kv cache", options), ("no cache", options.without_cache())] {
        let tokens = generate_greedy(model, &prompt, options, |_| {})?;
        let tokens: Vec<i64> = tokens.into_iter().map(i64::from).collect();
        let n = tokens.len();
        let generated = Tensor::from_vec(tokens, (1, n), model.device())?;
        run.check_outputs_of(variant, &[("0", &generated)]);
    }
    Ok(run.finish())
}

/// GPT-2: 20 greedy tokens, identical to HF's, with and without the cache.
pub fn gpt2_generate(bundle: &Bundle) -> Result<Report> {
    let config: Gpt2Config = bundle_config(bundle)?;
    let params = bundle.namespace(Namespace::Param);
    let device = params.values().next().map_or(Device::Cpu, |t| t.device().clone());
    let model = Gpt2::from_tensors(&config, params, bundle.origin(), dtype_of(bundle)?, &device)?;
    check_generation(bundle, &model)
}

/// LLaMA (GQA, RoPE): 20 greedy tokens, identical to HF's, with and without the cache.
pub fn llama_generate(bundle: &Bundle) -> Result<Report> {
    let config: LlamaConfig = bundle_config(bundle)?;
    let params = bundle.namespace(Namespace::Param);
    let device = params.values().next().map_or(Device::Cpu, |t| t.device().clone());
    let model = Llama::from_tensors(&config, params, bundle.origin(), dtype_of(bundle)?, &device)?;
    check_generation(bundle, &model)
}
