//! Whole transformer layers and differential attention against the real reference
//! code (`python/fixtures_blocks_composite.py`): timm's `Block`, HF's `GPT2Block`,
//! `LlamaDecoderLayer` and `GPTJBlock`, torch's `TransformerEncoderLayer`, and the
//! Differential Transformer's `MultiheadDiffAttn`.
//!
//! Each case builds the layer from the fixture's weights through the strict loader,
//! runs it traced on the fixture's input, and checks the output, every activation
//! (by name, in both directions) and, in f32, the gradients of the input and of
//! every parameter ([`check_block`]). The bf16 case checks the forward pass at
//! bf16's default tolerance; all others use f32's.
//!
//! Where a reference records something the block itself does not produce, the case
//! produces it the way the fixture's wrapper does (the rotary tables of
//! `LlamaLayer` and `GPTJLayer`, under `rotary_emb`). Where the block records
//! something the reference cannot, the case names it and says why
//! ([`POST_NORM_PORT_ONLY`]).

use candle_core::Tensor;
use replica_blocks::activation::Activation;
use replica_blocks::attention::{AttentionConfig, AttentionNames};
use replica_blocks::diff_attention::{DiffAttention, DiffAttentionConfig};
use replica_blocks::glu::GluMlpConfig;
use replica_blocks::mlp::{MlpConfig, MlpNames};
use replica_blocks::norm::NormKind;
use replica_blocks::papers::{ATTENTION_IS_ALL_YOU_NEED, DIFF_TRANSFORMER, PALM, PRE_NORM};
use replica_blocks::rope::{Rope, RopeStyle};
use replica_blocks::transformer_block::{
    BlockNames, FeedForwardConfig, ResidualLayout, TransformerBlock, TransformerBlockConfig,
};
use replica_check::config_check::{at_most, finite_positive, non_negative, positive, probability};
use replica_check::{
    check_block, tap_tuple, trace, BlockCheck, Bundle, Case, ConfigCheck, Error, Footprint, Report, Result, TraceMap,
    Unmatched, WeightMap, Workload,
};
use serde::Deserialize;

use crate::case;
use crate::reference::{norm_layer, yes, OUTSIDE_ATTENTION, POST_NORM_PORT_ONLY};

/// Every layer and differential-attention case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("block_timm_layer_scale", "timm.models.vision_transformer.Block(init_values=0.1, qk_norm=True)",             Some(PRE_NORM),                  "blocks/block_timm_layer_scale", timm_block),
        case("block_timm",             "timm.models.vision_transformer.Block",                                            Some(PRE_NORM),                  "blocks/block_timm",             timm_block),
        case("block_gpt2",             "transformers GPT2Block (sdpa)",                                                   Some(PRE_NORM),                  "blocks/block_gpt2",             gpt2_block),
        case("block_llama",            "transformers LlamaDecoderLayer (eager, in LlamaLayer)",                           Some(PRE_NORM),                  "blocks/block_llama",            llama_layer),
        case("block_llama_bf16",       "transformers LlamaDecoderLayer (sdpa, bf16, in LlamaLayer)",                      Some(PRE_NORM),                  "blocks/block_llama_bf16",       llama_layer),
        case("block_post_norm_torch",  "torch.nn.TransformerEncoderLayer(norm_first=False)",                              Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/block_post_norm",        post_norm_layer),
        case("block_parallel_gptj",    "transformers GPTJBlock (eager, in GPTJLayer)",                                    Some(PALM),                      "blocks/block_gptj",             gptj_layer),
        case("diff_attention",         "MultiheadDiffAttn (microsoft/unilm Diff-Transformer, transcribed)",               Some(DIFF_TRANSFORMER),          "blocks/diff_attention",         diff_attention),
        case("diff_attention_gqa",     "MultiheadDiffAttn(num_kv_heads) (microsoft/unilm Diff-Transformer, transcribed)", Some(DIFF_TRANSFORMER),          "blocks/diff_attention_gqa",     diff_attention),
    ]
}

/// The block's forward pass with no mask and no cache.
fn forward(block: &TransformerBlock, x: &Tensor) -> candle_core::Result<Tensor> {
    block.forward(x, None, None)
}

