//! Each model against the real reference implementation with random weights at a
//! tiny configuration (`python/fixtures_models.py`): the outputs, every activation
//! (by module path, in both directions), the gradients of every GPT-2 parameter
//! (the tied LM head included), and greedy generation against HF `generate`, with
//! and without the KV cache.
//!
//! HF attention modules return `(output, probabilities)`; the models record both
//! (`attn:0`, `attn:1`), computing the probabilities only while a trace is on.

use candle_core::{DType, Device, Tensor};
use replica_blocks::papers::VIT;
use replica_check::{Bundle, Case, Namespace, Parity, Report, TraceReport, Unmatched};
use replica_models::config::bundle_config;
use replica_models::generation::{generate_greedy, CausalLm, GenerateOptions};
use replica_models::papers::{BERT, GPT2, LLAMA};
use replica_models::{Bert, BertConfig, Error, Gpt2, Gpt2Config, Llama, LlamaConfig, Result, Vit, VitConfig};

use crate::case;

/// A model's parity report, and its module-by-module trace comparison.
#[derive(Clone, Debug)]
pub struct ModelParity {
    pub report: Report,
    pub trace: TraceReport,
}

/// Every model case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("gpt2_lm_head_model",    "transformers.GPT2LMHeadModel",                     Some(GPT2),  "models/gpt2",           |b| report_of(b, gpt2_parity(b))),
        case("gpt2_greedy_generate",  "transformers.GPT2LMHeadModel.generate",            Some(GPT2),  "models/gpt2_generate",  |b| as_check(b, gpt2_generate(b))),
        case("llama_causal_lm",       "transformers.LlamaForCausalLM",                    Some(LLAMA), "models/llama",          |b| report_of(b, llama_parity(b))),
        case("llama_greedy_generate", "transformers.LlamaForCausalLM.generate",           Some(LLAMA), "models/llama_generate", |b| as_check(b, llama_generate(b))),
        case("vit_timm",              "timm.models.vision_transformer.VisionTransformer", Some(VIT),   "models/vit",            |b| report_of(b, vit_parity(b))),
        case("bert_model",            "transformers.BertModel",                           Some(BERT),  "models/bert",           |b| report_of(b, bert_parity(b))),
    ]
}

/// A model error as the harness's: the check's own errors unchanged, the rest naming the bundle.
fn as_check<T>(bundle: &Bundle, result: Result<T>) -> replica_check::Result<T> {
    result.map_err(|err| match err {
        Error::Check(err) => err,
        other => replica_check::Error::file(bundle.origin(), other.to_string()),
    })
}

fn report_of(bundle: &Bundle, result: Result<ModelParity>) -> replica_check::Result<Report> {
    as_check(bundle, result).map(|parity| parity.report)
}

fn device_of(run: &Parity) -> Device {
    run.params().values().next().map_or(Device::Cpu, |t| t.device().clone())
}

/// HF `GPT2LMHeadModel`: logits, every block's activation, and the gradient of
/// every parameter (the tied `lm_head.weight` against the token embedding's).
pub fn gpt2_parity(bundle: &Bundle) -> Result<ModelParity> {
    let mut run = Parity::new(bundle)?;
    let config: Gpt2Config = bundle_config(bundle)?;
    let model = Gpt2::from_tensors(
        &config,
        run.params().clone(),
        bundle.origin(),
        bundle.dtype()?,
        &device_of(&run),
    )?;
    let ids = run.input("0")?;
    let (logits, trace) = run.traced(Unmatched::NONE, || model.forward(&ids, None))?;
    run.tie("lm_head.weight", "transformer.wte.weight")?;
    run.check_outputs_and_gradients(&[("logits", &logits)])?;
    Ok(ModelParity {
        report: run.finish(),
        trace,
    })
}

/// HF `LlamaForCausalLM` with grouped-query attention: logits and every block's activation.
pub fn llama_parity(bundle: &Bundle) -> Result<ModelParity> {
    let mut run = Parity::new(bundle)?;
    let config: LlamaConfig = bundle_config(bundle)?;
    let model = Llama::from_tensors(
        &config,
        run.params().clone(),
        bundle.origin(),
        bundle.dtype()?,
        &device_of(&run),
    )?;
    let ids = run.input("0")?;
    let (logits, trace) = run.traced(Unmatched::NONE, || model.forward(&ids, None))?;
    run.check_outputs_and_gradients(&[("logits", &logits)])?;
    Ok(ModelParity {
        report: run.finish(),
        trace,
    })
}

/// timm `VisionTransformer`: classification logits and every block's activation.
pub fn vit_parity(bundle: &Bundle) -> Result<ModelParity> {
    let mut run = Parity::new(bundle)?;
    let config: VitConfig = bundle_config(bundle)?;
    let model = Vit::from_tensors(
        &config,
        run.params().clone(),
        bundle.origin(),
        bundle.dtype()?,
        &device_of(&run),
    )?;
    let images = run.input("0")?;
    let (logits, trace) = run.traced(Unmatched::NONE, || model.forward(&images))?;
    run.check_outputs_and_gradients(&[("0", &logits)])?;
    Ok(ModelParity {
        report: run.finish(),
        trace,
    })
}

/// What BERT's reference and port record differently. The port's attention block
/// records its projected output under its own path, `attention`, where HF's
/// `BertAttention` returns the normalised `(output, probabilities)` (which the layer
/// records as `attention:0` and `attention:1`); HF's `BertSelfAttention` returns the
/// context before the output projection (`attention.self:0`), which the port's
/// attention block keeps internal.
const BERT_UNMATCHED: Unmatched<'static> = Unmatched {
    port_only: &["encoder.layer.0.attention", "encoder.layer.1.attention"],
    reference_only: &["encoder.layer.0.attention.self:0", "encoder.layer.1.attention.self:0"],
};

/// HF `BertModel` on a ragged, padded batch with two segments: the last hidden
/// states, the pooler output and every block's activation.
pub fn bert_parity(bundle: &Bundle) -> Result<ModelParity> {
    let mut run = Parity::new(bundle)?;
    let config: BertConfig = bundle_config(bundle)?;
    let model = Bert::from_tensors(
        &config,
        run.params().clone(),
        bundle.origin(),
        bundle.dtype()?,
        &device_of(&run),
    )?;
    let (ids, types, mask) = (
        run.input("0")?,
        run.input("token_type_ids")?,
        run.input("attention_mask")?,
    );
    let (output, trace) = run.traced(BERT_UNMATCHED, || model.forward(&ids, Some(&types), Some(&mask)))?;
    let pooled = output
        .pooler_output
        .ok_or_else(|| Error::config(bundle.origin(), "the model has no pooler"))?;
    run.check_outputs_and_gradients(&[
        ("last_hidden_state", &output.last_hidden_state),
        ("pooler_output", &pooled),
    ])?;
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
    let model = Gpt2::from_tensors(&config, params, bundle.origin(), bundle.dtype()?, &device)?;
    check_generation(bundle, &model)
}

/// LLaMA (GQA, RoPE): 20 greedy tokens, identical to HF's, with and without the cache.
pub fn llama_generate(bundle: &Bundle) -> Result<Report> {
    let config: LlamaConfig = bundle_config(bundle)?;
    let params = bundle.namespace(Namespace::Param);
    let device = params.values().next().map_or(Device::Cpu, |t| t.device().clone());
    let model = Llama::from_tensors(&config, params, bundle.origin(), bundle.dtype()?, &device)?;
    check_generation(bundle, &model)
}
