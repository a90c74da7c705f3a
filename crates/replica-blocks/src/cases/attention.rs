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
    compare, compare_trace, Bundle, Case, Error, Namespace, Parity, Report, Result, Tolerance, WeightMap,
};

use crate::alibi::{Alibi, AlibiConfig};
use crate::attention::{scaled_dot_product_attention, Attention, AttentionConfig, AttentionNames, SdpaOptions};
use crate::mask;
use crate::position_embedding::{LearnedPositionConfig, LearnedPositionEmbedding};
use crate::rope::{Rope, RopeConfig, RopeStyle};
use crate::sinusoidal::{SinusoidalConfig, SinusoidalLayout, SinusoidalPositionEmbedding};

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

fn config_value<'a>(bundle: &'a Bundle, key: &str) -> Result<&'a serde_json::Value> {
    bundle
        .metadata()
        .config
        .get(key)
        .ok_or_else(|| fail(bundle, format!("metadata config has no `{key}`")))
}

fn config_usize(bundle: &Bundle, key: &str) -> Result<usize> {
    config_value(bundle, key)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| fail(bundle, format!("metadata config `{key}` is not an integer")))
}

fn config_f64(bundle: &Bundle, key: &str) -> Result<f64> {
    config_value(bundle, key)?
        .as_f64()
        .ok_or_else(|| fail(bundle, format!("metadata config `{key}` is not a number")))
}