/// [`forward`] for a reference whose attention (at `attn`, a pattern) returns a tuple:
/// its output is element 0; with `eager`, element 1 holds the probabilities, which
/// the block then computes too.
fn tuple_forward(block: &TransformerBlock, x: &Tensor, attn: &str, eager: bool) -> candle_core::Result<Tensor> {
    trace::mapped(&TraceMap::new().element(attn, 0), || {
        if eager {
            Ok(block.forward_with_weights(x, None, None)?.0)
        } else {
            forward(block, x)
        }
    })
}

/// The fields of a HF decoder `config.json` that its layer reads beside the attention
/// and MLP settings, and the settings of GPT-2's attention that the block implements
/// only at their defaults.
#[derive(Deserialize)]
struct HfLayer {
    #[serde(default)]
    model_type: Option<String>,
    attn_implementation: String,
    #[serde(default)]
    layer_norm_epsilon: Option<f64>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    /// GPT-J: the length of the rotary tables.
    #[serde(default)]
    n_positions: Option<usize>,
    /// GPT-2: divide the scores by `sqrt(head_dim)`.
    #[serde(default)]
    scale_attn_weights: Option<bool>,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    reorder_and_upcast_attn: bool,
}

impl ConfigCheck for HfLayer {
    fn validate(&self) -> std::result::Result<(), String> {
        for (field, eps) in [
            ("layer_norm_epsilon", self.layer_norm_epsilon),
            ("rms_norm_eps", self.rms_norm_eps),
        ] {
            if let Some(eps) = eps {
                non_negative(field, eps)?;
            }
        }
        if let Some(positions) = self.n_positions {
            positive("n_positions", positions)?;
            at_most("n_positions", positions, u64::from(u32::MAX))?;
        }
        Ok(())
    }

    /// Nothing of its own: the layer built from these settings is admitted when it
    /// is built (GPT-J's rotary tables of `n_positions` rows among it).
    fn footprint(&self, _: &Workload) -> Footprint {
        Footprint::NONE
    }
}

impl HfLayer {
    /// Refuses another model's config and the GPT-2 options the block does not implement.
    fn check(&self, bundle: &Bundle, model_type: &str) -> Result<()> {
        if let Some(kind) = self.model_type.as_deref().filter(|kind| *kind != model_type) {
            return Err(bundle.config_error(
                "model_type",
                format!("this case implements the {model_type:?} layer, got {kind:?}"),
            ));
        }
        for (field, set) in [
            ("scale_attn_by_inverse_layer_idx", self.scale_attn_by_inverse_layer_idx),
            ("reorder_and_upcast_attn", self.reorder_and_upcast_attn),
        ] {
            if set {
                return Err(bundle.config_error(field, "not implemented: expected false, got true"));
            }
        }
        Ok(())
    }

    /// `"eager"` HF attention returns its probabilities (`attn:1`); sdpa returns `None` there.
    fn eager(&self, bundle: &Bundle) -> Result<bool> {
        match self.attn_implementation.as_str() {
            "eager" => Ok(true),
            "sdpa" => Ok(false),
            other => Err(bundle.config_error(
                "attn_implementation",
                format!("expected \"eager\" or \"sdpa\", got {other:?}"),
            )),
        }
    }

    /// A required number of the config, by name.
    fn require<T: Copy>(bundle: &Bundle, field: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| Error::file(bundle.origin(), format!("config: missing field `{field}`")))
    }

    /// The layer as HF builds it: no LayerScale or DropPath, and the norm's epsilon
    /// from the config (`layer_norm_epsilon` or `rms_norm_eps`). How the attention's
    /// output is returned (`attn_implementation`) is the trace's concern: [`Self::eager`].
    fn block(
        &self,
        bundle: &Bundle,
        layout: ResidualLayout,
        norm: NormKind,
        attention: AttentionConfig,
        feed_forward: FeedForwardConfig,
        names: BlockNames,
    ) -> Result<TransformerBlockConfig> {
        let (field, eps) = match norm {
            NormKind::LayerNorm | NormKind::DynamicTanh => ("layer_norm_epsilon", self.layer_norm_epsilon),
            NormKind::RmsNorm | NormKind::GemmaRmsNorm => ("rms_norm_eps", self.rms_norm_eps),
        };
        Ok(TransformerBlockConfig {
            dim: attention.dim,
            layout,
            norm,
            norm_eps: Self::require(bundle, field, eps)?,
            attention,
            feed_forward,
            layer_scale: None,
            drop_path: 0.0,
            names,
        })
    }
}

