//! Each model against the real reference implementation with random weights at a
//! tiny configuration (`python/fixtures_models.py`): the outputs, every activation
//! (by module path, in both directions), the gradients of every GPT-2 parameter
//! (the tied LM head included), and greedy generation against HF `generate`, with
//! and without the KV cache.
//!
//! HF attention modules return `(output, probabilities)`; the models record both
//! (`attn:0`, `attn:1`), computing the probabilities only while a trace is on.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use replica_blocks::papers::{VIT, YARN};
use replica_check::{Bundle, Case, Namespace, Parity, Report, TraceMap, TraceReport, Unmatched};
use replica_models::bert::{l2_normalize, mean_pooling};
use replica_models::config::bundle_config;
use replica_models::generation::{generate_greedy, CausalLm, GenerateOptions};
use replica_models::papers::{BERT, GEMMA, GEMMA_2, GPT2, LLAMA, MISTRAL, PHI3, QWEN2, QWEN3, SENTENCE_BERT};
use replica_models::{
    Architecture, Bert, BertConfig, Error, Gemma, Gemma2, Gpt2, Llama, LoadCheckpoint, Phi3, Qwen2, Qwen3, Result, Vit,
};

use crate::case;

/// A model's parity report, and its module-by-module trace comparison.
#[derive(Clone, Debug)]
pub struct ModelParity {
    /// Every output, activation and gradient compared.
    pub report: Report,
    /// The module-by-module comparison of the traced forward pass.
    pub trace: TraceReport,
}

