//! Attention against the real reference code (`python/fixtures_blocks_attention.py`):
//! torch's `scaled_dot_product_attention` with causal, padding and additive masks
//! and grouped-query heads, timm's `Attention`, HF's `LlamaAttention` and
//! `Gemma2Attention`, and torch's `nn.MultiheadAttention` as cross-attention.
//!
//! HF attention modules return `(output, probabilities)`, recorded by the reference
//! as `self_attn:0` and `self_attn:1`; the block records its output under its path,
//! which the harness compares with `:0`. Where the fixture's wrapper records the
//! rotary tables (`rotary_emb`), the case records the block's own in HF's layout.

use candle_core::{DType, Tensor};
use replica_blocks::attention::{
    scaled_dot_product_attention, Attention, AttentionConfig, AttentionNames, SdpaOptions,
};
use replica_blocks::mask;
use replica_blocks::papers::{ATTENTION_IS_ALL_YOU_NEED, GEMMA_2, GQA, MISTRAL, MQA, QK_NORM};
use replica_check::config_check::finite;
use replica_check::{
    check_block, compare, sizeless_config, tap_tuple, trace, BlockCheck, Bundle, Case, ConfigCheck, Error, Footprint,
    Parity, Report, Result, Tolerance, TraceMap, Unmatched, WeightMap, Workload,
};
use serde::Deserialize;

use crate::case;
use crate::reference::{norm_layer, AttentionPattern, MultiheadArgs, CROSS_ATTENTION_PORT_ONLY, OUTSIDE_ATTENTION};

