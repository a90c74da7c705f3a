//! Attention and position-encoding blocks against the real reference code: HF
//! transformers (LLaMA, Gemma 2, GPT-NeoX, GPT-J, Marian, BLOOM), timm's
//! `Attention`, torch's `scaled_dot_product_attention` and `nn.MultiheadAttention`.
//! The fixtures are written by `python/fixtures_blocks_attention.py`.
//!
//! Every case checks the outputs, every activation the reference recorded (an
//! activation the Rust side never produced is a failed row), and, where the
//! fixture holds them, the gradients of every input and parameter. All use the
//! default tolerance of the fixture's dtype.

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use replica_check::trace::{self, Trace};
use replica_check::{
    compare, compare_trace, Bundle, Case, Error, Namespace, Parity, Report, Result, Tolerance, TraceMap, WeightMap,
};
use serde::Deserialize;

use crate::alibi::{Alibi, AlibiConfig};
use crate::attention::{scaled_dot_product_attention, Attention, AttentionConfig, AttentionNames, SdpaOptions};
use crate::mask;
use crate::norm::NormKind;
use crate::position_embedding::{LearnedPositionConfig, LearnedPositionEmbedding};
use crate::rope::{Rope, RopeConfig, RopeStyle};
use crate::sinusoidal::{SinusoidalConfig, SinusoidalPositionEmbedding};

const ROFORMER: &str = "2104.09864";
const TRANSFORMER: &str = "1706.03762";