/// What a single GPT-2 / GPT-J / LLaMA layer does not use of its model's config:
/// the embeddings, the depth, the heads, and dropout on the embeddings.
fn outside_layer() -> Vec<&'static str> {
    let mut fields: Vec<&str> = OUTSIDE_ATTENTION
        .iter()
        .copied()
        .filter(|field| !["intermediate_size", "hidden_act", "mlp_bias"].contains(field))
        .collect();
    fields.extend([
        "n_layer",
        "embd_pdrop",
        // GPT2DoubleHeadsModel's sequence-summary head.
        "summary_type",
        "summary_use_proj",
        "summary_activation",
        "summary_proj_to_labels",
        "summary_first_dropout",
    ]);
    fields
}

// ----------------------------------------------------------------- pre-norm

/// timm `Block`, from its constructor arguments. Without `init_values` its `ls1`/`ls2`
/// are `nn.Identity` and without `qk_norm` so are `attn.q_norm`/`k_norm`: the block
/// records those placeholders too.
fn timm_block(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        dim: usize,
        num_heads: usize,
        mlp_ratio: f64,
        qkv_bias: bool,
        qk_norm: bool,
        init_values: Option<f64>,
        norm_eps: f64,
        #[serde(default)]
        norm_layer: Option<String>,
        #[serde(default = "gelu")]
        act_layer: Activation,
        #[serde(default)]
        attn_drop: f32,
        #[serde(default)]
        proj_drop: f64,
        #[serde(default)]
        drop_path: f64,
    }
    fn gelu() -> Activation {
        Activation::Gelu
    }
    impl Args {
        /// The block these arguments build (with timm's LayerNorm: `norm_layer` is read apart).
        fn block(&self) -> TransformerBlockConfig {
            let mut config = TransformerBlockConfig::timm(
                self.dim,
                self.num_heads,
                self.mlp_ratio,
                self.qkv_bias,
                self.qk_norm,
                self.init_values,
            );
            config.norm_eps = self.norm_eps;
            config.attention.norm_eps = self.norm_eps;
            config.attention.attention_dropout = self.attn_drop;
            config.attention.proj_dropout = self.proj_drop as f32;
            config.drop_path = self.drop_path;
            if let FeedForwardConfig::Mlp(mlp) = &mut config.feed_forward {
                mlp.activation = self.act_layer;
                mlp.dropout = self.proj_drop;
            }
            config
        }
    }
    impl ConfigCheck for Args {
        fn validate(&self) -> std::result::Result<(), String> {
            positive("dim", self.dim)?;
            positive("num_heads", self.num_heads)?;
            finite_positive("mlp_ratio", self.mlp_ratio)?;
            non_negative("norm_eps", self.norm_eps)?;
            probability("attn_drop", f64::from(self.attn_drop))?;
            probability("proj_drop", self.proj_drop)?;
            self.block().validate()
        }

        fn footprint(&self, work: &Workload) -> Footprint {
            self.block().footprint(work)
        }
    }
    let args: Args = bundle.config()?;
    let mut config = args.block();
    if let Some(name) = &args.norm_layer {
        config.norm = norm_layer(bundle, "norm_layer", name)?;
        config.attention.norm = config.norm;
    }
    check_block(
        bundle,
        WeightMap::new(),
        |vb| TransformerBlock::new(&config, vb),
        forward,
    )
}