/// Every attention case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("sdpa_causal",                 "torch.nn.functional.scaled_dot_product_attention(is_causal=True)",                Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/sdpa_causal",                 sdpa_causal),
        case("sdpa_causal_top_left",        "torch.nn.functional.scaled_dot_product_attention(is_causal=True), q_len < k_len", Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/sdpa_causal_top_left",        sdpa_causal_top_left),
        case("sdpa_padding",                "torch.nn.functional.scaled_dot_product_attention, boolean key-padding mask",      Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/sdpa_padding",                sdpa_padding),
        case("sdpa_left_padding_causal",    "torch.nn.functional.scaled_dot_product_attention, HF attention_mask & causal",    Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/sdpa_left_padding_causal",    sdpa_left_padding_causal),
        case("sdpa_additive",               "torch.nn.functional.scaled_dot_product_attention, additive mask and scale",       Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/sdpa_additive",               sdpa_additive),
        case("sdpa_gqa",                    "torch.nn.functional.scaled_dot_product_attention(enable_gqa=True)",               Some(GQA),                       "blocks/sdpa_gqa",                    sdpa_gqa),
        case("attention_timm",              "timm.layers.Attention",                                                           Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/attention_timm",              timm_attention),
        case("attention_timm_qk_norm",      "timm.layers.Attention(qk_norm=True)",                                             Some(QK_NORM),                   "blocks/attention_timm_qk_norm",      timm_attention),
        case("attention_timm_qk_norm_f16",  "timm.layers.Attention(qk_norm=True)",                                             Some(QK_NORM),                   "blocks/attention_timm_qk_norm_f16",  timm_attention),
        case("attention_timm_qk_norm_bf16", "timm.layers.Attention(qk_norm=True)",                                             Some(QK_NORM),                   "blocks/attention_timm_qk_norm_bf16", timm_attention),
        case("attention_gqa",               "transformers LlamaAttention",                                                     Some(GQA),                       "blocks/attention_gqa",               llama_attention),
        case("attention_gqa_f16",           "transformers LlamaAttention",                                                     Some(GQA),                       "blocks/attention_gqa_f16",           llama_attention),
        case("attention_gqa_bf16",          "transformers LlamaAttention",                                                     Some(GQA),                       "blocks/attention_gqa_bf16",          llama_attention),
        case("attention_mqa",               "transformers LlamaAttention",                                                     Some(MQA),                       "blocks/attention_mqa",               llama_attention),
        case("attention_cross",             "torch.nn.MultiheadAttention",                                                     Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/attention_cross",             cross_attention),
        case("attention_softcap",           "transformers Gemma2Attention",                                                    Some(GEMMA_2),                   "blocks/attention_softcap",           gemma2_attention),
        case("attention_sliding_window",    "transformers Gemma2Attention (sliding_attention)",                                Some(MISTRAL),                   "blocks/attention_sliding_window",    gemma2_attention),
    ]
}

// --------------------------------------------------------------------- SDPA

/// `scaled_dot_product_attention` on the inputs: for every query row a score per
/// key (scores, probabilities and their gradients), and copies of the inputs.
fn sdpa_footprint(work: &Workload) -> Footprint {
    Footprint::activations(work.bytes(work.rows() * work.len() * 4 + work.elements() * 4))
}

/// [`ConfigCheck`] for an SDPA case's arguments, which decide no sizes: [`sdpa_footprint`].
macro_rules! sdpa_config {
    ($args:ty) => {
        impl ConfigCheck for $args {
            fn footprint(&self, work: &Workload) -> Footprint {
                sdpa_footprint(work)
            }
        }
    };
}

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

/// `scaled_dot_product_attention(q, k, v, mask)` on `input/0..2` with `options`,
/// and `input/3` as the mask when `with_mask`.
fn check_sdpa(bundle: &Bundle, with_mask: bool, options: &SdpaOptions) -> Result<Report> {
    let inputs: &[&str] = if with_mask {
        &["0", "1", "2", "3"]
    } else {
        &["0", "1", "2"]
    };
    BlockCheck::new(bundle).inputs(inputs).run(
        |_| Ok(()),
        |(), xs| {
            let y = scaled_dot_product_attention(&xs[0], &xs[1], &xs[2], xs.get(3), options)?;
            Ok(vec![y])
        },
    )
}

/// Causal attention; grouped-query heads only with torch's `enable_gqa`.
fn sdpa_causal(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        is_causal: bool,
        #[serde(default)]
        enable_gqa: bool,
    }
    sdpa_config!(Args);
    let args: Args = bundle.config()?;
    require_causal(bundle, "is_causal", args.is_causal)?;
    let (q_heads, k_heads) = (bundle.input("0")?.dim(1)?, bundle.input("1")?.dim(1)?);
    if q_heads != k_heads && !args.enable_gqa {
        return Err(bundle.config_error(
            "enable_gqa",
            format!(
                "{q_heads} query heads and {k_heads} key heads need enable_gqa = true (torch refuses them otherwise), got false"
            ),
        ));
    }
    let options = SdpaOptions {
        causal: true,
        ..SdpaOptions::default()
    };
    check_sdpa(bundle, false, &options)
}

/// Torch's `is_causal` with fewer queries than keys aligns top-left: a causal
/// mask with offset 0 (the `causal` option aligns bottom-right, as a KV cache needs).
/// The fixture's `note` says so in words.
fn sdpa_causal_top_left(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        is_causal: bool,
    }
    sdpa_config!(Args);
    let args: Args = bundle.config_parts::<(Args,)>(&["note"])?.0;
    require_causal(bundle, "is_causal", args.is_causal)?;
    BlockCheck::new(bundle).inputs(&["0", "1", "2"]).run(
        |_| Ok(()),
        |(), qkv| {
            let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
            let causal = mask::causal_mask(q.dim(2)?, k.dim(2)?, 0, DType::F32, q.device())?;
            Ok(vec![scaled_dot_product_attention(
                q,
                k,
                v,
                Some(&causal),
                &SdpaOptions::default(),
            )?])
        },
    )
}

/// A ragged batch: the reference's boolean mask is used as it is, and the same
/// mask is rebuilt from the sequence lengths.
fn sdpa_padding(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        lengths: Vec<usize>,
        mask: String,
    }
    sdpa_config!(Args);
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
    run.check_outputs_and_gradients(&[("0", &y)])?;
    Ok(run.finish())
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
    sdpa_config!(Args);
    let args: Args = bundle.config()?;
    let given = bundle.input("3")?.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    if given != args.attention_mask {
        return Err(bundle.config_error(
            "attention_mask",
            format!("must be the mask of input/3, {given:?}; got {:?}", args.attention_mask),
        ));
    }
    let options = SdpaOptions {
        causal: args.causal,
        ..SdpaOptions::default()
    };
    BlockCheck::new(bundle).inputs(&["0", "1", "2", "3"]).run(
        |_| Ok(()),
        |(), xs| {
            let padding = mask::padding_mask(&xs[3], DType::F32)?;
            Ok(vec![scaled_dot_product_attention(
                &xs[0],
                &xs[1],
                &xs[2],
                Some(&padding),
                &options,
            )?])
        },
    )
}

/// A float mask (with some `-inf`), a custom scale, `q_len != k_len` and a value
/// width different from the key width; the mask's gradient is checked too.
fn sdpa_additive(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        mask: String,
        scale: f64,
    }
    impl ConfigCheck for Args {
        fn validate(&self) -> std::result::Result<(), String> {
            finite("scale", self.scale)
        }

        fn footprint(&self, work: &Workload) -> Footprint {
            sdpa_footprint(work)
        }
    }
    let args: Args = bundle.config()?;
    require_mask_kind(bundle, &args.mask, "additive float")?;
    let options = SdpaOptions {
        scale: Some(args.scale),
        ..SdpaOptions::default()
    };
    check_sdpa(bundle, true, &options)
}