/// Every attention and position-encoding case.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "rope_half_split",
            reference: "transformers LlamaRotaryEmbedding + apply_rotary_pos_emb",
            paper: Some(ROFORMER),
            fixture: "blocks/rope_half_split",
            run: rope_half_split,
        },
        Case {
            name: "rope_long_positions",
            reference: "transformers LlamaRotaryEmbedding + apply_rotary_pos_emb, positions 4000..4004",
            paper: Some(ROFORMER),
            fixture: "blocks/rope_long_positions",
            run: rope_half_split,
        },
        Case {
            name: "rope_half_split_partial",
            reference: "transformers GPTNeoXRotaryEmbedding + apply_rotary_pos_emb (partial_rotary_factor)",
            paper: Some(ROFORMER),
            fixture: "blocks/rope_half_split_partial",
            run: rope_half_split_partial,
        },
        Case {
            name: "rope_interleaved_partial",
            reference: "transformers GPT-J create_sinusoidal_positions + apply_rotary_pos_emb (rotary_dim)",
            paper: Some(ROFORMER),
            fixture: "blocks/rope_interleaved_partial",
            run: rope_interleaved_partial,
        },
        Case {
            name: "sinusoidal_paper",
            reference: "transcription of arXiv 1706.03762 section 3.5",
            paper: Some(TRANSFORMER),
            fixture: "blocks/sinusoidal_paper",
            run: sinusoidal_paper,
        },
        Case {
            name: "sinusoidal_marian",
            reference: "transformers MarianSinusoidalPositionalEmbedding",
            paper: Some(TRANSFORMER),
            fixture: "blocks/sinusoidal_marian",
            run: sinusoidal_marian,
        },
        Case {
            name: "learned_position",
            reference: "GPT-2 wpe (torch.nn.Embedding)",
            paper: Some("1705.03122"),
            fixture: "blocks/learned_position",
            run: learned_position,
        },
        Case {
            name: "alibi",
            reference: "transformers BLOOM build_alibi_tensor + the paper's get_slopes",
            paper: Some("2108.12409"),
            fixture: "blocks/alibi",
            run: alibi,
        },
        Case {
            name: "sdpa_causal",
            reference: "torch.nn.functional.scaled_dot_product_attention(is_causal=True)",
            paper: Some(TRANSFORMER),
            fixture: "blocks/sdpa_causal",
            run: sdpa_causal,
        },
        Case {
            name: "sdpa_causal_top_left",
            reference: "torch.nn.functional.scaled_dot_product_attention(is_causal=True), q_len < k_len",
            paper: Some(TRANSFORMER),
            fixture: "blocks/sdpa_causal_top_left",
            run: sdpa_causal_top_left,
        },
        Case {
            name: "sdpa_padding",
            reference: "torch.nn.functional.scaled_dot_product_attention, boolean key-padding mask",
            paper: Some(TRANSFORMER),
            fixture: "blocks/sdpa_padding",
            run: sdpa_padding,
        },
        Case {
            name: "sdpa_left_padding_causal",
            reference: "torch.nn.functional.scaled_dot_product_attention, HF attention_mask & causal",
            paper: Some(TRANSFORMER),
            fixture: "blocks/sdpa_left_padding_causal",
            run: sdpa_left_padding_causal,
        },
        Case {
            name: "sdpa_additive",
            reference: "torch.nn.functional.scaled_dot_product_attention, additive mask and scale",
            paper: Some(TRANSFORMER),
            fixture: "blocks/sdpa_additive",
            run: sdpa_additive,
        },
        Case {
            name: "sdpa_gqa",
            reference: "torch.nn.functional.scaled_dot_product_attention(enable_gqa=True)",
            paper: Some("2305.13245"),
            fixture: "blocks/sdpa_gqa",
            run: sdpa_gqa,
        },
        Case {
            name: "attention_timm",
            reference: "timm.layers.Attention",
            paper: Some(TRANSFORMER),
            fixture: "blocks/attention_timm",
            run: timm_attention,
        },
        Case {
            name: "attention_timm_qk_norm",
            reference: "timm.layers.Attention(qk_norm=True)",
            paper: Some("2010.04245"),
            fixture: "blocks/attention_timm_qk_norm",
            run: timm_attention,
        },
        Case {
            name: "attention_timm_qk_norm_f16",
            reference: "timm.layers.Attention(qk_norm=True)",
            paper: Some("2010.04245"),
            fixture: "blocks/attention_timm_qk_norm_f16",
            run: timm_attention,
        },
        Case {
            name: "attention_timm_qk_norm_bf16",
            reference: "timm.layers.Attention(qk_norm=True)",
            paper: Some("2010.04245"),
            fixture: "blocks/attention_timm_qk_norm_bf16",
            run: timm_attention,
        },
        Case {
            name: "attention_gqa",
            reference: "transformers LlamaAttention",
            paper: Some("2305.13245"),
            fixture: "blocks/attention_gqa",
            run: llama_attention,
        },
        Case {
            name: "attention_gqa_f16",
            reference: "transformers LlamaAttention",
            paper: Some("2305.13245"),
            fixture: "blocks/attention_gqa_f16",
            run: llama_attention,
        },
        Case {
            name: "attention_gqa_bf16",
            reference: "transformers LlamaAttention",
            paper: Some("2305.13245"),
            fixture: "blocks/attention_gqa_bf16",
            run: llama_attention,
        },
        Case {
            name: "attention_mqa",
            reference: "transformers LlamaAttention",
            paper: Some("1911.02150"),
            fixture: "blocks/attention_mqa",
            run: llama_attention,
        },
        Case {
            name: "attention_cross",
            reference: "torch.nn.MultiheadAttention",
            paper: Some(TRANSFORMER),
            fixture: "blocks/attention_cross",
            run: cross_attention,
        },
        Case {
            name: "attention_softcap",
            reference: "transformers Gemma2Attention",
            paper: Some("2408.00118"),
            fixture: "blocks/attention_softcap",
            run: gemma2_attention,
        },
    ]
}

// ------------------------------------------------------------------ helpers

fn fail(bundle: &Bundle, message: impl Into<String>) -> Error {
    Error::file(bundle.origin(), message)
}

/// The dtype the reference ran in.
pub fn bundle_dtype(bundle: &Bundle) -> Result<DType> {
    match bundle.metadata().dtype.as_str() {
        "float32" => Ok(DType::F32),
        "float16" => Ok(DType::F16),
        "bfloat16" => Ok(DType::BF16),
        "float64" => Ok(DType::F64),
        other => Err(fail(bundle, format!("unsupported bundle dtype `{other}`"))),
    }
}