/// Every model case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("gpt2_lm_head_model",    "transformers.GPT2LMHeadModel",                     Some(GPT2),  "models/gpt2",           |b| report_of(b, gpt2_parity(b))),
        case("gpt2_greedy_generate",  "transformers.GPT2LMHeadModel.generate",            Some(GPT2),  "models/gpt2_generate",  |b| as_check(b, gpt2_generate(b))),
        case("llama_causal_lm",       "transformers.LlamaForCausalLM",                    Some(LLAMA), "models/llama",          |b| report_of(b, llama_parity(b))),
        case("llama_yarn_causal_lm",  "transformers.LlamaForCausalLM (rope_type yarn)",   Some(YARN),  "models/llama_yarn",     |b| report_of(b, llama_parity(b))),
        case("llama_greedy_generate", "transformers.LlamaForCausalLM.generate",           Some(LLAMA), "models/llama_generate", |b| as_check(b, llama_generate(b))),
        case("mistral_causal_lm",     "transformers.MistralForCausalLM",                  Some(MISTRAL), "models/mistral",      |b| report_of(b, llama_parity(b))),
        case("mistral_causal_lm_bf16", "transformers.MistralForCausalLM",                 Some(MISTRAL), "models/mistral_bf16", |b| report_of(b, llama_parity(b))),
        case("mistral_causal_lm_sdpa", "transformers.MistralForCausalLM (attn_implementation sdpa)", Some(MISTRAL), "models/mistral_sdpa", |b| report_of(b, llama_parity(b))),
        case("mistral_greedy_generate", "transformers.MistralForCausalLM.generate",       Some(MISTRAL), "models/mistral_generate", |b| as_check(b, llama_generate(b))),
        case("gemma_causal_lm",       "transformers.GemmaForCausalLM",                    Some(GEMMA), "models/gemma",          |b| report_of(b, gemma_parity(b))),
        case("gemma_causal_lm_bf16",  "transformers.GemmaForCausalLM",                    Some(GEMMA), "models/gemma_bf16",     |b| report_of(b, gemma_parity(b))),
        case("gemma_greedy_generate", "transformers.GemmaForCausalLM.generate",           Some(GEMMA), "models/gemma_generate", |b| as_check(b, check_generation(b, load::<Gemma>))),
        case("gemma2_causal_lm",      "transformers.Gemma2ForCausalLM",                   Some(GEMMA_2), "models/gemma2",       |b| report_of(b, gemma2_parity(b))),
        case("gemma2_causal_lm_bf16", "transformers.Gemma2ForCausalLM",                   Some(GEMMA_2), "models/gemma2_bf16",  |b| report_of(b, gemma2_parity(b))),
        case("gemma2_greedy_generate", "transformers.Gemma2ForCausalLM.generate",         Some(GEMMA_2), "models/gemma2_generate", |b| as_check(b, check_generation(b, load::<Gemma2>))),
        case("phi3_causal_lm",        "transformers.Phi3ForCausalLM",                     Some(PHI3),  "models/phi3",           |b| report_of(b, phi3_parity(b))),
        case("phi3_causal_lm_bf16",   "transformers.Phi3ForCausalLM",                     Some(PHI3),  "models/phi3_bf16",      |b| report_of(b, phi3_parity(b))),
        case("phi3_greedy_generate",  "transformers.Phi3ForCausalLM.generate",            Some(PHI3),  "models/phi3_generate",  |b| as_check(b, check_generation(b, load::<Phi3>))),
        case("qwen2_causal_lm",       "transformers.Qwen2ForCausalLM",                    Some(QWEN2), "models/qwen2",          |b| report_of(b, qwen2_parity(b))),
        case("qwen2_causal_lm_bf16",  "transformers.Qwen2ForCausalLM",                    Some(QWEN2), "models/qwen2_bf16",     |b| report_of(b, qwen2_parity(b))),
        case("qwen2_greedy_generate", "transformers.Qwen2ForCausalLM.generate",           Some(QWEN2), "models/qwen2_generate", |b| as_check(b, check_generation(b, load::<Qwen2>))),
        case("qwen3_causal_lm",       "transformers.Qwen3ForCausalLM",                    Some(QWEN3), "models/qwen3",          |b| report_of(b, qwen3_parity(b))),
        case("qwen3_causal_lm_bf16",  "transformers.Qwen3ForCausalLM",                    Some(QWEN3), "models/qwen3_bf16",     |b| report_of(b, qwen3_parity(b))),
        case("qwen3_greedy_generate", "transformers.Qwen3ForCausalLM.generate",           Some(QWEN3), "models/qwen3_generate", |b| as_check(b, check_generation(b, load::<Qwen3>))),
        case("vit_timm",              "timm.models.vision_transformer.VisionTransformer", Some(VIT),   "models/vit",            |b| report_of(b, vit_parity(b))),
        case("bert_model",            "transformers.BertModel",                           Some(BERT),  "models/bert",           |b| report_of(b, bert_parity(b))),
        case("sentence_embeddings",   "sentence-transformers (BertModel, Pooling mean, Normalize)", Some(SENTENCE_BERT), "models/sentence_embeddings", |b| report_of(b, sentence_parity(b))),
        case("bert_model_sdpa",       "transformers.BertModel (attn_implementation sdpa)", Some(BERT),  "models/bert_sdpa",      |b| report_of(b, bert_parity(b))),
        case("bert_model_ids_only",   "transformers.BertModel",                           Some(BERT),  "models/bert_ids_only",  |b| report_of(b, bert_parity(b))),
    ]
}

/// A model error as the harness's: the check's own errors unchanged, the rest naming the bundle.
pub(crate) fn as_check<T>(bundle: &Bundle, result: Result<T>) -> replica_check::Result<T> {
    result.map_err(|err| match err {
        Error::Check(err) => err,
        other => replica_check::Error::file(bundle.origin(), other.to_string()),
    })
}

pub(crate) fn report_of(bundle: &Bundle, result: Result<ModelParity>) -> replica_check::Result<Report> {
    as_check(bundle, result).map(|parity| parity.report)
}

/// One input of a model case: the names a bundle may give it (the positional
/// `0`, then the reference's keyword) and, for an optional one, its value when
/// the bundle gives none, made from the token ids as the reference defaults it.
pub(crate) struct ModelInput {
    pub(crate) names: &'static [&'static str],
    pub(crate) default: Option<fn(&Tensor) -> candle_core::Result<Tensor>>,
}

/// Token ids, `input/0` or `input/input_ids`.
pub(crate) const INPUT_IDS: ModelInput = ModelInput {
    names: &["0", "input_ids"],
    default: None,
};