/// HF `GPT2Block`: the attention and MLP configs read the GPT-2 `config.json`
/// directly; its `Conv1D` weights are `[in, out]`, so the weight map transposes
/// them (gradients flow back through the transpose to the stored layout). With no
/// mask, the sdpa attention is causal and returns `(output, None)`: `attn:0`.
fn gpt2_block(bundle: &Bundle) -> Result<Report> {
    let (attention, mlp, layer): (AttentionConfig, MlpConfig, HfLayer) = bundle.config_parts(&outside_layer())?;
    layer.check(bundle, "gpt2")?;
    let attention = AttentionConfig {
        fused_qkv: true,
        qkv_bias: true,
        proj_bias: Some(true),
        causal: true,
        names: Some(AttentionNames {
            qkv: "c_attn".into(),
            out: "c_proj".into(),
            proj_drop: Some("resid_dropout".into()),
            ..AttentionNames::hf()
        }),
        scale: (layer.scale_attn_weights == Some(false)).then_some(1.0),
        ..attention
    };
    let mlp = MlpConfig {
        names: MlpNames::gpt2(),
        ..mlp
    };
    let config = layer.block(
        bundle,
        ResidualLayout::PreNorm,
        NormKind::LayerNorm,
        attention,
        FeedForwardConfig::Mlp(mlp),
        BlockNames::gpt2(),
    )?;
    let eager = layer.eager(bundle)?;
    let map = WeightMap::new().transpose(r"^(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$");
    check_block(
        bundle,
        map,
        |vb| TransformerBlock::new(&config, vb),
        |block, x| tuple_forward(block, x, "^attn$", eager),
    )
}

/// HF `LlamaDecoderLayer` in `LlamaLayer`: the attention (GQA, RoPE) and SwiGLU configs
/// read the LLaMA `config.json`. The case does what the wrapper does around the layer:
/// it records the rotary tables as `rotary_emb:0` (cos) and `rotary_emb:1` (sin) in HF's
/// layout (each frequency twice, `[1, seq, head_dim]`, in the input dtype), taken from
/// the block's own [`replica_blocks::rope::Rope`]; the causal mask is the attention's `causal`.
fn llama_layer(bundle: &Bundle) -> Result<Report> {
    let (attention, glu, layer): (AttentionConfig, GluMlpConfig, HfLayer) = bundle.config_parts(&outside_layer())?;
    layer.check(bundle, "llama")?;
    let attention = AttentionConfig {
        causal: true,
        ..attention
    };
    let config = layer.block(
        bundle,
        ResidualLayout::PreNorm,
        NormKind::RmsNorm,
        attention,
        FeedForwardConfig::Glu(glu),
        BlockNames::llama(),
    )?;
    let eager = layer.eager(bundle)?;
    check_wrapped_layer(bundle, &config, r"^layer\.self_attn$", eager, |rope, x| {
        let (cos, sin) = rope.hf_tables(x.dim(1)?, 0, x.dtype())?;
        Ok([cos, sin])
    })
}

/// A HF layer in the fixture's wrapper (`LlamaLayer`, `GPTJLayer`): the layer under
/// `layer`, and the wrapper's rotary module recorded as `rotary_emb`, the two tables
/// that `tables` makes from the layer's own RoPE for the input. The layer's attention
/// (at `attn`, a pattern) returns a tuple, with the probabilities when `eager`
/// ([`tuple_forward`]).
fn check_wrapped_layer(
    bundle: &Bundle,
    config: &TransformerBlockConfig,
    attn: &str,
    eager: bool,
    tables: impl Fn(&Rope, &Tensor) -> candle_core::Result<[Tensor; 2]>,
) -> Result<Report> {
    check_block(
        bundle,
        WeightMap::new(),
        |vb| TransformerBlock::new(config, vb.pp("layer")),
        |block, x| {
            let rope = block
                .attention()
                .rope()
                .ok_or_else(|| candle_core::Error::Msg("the layer's config turns RoPE off".into()))?;
            let [first, second] = tables(rope, x)?;
            tap_tuple("rotary_emb", &[&first, &second]);
            tuple_forward(block, x, attn, eager)
        },
    )
}

// ---------------------------------------------------------------- post-norm