/// Fields of a HF decoder `config.json` that configure the rest of the model, not
/// its attention or rotary embedding: the vocabulary and embeddings, the depth,
/// the MLP, the residual layout, the logits. A case on one attention module does
/// not use them. (`pretraining_tp` is here too: transformers v5's attention ignores
/// it, and v4's sliced projections only reorder the same sums.)
pub const OUTSIDE_ATTENTION: &[&str] = &[
    "vocab_size",
    "pad_token_id",
    "tie_word_embeddings",
    "num_hidden_layers",
    "intermediate_size",
    "hidden_act",
    "hidden_activation",
    "mlp_bias",
    "hidden_dropout",
    "classifier_dropout",
    "use_parallel_residual",
    "final_logit_softcapping",
    "pretraining_tp",
];

/// [`OUTSIDE_ATTENTION`] and the model's name: what a rotary embedding on a whole
/// model's config does not use.
fn outside_rope() -> Vec<&'static str> {
    let mut fields = OUTSIDE_ATTENTION.to_vec();
    fields.push("model_type");
    fields
}

/// The attention settings of a HF decoder `config.json` in the bundle (LLaMA,
/// GPT-NeoX, Gemma 2), read strictly as the cases read it, for tests that build the
/// block themselves. The RoPE fixtures' `offset` and the fields of the attention
/// pattern (`sliding_window`, `layer_types`, ...) are accepted without being checked:
/// the cases check them.
pub fn attention_config(bundle: &Bundle) -> Result<AttentionConfig> {
    #[derive(Deserialize)]
    struct Rest {
        #[serde(default)]
        #[allow(dead_code)] // read so that it is not refused
        offset: Option<usize>,
    }
    let (config, _, _): (AttentionConfig, AttentionPattern, Rest) = bundle.config_parts(&outside_rope())?;
    Ok(config)
}

/// A position offset (the cache length the positions start after).
#[derive(Deserialize)]
struct Offset {
    offset: usize,
}

fn has_gradients(bundle: &Bundle) -> bool {
    bundle.names(Namespace::OutputGrad).next().is_some()
}

/// Adds a row per recorded activation that the reference also has.
fn check_trace(run: &mut Parity, bundle: &Bundle, recorded: &Trace) -> Result<()> {
    let tolerance = Tolerance::for_dtype(bundle_dtype(bundle)?);
    for row in compare_trace(recorded, bundle, tolerance).rows {
        if let Some(comparison) = row.comparison {
            run.report_mut()
                .push(format!("{}{}", Namespace::Activation, row.path), comparison);
        }
    }
    Ok(())
}

/// Ends the run; every reference activation without a row becomes a failed row.
fn finish(run: Parity, bundle: &Bundle) -> Report {
    let mut report = run.finish();
    let checked: BTreeSet<String> = report.rows.iter().map(|r| r.name.clone()).collect();
    for (name, expected) in bundle.activations() {
        let label = format!("{}{name}", Namespace::Activation);
        if !checked.contains(&label) {
            let mut comparison = compare(expected, expected, Tolerance::EXACT);
            comparison.incompatible = Some("the Rust side never recorded this activation".into());
            report.push(label, comparison);
        }
    }
    report
}

fn forward_and_backward(run: &mut Parity, bundle: &Bundle, outputs: &[(&str, &Tensor)]) -> Result<()> {
    run.check_outputs(outputs);
    if has_gradients(bundle) {
        run.check_backward(outputs)?;
    }
    Ok(())
}

/// HF's `(cos, sin)` layout: `[1, seq, rotary_dim]`, each table repeated twice
/// along the features (`torch.cat((freqs, freqs), -1)`), in `dtype`.
fn hf_rope_tables(rope: &Rope, seq: usize, offset: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    let (cos, sin) = rope.tables(seq, offset)?;
    let twice =
        |t: Tensor| -> candle_core::Result<Tensor> { Tensor::cat(&[&t, &t], D::Minus1)?.unsqueeze(0)?.to_dtype(dtype) };
    Ok((twice(cos)?, twice(sin)?))
}