/// The bundle's config read as an [`AttentionConfig`] (a HF `config.json` or timm's arguments).
pub fn attention_config(bundle: &Bundle) -> Result<AttentionConfig> {
    serde_json::from_value(bundle.metadata().config.clone())
        .map_err(|err| fail(bundle, format!("metadata config is not an attention config: {err}")))
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

/// HF LLaMA: half-split rotation of every feature, positions from `offset`.
fn rope_half_split(bundle: &Bundle) -> Result<Report> {
    let attention = attention_config(bundle)?;
    let config = attention
        .rope_config()?
        .ok_or_else(|| fail(bundle, "the LLaMA config does not ask for rotary embeddings"))?;
    rope_pair(bundle, &config, config_usize(bundle, "offset")?, true)
}

/// GPT-NeoX: half-split rotation of the first quarter of each head.
fn rope_half_split_partial(bundle: &Bundle) -> Result<Report> {
    let attention = attention_config(bundle)?;
    let config = attention
        .rope_config()?
        .ok_or_else(|| fail(bundle, "the GPT-NeoX config does not ask for rotary embeddings"))?;
    rope_pair(bundle, &config, config_usize(bundle, "offset")?, true)
}

/// GPT-J: interleaved rotation of the first `rotary_dim` features.
fn rope_interleaved_partial(bundle: &Bundle) -> Result<Report> {
    let config = RopeConfig {
        style: RopeStyle::Interleaved,
        rotary_features: Some(config_usize(bundle, "rotary_dim")?),
        max_positions: config_usize(bundle, "max_position_embeddings")?,
        ..RopeConfig::new(config_usize(bundle, "head_dim")?)
    };
    rope_pair(bundle, &config, config_usize(bundle, "offset")?, false)
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
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    let config = SinusoidalConfig {
        layout: SinusoidalLayout::Interleaved,
        ..SinusoidalConfig::new(config_usize(bundle, "dim")?)
    };
    let pe = SinusoidalPositionEmbedding::new(&config, vb_from_params(&run, DType::F32, x.device()))?;
    let y = pe.add_to(&x, config_usize(bundle, "offset")?)?;
    let table = pe.table(config_usize(bundle, "max_positions")?, 0)?;
    run.report_mut()
        .check(bundle, Namespace::Param, "pe", &table, Tolerance::default());
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// Marian's `[sin | cos]` table: the rows for the offset positions (its activation
/// is `[seq, dim]`, without the batch dimension) and the whole stored table.
fn sinusoidal_marian(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    let config = SinusoidalConfig {
        layout: SinusoidalLayout::Concatenated,
        ..SinusoidalConfig::new(config_usize(bundle, "embedding_dim")?)
    };
    let vb = vb_from_params(&run, DType::F32, x.device());
    let pe = SinusoidalPositionEmbedding::new(&config, vb.pp("embed_positions"))?;
    let offset = config_usize(bundle, "cache_length")?;
    let y = pe.add_to(&x, offset)?;
    let rows = pe.forward(x.dim(1)?, offset)?.squeeze(0)?;
    run.check_activations(&[("embed_positions", &rows)]);
    let table = pe.table(config_usize(bundle, "num_positions")?, 0)?;
    let weight = Tolerance::default();
    run.report_mut()
        .check(bundle, Namespace::Param, "embed_positions.weight", &table, weight);
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// GPT-2's `wpe` rows for positions `past_length ..`, added to the input.
fn learned_position(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    let config: LearnedPositionConfig = serde_json::from_value(bundle.metadata().config.clone())
        .map_err(|err| fail(bundle, format!("metadata config: {err}")))?;
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin())?;
    let wpe = weights.build(DType::F32, x.device(), |vb| {
        LearnedPositionEmbedding::new(&config, vb.pp("wpe"))
    })?;
    let offset = config_usize(bundle, "past_length")?;
    let (y, recorded) = trace::record(|| wpe.add_to(&x, offset));
    let y = y?;
    check_trace(&mut run, bundle, &recorded)?;
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

// -------------------------------------------------------------------- ALiBi

/// Causal attention biased by ALiBi (6 heads: not a power of two), and the slopes.
fn alibi(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = (run.input("0")?, run.input("1")?, run.input("2")?);
    let config: AlibiConfig = serde_json::from_value(bundle.metadata().config.clone())
        .map_err(|err| fail(bundle, format!("metadata config: {err}")))?;
    let alibi = Alibi::new(&config, q.device())?;
    let (q_len, k_len) = (q.dim(2)?, k.dim(2)?);
    let bias = alibi.bias(q_len, k_len, 0, DType::F32)?;
    let options = SdpaOptions {
        causal: true,
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

fn sdpa_causal(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = qkv(&run)?;
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
fn sdpa_causal_top_left(bundle: &Bundle) -> Result<Report> {
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
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = qkv(&run)?;
    let boolean = run.input("3")?;
    let lengths: Vec<usize> = config_value(bundle, "lengths")?
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_u64().map(|n| n as usize)).collect())
        .ok_or_else(|| fail(bundle, "metadata config `lengths` is not a list of integers"))?;
    let from_lengths = mask::padding_mask_from_lengths(&lengths, k.dim(2)?, DType::F32, q.device())?;
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
/// queries see no key, and must come out as zeros (not NaN), as from torch.
fn sdpa_left_padding_causal(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = qkv(&run)?;
    let padding = mask::padding_mask(&run.input("3")?, DType::F32)?;
    let options = SdpaOptions {
        causal: true,
        ..SdpaOptions::default()
    };
    let y = scaled_dot_product_attention(&q, &k, &v, Some(&padding), &options)?;
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// A float mask (with some `-inf`), a custom scale, `q_len != k_len` and a value
/// width different from the key width; the mask's gradient is checked too.
fn sdpa_additive(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let (q, k, v) = qkv(&run)?;
    let additive = run.input("3")?;
    let options = SdpaOptions {
        scale: Some(config_f64(bundle, "scale")?),
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

/// timm `Attention` (fused `qkv`, optional LayerNorm QK-norm) as the root module.
fn timm_attention(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let mut config = attention_config(bundle)?;
    config.fused_qkv = true;
    config.names = Some(AttentionNames::timm());
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
    decoder_attention(bundle, false)
}

/// HF `Gemma2Attention`: GQA, RoPE, `query_pre_attn_scalar` and logit soft-capping;
/// the eager reference also returns the attention probabilities.
fn gemma2_attention(bundle: &Bundle) -> Result<Report> {
    decoder_attention(bundle, true)
}

fn decoder_attention(bundle: &Bundle, with_weights: bool) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let mut config = attention_config(bundle)?;
    config.causal = true;
    let attention = build_strict(&run, bundle, WeightMap::new(), |vb| {
        Attention::new(&config, vb.pp("self_attn"))
    })?;
    let x = run.input("0")?;
    let (result, recorded) = trace::record(|| attention.forward_with_weights(&x, None, None, None));
    let (y, weights) = result?;
    check_trace(&mut run, bundle, &recorded)?;
    let rope = attention
        .rope()
        .ok_or_else(|| fail(bundle, "the config does not ask for rotary embeddings"))?;
    let (cos, sin) = hf_rope_tables(rope, x.dim(1)?, 0, x.dtype())?;
    run.check_activations(&[("rotary_emb:0", &cos), ("rotary_emb:1", &sin), ("self_attn:0", &y)]);
    if with_weights {
        run.check_activations(&[("self_attn:1", &weights)]);
    }
    forward_and_backward(&mut run, bundle, &[("0", &y)])?;
    Ok(finish(run, bundle))
}

/// `nn.MultiheadAttention` as cross-attention with `kdim != embed_dim`: the weight
/// map gives its `q_proj_weight`/`in_proj_bias` layout the names of separate
/// projections (gradients flow back through the split to the fused bias).
fn cross_attention(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let config = AttentionConfig {
        context_dim: Some(config_usize(bundle, "kdim")?),
        qkv_bias: true,
        proj_bias: Some(true),
        names: Some(AttentionNames {
            out: "out_proj".into(),
            ..AttentionNames::hf()
        }),
        ..AttentionConfig::new(config_usize(bundle, "embed_dim")?, config_usize(bundle, "num_heads")?)
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