/// Six query heads sharing two key/value heads, causal.
fn sdpa_gqa(bundle: &Bundle) -> Result<Report> {
    sdpa_causal(bundle)
}

// ---------------------------------------------------------------- attention

/// timm `Attention` (fused `qkv`, optional LayerNorm QK-norm) as the root module.
/// `fused_attn` picks torch's fused kernel or the explicit softmax: the same
/// attention, so it is not used.
fn timm_attention(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Timm {
        #[serde(default)]
        norm_layer: Option<String>,
    }
    sizeless_config!(Timm);
    let (mut config, timm): (AttentionConfig, Timm) = bundle.config_parts(&["fused_attn"])?;
    if let Some(name) = &timm.norm_layer {
        config.norm = norm_layer(bundle, "norm_layer", name)?;
    }
    config.fused_qkv = true;
    config.names = Some(AttentionNames::timm());
    check_block(
        bundle,
        WeightMap::new(),
        |vb| Attention::new(&config, vb),
        |attention, x| attention.forward(x, None, None),
    )
}

/// HF `LlamaAttention` (GQA or MQA, RoPE, causal) under `self_attn`, with its
/// rotary tables under `rotary_emb`; the config is the HF `config.json` itself. The
/// sdpa reference returns `(output, None)`: `self_attn:0` alone.
fn llama_attention(bundle: &Bundle) -> Result<Report> {
    decoder_attention(bundle, "llama")
}

/// HF `Gemma2Attention`: GQA, RoPE, `query_pre_attn_scalar` and logit soft-capping;
/// the eager reference also returns the attention probabilities (`self_attn:1`).
fn gemma2_attention(bundle: &Bundle) -> Result<Report> {
    decoder_attention(bundle, "gemma2")
}

/// A HF decoder attention under `self_attn`. The attention returns its probabilities
/// too and records the pair as HF's hooks name a tuple (`self_attn:0`, `self_attn:1`);
/// an sdpa reference, which returns `(output, None)`, has no `self_attn:1`, and
/// [`Parity::traced`] then leaves the port's out.
fn decoder_attention(bundle: &Bundle, model_type: &str) -> Result<Report> {
    let (mut config, pattern): (AttentionConfig, AttentionPattern) = bundle.config_parts(OUTSIDE_ATTENTION)?;
    config.causal = true;
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    config.window = pattern.window(bundle, model_type, x.dim(1)?)?;
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin())?;
    let attention = weights.build(bundle.dtype()?, x.device(), |vb| {
        Attention::new(&config, vb.pp("self_attn"))
    })?;
    let rope = attention
        .rope()
        .ok_or_else(|| Error::file(bundle.origin(), "the config does not ask for rotary embeddings"))?;
    let ((y, _), _) = run.traced(Unmatched::NONE, || {
        let (cos, sin) = rope.hf_tables(x.dim(1)?, 0, x.dtype())?;
        tap_tuple("rotary_emb", &[&cos, &sin]);
        attention.forward_with_weights(&x, None, None, None)
    })?;
    run.check_outputs_and_gradients(&[("0", &y)])?;
    Ok(run.finish())
}

/// `nn.MultiheadAttention` as cross-attention with `kdim != embed_dim`: the weight
/// map gives its `q_proj_weight`/`in_proj_bias` layout the names of separate
/// projections (gradients flow back through the split to the fused bias).
fn cross_attention(bundle: &Bundle) -> Result<Report> {
    let args: MultiheadArgs = bundle.config()?;
    args.check(bundle)?;
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
    BlockCheck::new(bundle)
        .inputs(&["0", "1"])
        .weight_map(map)
        .unmatched(Unmatched {
            port_only: &CROSS_ATTENTION_PORT_ONLY,
            reference_only: &[],
        })
        .run(
            |vb| Attention::new(&config, vb.pp("attn")),
            // torch's `MultiheadAttention` returns `(output, weights or None)`.
            |attention, xs| {
                let torch = TraceMap::new().element("^attn$", 0);
                Ok(vec![trace::mapped(&torch, || {
                    attention.forward_cross(&xs[0], &xs[1], None)
                })?])
            },
        )
}