// --------------------------------------------------------------------- RoPE

fn rope_pair(bundle: &Bundle, config: &RopeConfig, offset: usize, hf_tables: bool) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let (q, k) = (run.input("0")?, run.input("1")?);
    let rope = Rope::new(config, q.device())?;
    let (q_rot, k_rot) = (rope.apply(&q, offset)?, rope.apply(&k, offset)?);
    if hf_tables {
        let (cos, sin) = hf_rope_tables(&rope, q.dim(2)?, offset, q.dtype())?;
        run.check_activations(&[("rotary_emb:0", &cos), ("rotary_emb:1", &sin)]);
    }
    forward_and_backward(&mut run, bundle, &[("0", &q_rot), ("1", &k_rot)])?;
    Ok(finish(run, bundle))
}

/// The rotary embedding of a HF model config, and the position offset.
fn hf_rope(bundle: &Bundle, model: &str) -> Result<(RopeConfig, usize)> {
    let (attention, offset): (AttentionConfig, Offset) = bundle.config_parts(&outside_rope())?;
    let config = attention
        .rope_config()?
        .ok_or_else(|| fail(bundle, format!("the {model} config does not ask for rotary embeddings")))?;
    Ok((config, offset.offset))
}

/// HF LLaMA: half-split rotation of every feature, positions from `offset`.
fn rope_half_split(bundle: &Bundle) -> Result<Report> {
    let (config, offset) = hf_rope(bundle, "LLaMA")?;
    rope_pair(bundle, &config, offset, true)
}

/// GPT-NeoX: half-split rotation of the first quarter of each head.
fn rope_half_split_partial(bundle: &Bundle) -> Result<Report> {
    let (config, offset) = hf_rope(bundle, "GPT-NeoX")?;
    rope_pair(bundle, &config, offset, true)
}

/// GPT-J: interleaved rotation of the first `rotary_dim` features.
fn rope_interleaved_partial(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        head_dim: usize,
        rotary_dim: usize,
        max_position_embeddings: usize,
        offset: usize,
    }
    let args: Args = bundle.config()?;
    let config = RopeConfig {
        style: RopeStyle::Interleaved,
        rotary_features: Some(args.rotary_dim),
        max_positions: args.max_position_embeddings,
        ..RopeConfig::new(args.head_dim)
    };
    rope_pair(bundle, &config, args.offset, false)
}

// ------------------------------------------------------ absolute positions

fn vb_from_params<'a>(run: &Parity, dtype: DType, device: &Device) -> VarBuilder<'a> {
    VarBuilder::from_tensors(
        run.params().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        dtype,
        device,
    )
}