/// `torch.nn.TransformerEncoderLayer(norm_first=False, batch_first=True)`: post-norm.
/// The fused `in_proj_weight`/`in_proj_bias` are split by the weight map into the
/// separate projections (gradients flow back through the split to the fused tensors);
/// `linear1`/`dropout`/`linear2`/`dropout2` sit on the layer itself (MLP name `""`), and
/// so does `dropout1`, the attention's output dropout. Eval mode: every dropout is the identity.
fn post_norm_layer(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        d_model: usize,
        nhead: usize,
        dim_feedforward: usize,
        dropout: f64,
        activation: Activation,
        layer_norm_eps: f64,
        norm_first: bool,
        #[serde(default)]
        batch_first: bool,
        #[serde(default = "yes")]
        bias: bool,
    }
    impl Args {
        fn block(&self) -> TransformerBlockConfig {
            TransformerBlockConfig::torch_encoder(
                self.d_model,
                self.nhead,
                self.dim_feedforward,
                self.dropout,
                self.activation,
                self.layer_norm_eps,
                self.norm_first,
            )
        }
    }
    impl ConfigCheck for Args {
        fn validate(&self) -> std::result::Result<(), String> {
            positive("d_model", self.d_model)?;
            positive("nhead", self.nhead)?;
            positive("dim_feedforward", self.dim_feedforward)?;
            probability("dropout", self.dropout)?;
            non_negative("layer_norm_eps", self.layer_norm_eps)?;
            self.block().validate()
        }

        fn footprint(&self, work: &Workload) -> Footprint {
            self.block().footprint(work)
        }
    }
    let args: Args = bundle.config()?;
    if !args.batch_first {
        return Err(bundle.config_error(
            "batch_first",
            "inputs are read as [batch, seq, features]: expected true, got false",
        ));
    }
    if !args.bias {
        return Err(bundle.config_error("bias", "the layer is built with biases: expected true, got false"));
    }
    let config = args.block();
    let map = WeightMap::new()
        .split(
            r"^self_attn\.in_proj_weight$",
            0,
            &[
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
            ],
        )
        .split(
            r"^self_attn\.in_proj_bias$",
            0,
            &[
                "self_attn.q_proj.bias",
                "self_attn.k_proj.bias",
                "self_attn.v_proj.bias",
            ],
        );
    BlockCheck::new(bundle)
        .weight_map(map)
        .unmatched(Unmatched {
            port_only: &POST_NORM_PORT_ONLY,
            reference_only: &[],
        })
        .run(
            |vb| TransformerBlock::new(&config, vb),
            |block, x| Ok(vec![tuple_forward(block, &x[0], "^self_attn$", false)?]),
        )
}

// ----------------------------------------------------------------- parallel

/// HF `GPTJBlock` in `GPTJLayer`: parallel attention and MLP from the one `ln_1`,
/// interleaved rotary on the first `rotary_dim` features of each head, no attention
/// biases. The case records the wrapper's rotary tables as GPT-J's rotary module
/// returns them, `rotary_emb:0` (sin) and `rotary_emb:1` (cos), `[1, seq, rotary_dim / 2]`.
fn gptj_layer(bundle: &Bundle) -> Result<Report> {
    let (attention, mlp, layer): (AttentionConfig, MlpConfig, HfLayer) = bundle.config_parts(&outside_layer())?;
    layer.check(bundle, "gptj")?;
    if layer.scale_attn_weights.is_some() {
        return Err(bundle.config_error("scale_attn_weights", "GPT-J has no such setting; it always scales"));
    }
    let attention = AttentionConfig {
        causal: true,
        rope: Some(RopeStyle::Interleaved),
        max_positions: HfLayer::require(bundle, "n_positions", layer.n_positions)?,
        names: Some(AttentionNames {
            out: "out_proj".into(),
            proj_drop: Some("resid_dropout".into()),
            ..AttentionNames::hf()
        }),
        ..attention
    };
    let mlp = MlpConfig {
        names: MlpNames {
            fc1: "fc_in".into(),
            act: Some("act".into()),
            drop1: None,
            norm: None,
            fc2: "fc_out".into(),
            drop2: Some("dropout".into()),
        },
        ..mlp
    };
    let config = layer.block(
        bundle,
        ResidualLayout::Parallel,
        NormKind::LayerNorm,
        attention,
        FeedForwardConfig::Mlp(mlp),
        BlockNames::gptj(),
    )?;
    let eager = layer.eager(bundle)?;
    check_wrapped_layer(bundle, &config, r"^layer\.attn$", eager, |rope, x| {
        let (cos, sin) = rope.tables(x.dim(1)?, 0)?;
        let gptj = |t: Tensor| t.unsqueeze(0)?.to_dtype(x.dtype());
        Ok([gptj(sin)?, gptj(cos)?])
    })
}

// ---------------------------------------------------- differential attention

/// `MultiheadDiffAttn` (causal, rotary on), configured from its constructor arguments.
fn diff_attention(bundle: &Bundle) -> Result<Report> {
    let config: DiffAttentionConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| DiffAttention::new(&config, vb),
        |attention, x| attention.forward(x, None),
    )
}