/// What a model case feeds the model and compares.
pub(crate) struct ModelIo<'a> {
    pub(crate) inputs: &'static [ModelInput],
    pub(crate) outputs: &'static [&'static str],
    /// Tied parameters, `(tied, shared)` as [`Parity::tie`] takes them.
    pub(crate) ties: &'static [(&'static str, &'static str)],
    pub(crate) unmatched: Unmatched<'a>,
}

/// A model built from the bundle: its config read strictly, its weights from `params`.
pub(crate) type Load<M> = fn(&Bundle, BTreeMap<String, Tensor>, DType, &Device) -> Result<M>;

/// [`Load`] for every architecture.
pub(crate) fn load<A: Architecture>(
    bundle: &Bundle,
    params: BTreeMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<A> {
    A::from_tensors(&bundle_config(bundle)?, params, bundle.origin(), dtype, device)
}

/// The device the bundle's tensors are on.
fn device_of(params: &BTreeMap<String, Tensor>) -> Device {
    params.values().next().map_or(Device::Cpu, |t| t.device().clone())
}

/// Builds the model from the run's parameters (trainable, so gradients reach them),
/// runs `forward` traced on the inputs, and checks the outputs, every activation
/// and every stored gradient.
pub(crate) fn check_model<M>(
    bundle: &Bundle,
    io: &ModelIo,
    load: Load<M>,
    forward: impl FnOnce(&M, &[Tensor]) -> candle_core::Result<Vec<Tensor>>,
) -> Result<ModelParity> {
    check_model_and(bundle, io, load, forward, |_, _, _| Ok(()))
}

/// [`check_model`], then `also` with the model, its inputs and the run (another
/// way to the same outputs, compared as a variant).
pub(crate) fn check_model_and<M>(
    bundle: &Bundle,
    io: &ModelIo,
    load: Load<M>,
    forward: impl FnOnce(&M, &[Tensor]) -> candle_core::Result<Vec<Tensor>>,
    also: impl FnOnce(&M, &[Tensor], &mut Parity) -> Result<()>,
) -> Result<ModelParity> {
    let mut run = Parity::new(bundle)?;
    let params = run.params().clone();
    let model = load(bundle, params.clone(), bundle.dtype()?, &device_of(&params))?;
    let mut inputs: Vec<Tensor> = Vec::with_capacity(io.inputs.len());
    for input in io.inputs {
        let given = input.names.iter().find(|name| bundle.contains(Namespace::Input, name));
        inputs.push(match (given, input.default) {
            (Some(name), _) => run.input(name)?,
            (None, Some(default)) => default(&inputs[0])?,
            // The error names the positional name and what the bundle holds.
            (None, None) => run.input(input.names[0])?,
        });
    }
    let (outputs, trace) = run.traced(io.unmatched, || forward(&model, &inputs))?;
    for (tied, shared) in io.ties {
        run.tie(tied, shared)?;
    }
    let named: Vec<(&str, &Tensor)> = io.outputs.iter().copied().zip(&outputs).collect();
    run.check_outputs_and_gradients(&named)?;
    also(&model, &inputs, &mut run)?;
    Ok(ModelParity {
        report: run.finish(),
        trace,
    })
}

/// The logits once more, decoded through the KV cache: the first half of the
/// sequence as a prompt, then one token per step, each attending to the cached
/// keys and values; compared as the variant `kv cache`.
pub(crate) fn decoded_through_the_cache<M: CausalLm>(model: &M, inputs: &[Tensor], run: &mut Parity) -> Result<()> {
    let ids = &inputs[0];
    let seq = ids.dim(1)?;
    // Past this length the reference's own cached logits differ from its full pass
    // (Phi-3's LongRoPE switches factors); its generation is checked instead.
    if model.cache_rebuilt_past().is_some_and(|n| seq > n) {
        return Ok(());
    }
    let prompt = seq.div_ceil(2);
    let decode = || -> candle_core::Result<Tensor> {
        let mut cache = model.new_cache();
        let mut logits = vec![model.forward_lm(&ids.narrow(1, 0, prompt)?, Some(&mut cache))?];
        for position in prompt..seq {
            logits.push(model.forward_lm(&ids.narrow(1, position, 1)?, Some(&mut cache))?);
        }
        Tensor::cat(&logits, 1)
    };
    // The traced pass is the full forward; this one records nothing.
    let logits = replica_check::trace::untraced(decode)?;
    run.check_outputs_of("kv cache", &[("logits", &logits)]);
    Ok(())
}

/// HF `GPT2LMHeadModel`: logits (also decoded through the KV cache), every block's
/// activation, and the gradient of every parameter (the tied `lm_head.weight`
/// against the token embedding's).
pub fn gpt2_parity(bundle: &Bundle) -> Result<ModelParity> {
    const IO: ModelIo = ModelIo {
        inputs: &[INPUT_IDS],
        outputs: &["logits"],
        ties: &[("lm_head.weight", "transformer.wte.weight")],
        unmatched: Unmatched::NONE,
    };
    let forward = |model: &Gpt2, ids: &[Tensor]| Ok(vec![model.forward(&ids[0], None)?]);
    check_model_and(bundle, &IO, load::<Gpt2>, forward, decoded_through_the_cache)
}

/// HF `LlamaForCausalLM` with grouped-query attention (or `MistralForCausalLM`,
/// whose layers all slide): logits (also decoded through
/// the KV cache) and every block's activation.
pub fn llama_parity(bundle: &Bundle) -> Result<ModelParity> {
    let forward = |model: &Llama, ids: &[Tensor]| Ok(vec![model.forward(&ids[0], None)?]);
    check_model_and(
        bundle,
        &UNTIED_DECODER,
        load::<Llama>,
        forward,
        decoded_through_the_cache,
    )
}

/// A decoder whose LM head has weights of its own: token ids in, logits out.
const UNTIED_DECODER: ModelIo = ModelIo {
    inputs: &[INPUT_IDS],
    outputs: &["logits"],
    ties: &[],
    unmatched: Unmatched::NONE,
};

/// HF `GemmaForCausalLM`: logits (also decoded through the KV cache), every block's
/// activation and, where the bundle
/// has them, the gradient of every parameter (the tied `lm_head.weight` against the
/// token embedding's, whose padding row gets none).
pub fn gemma_parity(bundle: &Bundle) -> Result<ModelParity> {
    tied_decoder_parity::<Gemma>(bundle)
}

/// HF `Gemma2ForCausalLM` (sandwich norms, sliding and full layers, soft-capped
/// scores and logits): as [`gemma_parity`].
pub fn gemma2_parity(bundle: &Bundle) -> Result<ModelParity> {
    tied_decoder_parity::<Gemma2>(bundle)
}

/// HF `Phi3ForCausalLM` (fused qkv and gate/up projections, LongRoPE, a sliding
/// window): logits (also decoded through the KV cache), every block's activation
/// and, where the bundle has them, the gradient of every parameter, the fused
/// projections' as they are stored.
pub fn phi3_parity(bundle: &Bundle) -> Result<ModelParity> {
    let forward = |model: &Phi3, ids: &[Tensor]| Ok(vec![model.forward(&ids[0], None)?]);
    check_model_and(
        bundle,
        &UNTIED_DECODER,
        load::<Phi3>,
        forward,
        decoded_through_the_cache,
    )
}

/// HF `Qwen2ForCausalLM` (biased q/k/v projections, a sliding window on the layers
/// from `max_window_layers` on): as [`gemma_parity`].
pub fn qwen2_parity(bundle: &Bundle) -> Result<ModelParity> {
    tied_decoder_parity::<Qwen2>(bundle)
}

/// HF `Qwen3ForCausalLM` (per-head RMSNorms on queries and keys, recorded as
/// `self_attn.q_norm` / `k_norm`): as [`gemma_parity`].
pub fn qwen3_parity(bundle: &Bundle) -> Result<ModelParity> {
    tied_decoder_parity::<Qwen3>(bundle)
}

/// A decoder whose LM head is tied to the token embedding: logits (also decoded
/// through the KV cache), every block's activation and, where the bundle has them,
/// the gradient of every parameter (the tied `lm_head.weight` against the token
/// embedding's).
fn tied_decoder_parity<M: Architecture + CausalLm>(bundle: &Bundle) -> Result<ModelParity> {
    const IO: ModelIo = ModelIo {
        inputs: &[INPUT_IDS],
        outputs: &["logits"],
        ties: &[("lm_head.weight", "model.embed_tokens.weight")],
        unmatched: Unmatched::NONE,
    };
    let forward = |model: &M, ids: &[Tensor]| Ok(vec![model.forward_t(&ids[0], false)?]);
    check_model_and(bundle, &IO, load::<M>, forward, decoded_through_the_cache)
}

/// timm `VisionTransformer`: classification logits and every block's activation.
pub fn vit_parity(bundle: &Bundle) -> Result<ModelParity> {
    const IO: ModelIo = ModelIo {
        inputs: &[ModelInput {
            names: &["0", "x"],
            default: None,
        }],
        outputs: &["0"],
        ties: &[],
        unmatched: Unmatched::NONE,
    };
    check_model(bundle, &IO, load::<Vit>, |model, images| {
        Ok(vec![model.forward(&images[0])?])
    })
}

/// Each BERT layer's `BertSelfAttention` output the bundle records, which the port
/// keeps inside its attention block: the reference's alone.
fn self_attention_outputs(bundle: &Bundle) -> Vec<&str> {
    (bundle.metadata().activations.iter())
        .map(String::as_str)
        .filter(|name| name.contains("encoder.layer.") && name.ends_with(".attention.self:0"))
        .collect()
}

/// HF `BertModel` on a ragged, padded batch with two segments (or on the token ids
/// alone, `input/0` or `input/input_ids`, the segments and mask then defaulting as
/// HF defaults them): the last hidden
/// states, the pooler output and every block's activation, under HF's names through
/// BERT's [trace map](Architecture::trace_map) (`BertAttention`'s normalised
/// `(output, probabilities)` as `attention:0` and `attention:1`). HF's
/// `BertSelfAttention` returns the context before the output projection
/// (`attention.self:0`), which the port's attention block keeps internal.
pub fn bert_parity(bundle: &Bundle) -> Result<ModelParity> {
    let inner = self_attention_outputs(bundle);
    let io = ModelIo {
        inputs: &[
            INPUT_IDS,
            // As HF: segment 0 everywhere, and every token attended to.
            ModelInput {
                names: &["token_type_ids"],
                default: Some(Tensor::zeros_like),
            },
            ModelInput {
                names: &["attention_mask"],
                default: Some(Tensor::ones_like),
            },
        ],
        outputs: &["last_hidden_state", "pooler_output"],
        ties: &[],
        unmatched: Unmatched {
            port_only: &[],
            reference_only: &inner,
        },
    };
    check_model(bundle, &io, load::<Bert>, |model, inputs| {
        let output = model.forward(&inputs[0], Some(&inputs[1]), Some(&inputs[2]))?;
        let pooled = output
            .pooler_output
            .ok_or_else(|| candle_core::Error::Msg("the model has no pooler".into()))?;
        Ok(vec![output.last_hidden_state, pooled])
    })
}

/// Sentence embeddings as sentence-transformers computes them on a BERT: the
/// encoder, `Pooling` (the mean over the attention mask) and `Normalize`, from
/// `input_ids`, `attention_mask` and `token_type_ids` (absent: all 0) to
/// `output/embeddings`. The encoder's activations are compared under the
/// pipeline's module names (`bert.`, `pooling`, `normalize`) when the bundle has
/// them; a bundle of a real model's embeddings alone (all-MiniLM-L6-v2's, with its
/// weights from `--weights` and its `config.json` from `--config`) has none, and the
/// run is then not traced ([`Parity::traced`]).
pub fn sentence_parity(bundle: &Bundle) -> Result<ModelParity> {
    // The pipeline's modules pass the token embeddings and the mask on, as they came.
    let mut reference_only: Vec<&str> = ["pooling", "normalize"]
        .iter()
        .flat_map(|module| [format!("{module}:token_embeddings"), format!("{module}:attention_mask")])
        .filter_map(|name| bundle.metadata().activations.iter().find(|a| **a == name))
        .map(String::as_str)
        .collect();
    reference_only.extend(self_attention_outputs(bundle));
    let io = ModelIo {
        inputs: &[
            INPUT_IDS,
            ModelInput {
                names: &["attention_mask"],
                default: None,
            },
            ModelInput {
                names: &["token_type_ids"],
                default: Some(Tensor::zeros_like),
            },
        ],
        outputs: &["embeddings"],
        ties: &[],
        unmatched: Unmatched {
            port_only: &[],
            reference_only: &reference_only,
        },
    };
    // The pipeline uses the encoder's hidden states only: no pooler.
    let load = |bundle: &Bundle, params, dtype, device: &Device| {
        let config = BertConfig {
            add_pooling_layer: false,
            ..bundle_config(bundle)?
        };
        Bert::from_tensors(&config, params, bundle.origin(), dtype, device)
    };
    let under_bert = TraceMap::new().rename("^", "bert.");
    check_model(bundle, &io, load, |model, inputs| {
        let (ids, mask, types) = (&inputs[0], &inputs[1], &inputs[2]);
        let hidden = replica_check::mapped(&under_bert, || model.forward(ids, Some(types), Some(mask)))?;
        let hidden = hidden.last_hidden_state;
        replica_check::tap("bert:last_hidden_state", &hidden);
        let pooled = mean_pooling(&hidden, mask)?;
        replica_check::tap("pooling:sentence_embedding", &pooled);
        let embeddings = l2_normalize(&pooled)?;
        replica_check::tap("normalize:sentence_embedding", &embeddings);
        Ok(vec![embeddings])
    })
}

/// The prompt (`input/0`, `[1, n]`) and the number of tokens the reference generated.
fn generation_task(run: &Parity) -> Result<(Vec<u32>, usize)> {
    let bundle = run.bundle();
    let prompt = run.input("0")?.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    let expected = bundle.output("0")?.elem_count();
    // Token ids are u32: one outside that range is refused, never truncated to another token.
    let prompt = prompt
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            u32::try_from(id).map_err(|_| {
                Error::config(
                    bundle.origin(),
                    format!("input/0: token id {id} at position {i} is not in 0..={}", u32::MAX),
                )
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    let new_tokens = expected
        .checked_sub(prompt.len())
        .ok_or_else(|| Error::config(bundle.origin(), "output/0 is shorter than the prompt"))?;
    Ok((prompt, new_tokens))
}

/// Greedy decoding with and without the KV cache against HF `generate(do_sample=False)`.
pub(crate) fn check_generation<M: CausalLm>(bundle: &Bundle, load: Load<M>) -> Result<Report> {
    let params = bundle.namespace(Namespace::Param);
    let device = device_of(&params);
    let model = load(bundle, params, bundle.dtype()?, &device)?;
    let mut run = Parity::new(bundle)?;
    let (prompt, new_tokens) = generation_task(&run)?;
    let options = GenerateOptions::greedy(new_tokens);
    for (variant, options) in [("kv cache", options), ("no cache", options.without_cache())] {
        let tokens = generate_greedy(&model, &prompt, options, |_| {})?;
        let tokens: Vec<i64> = tokens.into_iter().map(i64::from).collect();
        let n = tokens.len();
        let generated = Tensor::from_vec(tokens, (1, n), model.device())?;
        run.check_outputs_of(variant, &[("0", &generated)]);
    }
    Ok(run.finish())
}

/// GPT-2: 20 greedy tokens, identical to HF's, with and without the cache.
pub fn gpt2_generate(bundle: &Bundle) -> Result<Report> {
    check_generation(bundle, load::<Gpt2>)
}

/// LLaMA (GQA, RoPE): 20 greedy tokens, identical to HF's, with and without the cache.
pub fn llama_generate(bundle: &Bundle) -> Result<Report> {
    check_generation(bundle, load::<Llama>)
}