/// The paper's interleaved table added to the input; the whole table is also
/// compared with the reference's `pe` buffer.
fn sinusoidal_paper(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Rows {
        max_positions: usize,
        offset: usize,
    }
    let (config, rows): (SinusoidalConfig, Rows) = bundle.config_parts(&[])?;
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    let pe = SinusoidalPositionEmbedding::new(&config, vb_from_params(&run, DType::F32, x.device()))?;
    let y = pe.add_to(&x, rows.offset)?;
    let table = pe.table(rows.max_positions, 0)?;
    run.report_mut()
        .check(bundle, Namespace::Param, "pe", &table, Tolerance::default());
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// Marian's `[sin | cos]` table: the rows for the offset positions (its activation
/// is `[seq, dim]`, without the batch dimension) and the whole stored table.
fn sinusoidal_marian(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Table {
        num_positions: usize,
        cache_length: usize,
    }
    let (config, table): (SinusoidalConfig, Table) = bundle.config_parts(&[])?;
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    let vb = vb_from_params(&run, DType::F32, x.device());
    let pe = SinusoidalPositionEmbedding::new(&config, vb.pp("embed_positions"))?;
    let offset = table.cache_length;
    // Marian's module returns its rows without the batch dimension the block's output has.
    let marian = TraceMap::new().transform(r"^embed_positions$", |rows| rows.squeeze(0));
    let y = trace::mapped(&marian, || pe.add_to(&x, offset))?;
    let rows = pe.forward(x.dim(1)?, offset)?.squeeze(0)?;
    run.check_activations(&[("embed_positions", &rows)]);
    let table = pe.table(table.num_positions, 0)?;
    let weight = Tolerance::default();
    run.report_mut()
        .check(bundle, Namespace::Param, "embed_positions.weight", &table, weight);
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// GPT-2's `wpe` rows for positions `past_length ..`, added to the input.
fn learned_position(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Past {
        past_length: usize,
    }
    let (config, past): (LearnedPositionConfig, Past) = bundle.config_parts(&[])?;
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin())?;
    let wpe = weights.build(DType::F32, x.device(), |vb| {
        LearnedPositionEmbedding::new(&config, vb.pp("wpe"))
    })?;
    let (y, recorded) = trace::record(|| wpe.add_to(&x, past.past_length));
    let y = y?;
    check_trace(&mut run, bundle, &recorded)?;
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

// -------------------------------------------------------------------- ALiBi

/// Attention biased by ALiBi (6 heads: not a power of two), causal when the config
/// says so, and the slopes.
fn alibi(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Mask {
        #[serde(default)]
        causal: bool,
    }
    let (config, mask): (AlibiConfig, Mask) = bundle.config_parts(&[])?;
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = (run.input("0")?, run.input("1")?, run.input("2")?);
    let alibi = Alibi::new(&config, q.device())?;
    let (q_len, k_len) = (q.dim(2)?, k.dim(2)?);
    let bias = alibi.bias(q_len, k_len, 0, DType::F32)?;
    let options = SdpaOptions {
        causal: mask.causal,
        ..SdpaOptions::default()
    };
    let y = scaled_dot_product_attention(&q, &k, &v, Some(&bias), &options)?;
    let slopes = alibi.slopes().clone();
    forward_and_backward(&mut run, bundle, &[("0", &y), ("1", &slopes)])?;
    Ok(finish(run, bundle))
}

// --------------------------------------------------------------------- SDPA

fn qkv(run: &Parity) -> Result<(Tensor, Tensor, Tensor)> {
    Ok((run.input("0")?, run.input("1")?, run.input("2")?))
}

/// Torch's `is_causal`, which these cases implement: `true` (or an error naming the field).
fn require_causal(bundle: &Bundle, field: &str, causal: bool) -> Result<()> {
    if !causal {
        return Err(bundle.config_error(field, "this case checks causal attention: expected true, got false"));
    }
    Ok(())
}

/// How the reference read `input/3` (the config's `mask`), which the case must read alike.
fn require_mask_kind(bundle: &Bundle, mask: &str, expected: &str) -> Result<()> {
    if mask != expected {
        return Err(bundle.config_error("mask", format!("this case reads input/3 as {expected:?}, got {mask:?}")));
    }
    Ok(())
}

/// Causal attention; grouped-query heads only with torch's `enable_gqa`.
fn sdpa_causal(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        is_causal: bool,
        #[serde(default)]
        enable_gqa: bool,
    }
    let args: Args = bundle.config()?;
    require_causal(bundle, "is_causal", args.is_causal)?;
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = qkv(&run)?;
    if q.dim(1)? != k.dim(1)? && !args.enable_gqa {
        return Err(bundle.config_error(
            "enable_gqa",
            format!(
                "{} query heads and {} key heads need enable_gqa = true (torch refuses them otherwise), got false",
                q.dim(1)?,
                k.dim(1)?
            ),
        ));
    }
    let options = SdpaOptions {
        causal: true,
        ..SdpaOptions::default()
    };
    let y = scaled_dot_product_attention(&q, &k, &v, None, &options)?;
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// Torch's `is_causal` with fewer queries than keys aligns top-left: a causal
/// mask with offset 0 (the `causal` option aligns bottom-right, as a KV cache needs).
/// The fixture's `note` says so in words.
fn sdpa_causal_top_left(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        is_causal: bool,
    }
    let args: Args = bundle.config_parts::<(Args,)>(&["note"])?.0;
    require_causal(bundle, "is_causal", args.is_causal)?;
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = qkv(&run)?;
    let causal = mask::causal_mask(q.dim(2)?, k.dim(2)?, 0, DType::F32, q.device())?;
    let y = scaled_dot_product_attention(&q, &k, &v, Some(&causal), &SdpaOptions::default())?;
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// A ragged batch: the reference's boolean mask is used as it is, and the same
/// mask is rebuilt from the sequence lengths.
fn sdpa_padding(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        lengths: Vec<usize>,
        mask: String,
    }
    let args: Args = bundle.config()?;
    require_mask_kind(bundle, &args.mask, "bool, True = attend")?;
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = qkv(&run)?;
    let boolean = run.input("3")?;
    let from_lengths = mask::padding_mask_from_lengths(&args.lengths, k.dim(2)?, DType::F32, q.device())?;
    let expected = mask::to_additive(&boolean, DType::F32)?;
    run.report_mut().push(
        "mask: padding_mask_from_lengths vs the reference's boolean mask",
        compare(&from_lengths, &expected, Tolerance::EXACT),
    );
    let options = SdpaOptions::default();
    let y_lengths = scaled_dot_product_attention(&q, &k, &v, Some(&from_lengths), &options)?;
    run.check_outputs_of("additive mask from lengths", &[("0", &y_lengths)]);
    let y = scaled_dot_product_attention(&q, &k, &v, Some(&boolean), &options)?;
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// HF's 0/1 `attention_mask` with left padding under a causal mask: the padded
/// queries see no key, and must come out as zeros (not NaN), as from torch. The
/// config repeats the mask, which must be `input/3`.
fn sdpa_left_padding_causal(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        attention_mask: Vec<Vec<i64>>,
        causal: bool,
    }
    let args: Args = bundle.config()?;
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = qkv(&run)?;
    let attention_mask = run.input("3")?;
    let given = attention_mask.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    if given != args.attention_mask {
        return Err(bundle.config_error(
            "attention_mask",
            format!("must be the mask of input/3, {given:?}; got {:?}", args.attention_mask),
        ));
    }
    let padding = mask::padding_mask(&attention_mask, DType::F32)?;
    let options = SdpaOptions {
        causal: args.causal,
        ..SdpaOptions::default()
    };
    let y = scaled_dot_product_attention(&q, &k, &v, Some(&padding), &options)?;
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// A float mask (with some `-inf`), a custom scale, `q_len != k_len` and a value
/// width different from the key width; the mask's gradient is checked too.
fn sdpa_additive(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        mask: String,
        scale: f64,
    }
    let args: Args = bundle.config()?;
    require_mask_kind(bundle, &args.mask, "additive float")?;
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = qkv(&run)?;
    let additive = run.input("3")?;
    let options = SdpaOptions {
        scale: Some(args.scale),
        ..SdpaOptions::default()
    };
    let y = scaled_dot_product_attention(&q, &k, &v, Some(&additive), &options)?;
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// Six query heads sharing two key/value heads, causal.
fn sdpa_gqa(bundle: &Bundle) -> Result<Report> {
    sdpa_causal(bundle)
}

// ---------------------------------------------------------------- attention

/// Builds `build` on the bundle's parameters through the strict loader: a weight
/// the block does not ask for, or one it misses, fails the case.
fn build_strict<M>(
    run: &Parity,
    bundle: &Bundle,
    map: WeightMap,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
) -> Result<M> {
    let weights = map.apply(run.params().clone(), bundle.origin())?;
    weights.build(bundle_dtype(bundle)?, &Device::Cpu, build)
}

/// A norm layer named as a Python class or a short name (timm's `norm_layer`).
pub fn norm_layer(bundle: &Bundle, field: &str, name: &str) -> Result<NormKind> {
    match name {
        "torch.nn.LayerNorm" | "nn.LayerNorm" | "LayerNorm" | "layer_norm" | "layernorm" | "timm.layers.LayerNorm" => {
            Ok(NormKind::LayerNorm)
        }
        "torch.nn.RMSNorm" | "nn.RMSNorm" | "RMSNorm" | "rms_norm" | "rmsnorm" | "timm.layers.RmsNorm" => {
            Ok(NormKind::RmsNorm)
        }
        other => Err(bundle.config_error(field, format!("expected a LayerNorm or RMSNorm class, got {other:?}"))),
    }
}

/// timm `Attention` (fused `qkv`, optional LayerNorm QK-norm) as the root module.
/// `fused_attn` picks torch's fused kernel or the explicit softmax: the same
/// attention, so it is not used.
fn timm_attention(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Timm {
        #[serde(default)]
        norm_layer: Option<String>,
    }
    let (mut config, timm): (AttentionConfig, Timm) = bundle.config_parts(&["fused_attn"])?;
    if let Some(name) = &timm.norm_layer {
        config.norm = norm_layer(bundle, "norm_layer", name)?;
    }
    config.fused_qkv = true;
    config.names = Some(AttentionNames::timm());
    let mut run = Parity::new(bundle)?;
    let attention = build_strict(&run, bundle, WeightMap::new(), |vb| Attention::new(&config, vb))?;
    let x = run.input("0")?;
    let (y, recorded) = trace::record(|| attention.forward(&x, None, None));
    let y = y?;
    check_trace(&mut run, bundle, &recorded)?;
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// HF `LlamaAttention` (GQA or MQA, RoPE, causal) under `self_attn`, with its
/// rotary tables under `rotary_emb`; the config is the HF `config.json` itself.
fn llama_attention(bundle: &Bundle) -> Result<Report> {
    decoder_attention(bundle, "llama")
}

/// HF `Gemma2Attention`: GQA, RoPE, `query_pre_attn_scalar` and logit soft-capping;
/// the eager reference also returns the attention probabilities.
fn gemma2_attention(bundle: &Bundle) -> Result<Report> {
    decoder_attention(bundle, "gemma2")
}

/// The fields of a HF decoder config that decide the attention pattern, which the
/// block (causal, full attention) must match.
#[derive(Deserialize)]
struct AttentionPattern {
    #[serde(default)]
    model_type: Option<String>,
    /// Per layer: `full_attention` or `sliding_attention`; the module is layer 0.
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_bidirectional_attention: Option<bool>,
}

impl AttentionPattern {
    /// Refuses what the causal, full attention of the block does not compute on `seq` tokens.
    fn check(&self, bundle: &Bundle, model_type: &str, seq: usize) -> Result<()> {
        if let Some(kind) = self.model_type.as_deref().filter(|kind| *kind != model_type) {
            return Err(bundle.config_error(
                "model_type",
                format!("this case implements {model_type:?} attention, got {kind:?}"),
            ));
        }
        if let Some(kind) = self.layer_types.as_ref().and_then(|types| types.first()) {
            if kind != "full_attention" {
                return Err(bundle.config_error(
                    "layer_types",
                    format!("layer 0 must be \"full_attention\" (no sliding window is implemented), got {kind:?}"),
                ));
            }
        }
        // HF uses the window only on sliding layers; refusing any window shorter than the
        // sequence is stricter than that, and never lets one go unimplemented.
        if let Some(window) = self.sliding_window.filter(|&window| window < seq) {
            return Err(bundle.config_error(
                "sliding_window",
                format!(
                    "no sliding window is implemented, so it must be null or at least the sequence length {seq}, got {window}"
                ),
            ));
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(bundle.config_error(
                "use_bidirectional_attention",
                "this case checks causal attention: expected false or null, got true",
            ));
        }
        Ok(())
    }
}

fn decoder_attention(bundle: &Bundle, model_type: &str) -> Result<Report> {
    let (mut config, pattern): (AttentionConfig, AttentionPattern) = bundle.config_parts(OUTSIDE_ATTENTION)?;
    config.causal = true;
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    pattern.check(bundle, model_type, x.dim(1)?)?;
    let attention = build_strict(&run, bundle, WeightMap::new(), |vb| {
        Attention::new(&config, vb.pp("self_attn"))
    })?;
    let (result, recorded) = trace::record(|| attention.forward_with_weights(&x, None, None, None));
    // The tuple is recorded as `self_attn:0` and `self_attn:1`, as HF's hooks name it.
    let (y, _) = result?;
    check_trace(&mut run, bundle, &recorded)?;
    let rope = attention
        .rope()
        .ok_or_else(|| fail(bundle, "the config does not ask for rotary embeddings"))?;
    let (cos, sin) = hf_rope_tables(rope, x.dim(1)?, 0, x.dtype())?;
    run.check_activations(&[("rotary_emb:0", &cos), ("rotary_emb:1", &sin)]);
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// `torch.nn.MultiheadAttention`'s arguments, as the fixtures record them.
#[derive(Deserialize)]
pub struct MultiheadArgs {
    pub embed_dim: usize,
    pub num_heads: usize,
    #[serde(default)]
    pub kdim: Option<usize>,
    #[serde(default)]
    pub vdim: Option<usize>,
    #[serde(default = "yes")]
    pub bias: bool,
    #[serde(default)]
    pub batch_first: bool,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub dropout: f32,
    #[serde(default)]
    pub add_bias_kv: bool,
    #[serde(default)]
    pub add_zero_attn: bool,
}

fn yes() -> bool {
    true
}

impl MultiheadArgs {
    /// Refuses what the block does not implement: batch-second inputs, the extra
    /// key/value rows, different key and value widths.
    pub fn check(&self, bundle: &Bundle) -> Result<()> {
        if !self.batch_first {
            return Err(bundle.config_error(
                "batch_first",
                "inputs are read as [batch, seq, features]: expected true, got false",
            ));
        }
        for (field, set) in [("add_bias_kv", self.add_bias_kv), ("add_zero_attn", self.add_zero_attn)] {
            if set {
                return Err(bundle.config_error(field, "not implemented: expected false, got true"));
            }
        }
        if self.vdim != self.kdim {
            return Err(bundle.config_error(
                "vdim",
                format!(
                    "must equal kdim ({:?}): one context width is implemented, got {:?}",
                    self.kdim, self.vdim
                ),
            ));
        }
        Ok(())
    }
}

/// `nn.MultiheadAttention` as cross-attention with `kdim != embed_dim`: the weight
/// map gives its `q_proj_weight`/`in_proj_bias` layout the names of separate
/// projections (gradients flow back through the split to the fused bias).
fn cross_attention(bundle: &Bundle) -> Result<Report> {
    let args: MultiheadArgs = bundle.config()?;
    args.check(bundle)?;
    let mut run = Parity::new(bundle)?;
    let config = AttentionConfig {
        context_dim: args.kdim,
        qkv_bias: args.bias,
        proj_bias: Some(args.bias),
        attention_dropout: args.dropout,
        names: Some(AttentionNames {
            out: "out_proj".into(),
            ..AttentionNames::hf()
        }),
        ..AttentionConfig::new(args.embed_dim, args.num_heads)
    };
    let map = WeightMap::new()
        .rename(r"^attn\.([qkv])_proj_weight$", "attn.${1}_proj.weight")
        .split(
            r"^attn\.in_proj_bias$",
            0,
            &["attn.q_proj.bias", "attn.k_proj.bias", "attn.v_proj.bias"],
        );
    let attention = build_strict(&run, bundle, map, |vb| Attention::new(&config, vb.pp("attn")))?;
    let (x, context) = (run.input("0")?, run.input("1")?);
    let (y, recorded) = trace::record(|| attention.forward_cross(&x, &context, None));
    let y = y?;
    check_trace(&mut run, bundle, &recorded)?;
    run.check_activations(&[("attn:0", &y)]);
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}
