//! The basic blocks against the real PyTorch modules (`python/fixtures_blocks_basics.py`):
//! Linear, Embedding, the norms and activations, the MLPs and gated MLPs, the
//! ViT patch embedding and class token, LayerScale, DropPath and Dropout.
//!
//! Every case reads the block's config from the bundle and hands the rest to
//! [`check_block`]: the block is built from the bundle's weights through the strict
//! loader (so a naming slip is reported), runs on the bundle's input, and its
//! output, every activation (by name, in both directions) and, in f32, the
//! gradients of the input and of every parameter are checked. The f16 / bf16 cases
//! check the forward pass at that dtype's default tolerance.

use replica_blocks::class_token::{ClassToken, ClassTokenConfig};
use replica_blocks::drop_path::{DropPath, DropPathConfig};
use replica_blocks::dropout::{Dropout, DropoutConfig};
use replica_blocks::glu::{GluMlp, GluMlpConfig, GluMlpNames};
use replica_blocks::layer_scale::{LayerScale, LayerScaleConfig};
use replica_blocks::mlp::{Mlp, MlpConfig, MlpNames};
use replica_blocks::papers::{
    ATTENTION_IS_ALL_YOU_NEED, CAIT, DROPOUT, GELU, GLU_VARIANTS, LAYER_NORM, PRIMER, RMS_NORM, STOCHASTIC_DEPTH,
    SWISH, VIT,
};
use replica_blocks::patch_embed::{PatchEmbed, PatchEmbedConfig};
use replica_blocks::{
    Activation, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig,
};
use replica_check::config_check::{all_positive, drop_rate};
use replica_check::{
    check_block, sizeless_config, Bundle, Case, ConfigCheck, Footprint, Report, Result, WeightMap, Workload,
};
use serde::Deserialize;

use crate::case;
use crate::reference::yes;

/// Every basic-block case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("linear_with_bias",        "torch.nn.Linear",                                 Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/linear",           linear),
        case("linear_no_bias",          "torch.nn.Linear",                                 Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/linear_no_bias",   linear),
        case("embedding",               "torch.nn.Embedding",                              Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/embedding",        embedding),
        case("layer_norm_affine",       "torch.nn.LayerNorm",                              Some(LAYER_NORM),                "blocks/layer_norm",       layer_norm),
        case("layer_norm_affine_f16",   "torch.nn.LayerNorm",                              Some(LAYER_NORM),                "blocks/layer_norm_f16",   layer_norm),
        case("layer_norm_affine_bf16",  "torch.nn.LayerNorm",                              Some(LAYER_NORM),                "blocks/layer_norm_bf16",  layer_norm),
        case("rms_norm_llama",          "transformers LlamaRMSNorm",                       Some(RMS_NORM),                  "blocks/rms_norm",         rms_norm),
        case("rms_norm_llama_f16",      "transformers LlamaRMSNorm",                       Some(RMS_NORM),                  "blocks/rms_norm_f16",     rms_norm),
        case("rms_norm_llama_bf16",     "transformers LlamaRMSNorm",                       Some(RMS_NORM),                  "blocks/rms_norm_bf16",    rms_norm),
        case("activation_gelu",         "torch.nn.GELU",                                   Some(GELU),                      "blocks/act_gelu",         activation),
        case("activation_gelu_tanh",    "torch.nn.GELU(approximate='tanh')",               Some(GELU),                      "blocks/act_gelu_tanh",    activation),
        case("activation_gelu_new",     "transformers NewGELUActivation",                  Some(GELU),                      "blocks/act_gelu_new",     activation),
        case("activation_quick_gelu",   "transformers QuickGELUActivation",                Some(GELU),                      "blocks/act_quick_gelu",   activation),
        case("activation_silu",         "torch.nn.SiLU",                                   Some(SWISH),                     "blocks/act_silu",         activation),
        case("activation_relu",         "torch.nn.ReLU",                                   None,                            "blocks/act_relu",         activation),
        case("activation_relu_squared", "transformers ReLUSquaredActivation",              Some(PRIMER),                    "blocks/act_relu_squared", activation),
        case("mlp_timm",                "timm.layers.Mlp",                                 Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/mlp",              mlp_timm),
        case("mlp_timm_f16",            "timm.layers.Mlp",                                 Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/mlp_f16",          mlp_timm),
        case("mlp_timm_bf16",           "timm.layers.Mlp",                                 Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/mlp_bf16",         mlp_timm),
        case("mlp_timm_norm",           "timm.layers.Mlp(norm_layer=nn.LayerNorm)",        Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/mlp_norm",         mlp_timm),
        case("mlp_gpt2",                "transformers GPT2MLP",                            Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/mlp_gpt2",         mlp_gpt2),
        case("swiglu_timm",             "timm.layers.SwiGLU",                              Some(GLU_VARIANTS),              "blocks/swiglu",           swiglu_timm),
        case("swiglu_timm_packed",      "timm.layers.SwiGLUPacked",                        Some(GLU_VARIANTS),              "blocks/swiglu_packed",    glu_mlp_timm),
        case("geglu_timm",              "timm.layers.GluMlp(act_layer=nn.GELU)",           Some(GLU_VARIANTS),              "blocks/geglu",            glu_mlp_timm),
        case("reglu_timm",              "timm.layers.GluMlp(act_layer=nn.ReLU)",           Some(GLU_VARIANTS),              "blocks/reglu",            glu_mlp_timm),
        case("swiglu_llama",            "transformers LlamaMLP",                           Some(GLU_VARIANTS),              "blocks/llama_mlp",        glu_mlp_llama),
        case("swiglu_llama_f16",        "transformers LlamaMLP",                           Some(GLU_VARIANTS),              "blocks/llama_mlp_f16",    glu_mlp_llama),
        case("swiglu_llama_bf16",       "transformers LlamaMLP",                           Some(GLU_VARIANTS),              "blocks/llama_mlp_bf16",   glu_mlp_llama),
        case("patch_embed",             "timm.layers.PatchEmbed",                          Some(VIT),                       "blocks/patch_embed",      patch_embed),
        case("patch_embed_f16",         "timm.layers.PatchEmbed",                          Some(VIT),                       "blocks/patch_embed_f16",  patch_embed),
        case("patch_embed_bf16",        "timm.layers.PatchEmbed",                          Some(VIT),                       "blocks/patch_embed_bf16", patch_embed),
        case("patch_embed_rect_norm",   "timm.layers.PatchEmbed(norm_layer=nn.LayerNorm)", Some(VIT),                       "blocks/patch_embed_norm", patch_embed),
        case("class_token",             "timm VisionTransformer._pos_embed",               Some(VIT),                       "blocks/class_token",      class_token),
        case("layer_scale",             "timm.layers.LayerScale",                          Some(CAIT),                      "blocks/layer_scale",      layer_scale),
        case("drop_path_eval",          "timm.layers.DropPath",                            Some(STOCHASTIC_DEPTH),          "blocks/drop_path",        drop_path),
        case("dropout_eval",            "torch.nn.Dropout",                                Some(DROPOUT),                   "blocks/dropout",          dropout),
    ]
}

fn linear(bundle: &Bundle) -> Result<Report> {
    let config: LinearConfig = bundle.config()?;
    check_block(bundle, WeightMap::new(), |vb| Linear::new(&config, vb), Linear::forward)
}

fn embedding(bundle: &Bundle) -> Result<Report> {
    let config: EmbeddingConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| Embedding::new(&config, vb),
        Embedding::forward,
    )
}

fn layer_norm(bundle: &Bundle) -> Result<Report> {
    let config: LayerNormConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| LayerNorm::new(&config, vb),
        LayerNorm::forward,
    )
}

fn rms_norm(bundle: &Bundle) -> Result<Report> {
    let config: RmsNormConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| RmsNorm::new(&config, vb),
        RmsNorm::forward,
    )
}

/// The bundle's config is `{"hidden_act": <HF name>}`.
fn activation(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Config {
        hidden_act: Activation,
    }
    impl ConfigCheck for Config {
        fn footprint(&self, work: &Workload) -> Footprint {
            Footprint::activations(work.bytes(work.elements() * 4))
        }
    }
    let config: Config = bundle.config()?;
    check_block(bundle, WeightMap::new(), |_| Ok(config.hidden_act), Activation::forward)
}

fn mlp_timm(bundle: &Bundle) -> Result<Report> {
    let config: MlpConfig = bundle.config()?;
    check_block(bundle, WeightMap::new(), |vb| Mlp::new(&config, vb), Mlp::forward)
}

/// GPT-2's `Conv1D` stores `[in, out]`: the weight map transposes it to `Linear`'s `[out, in]`.
fn mlp_gpt2(bundle: &Bundle) -> Result<Report> {
    let config = MlpConfig {
        names: MlpNames::gpt2(),
        ..bundle.config()?
    };
    let map = WeightMap::new().transpose(r"^(c_fc|c_proj)\.weight$");
    check_block(bundle, map, |vb| Mlp::new(&config, vb), Mlp::forward)
}

/// timm `SwiGLU` / `GluMlp` arguments.
#[derive(Deserialize)]
struct TimmGlu {
    in_features: usize,
    hidden_features: usize,
    #[serde(default)]
    out_features: Option<usize>,
    act_layer: Activation,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default)]
    drop: f64,
    /// `GluMlp` only: the second half of `fc1` is the gate (timm's default).
    #[serde(default)]
    gate_last: Option<bool>,
}

impl ConfigCheck for TimmGlu {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[
            ("in_features", self.in_features),
            ("hidden_features", self.hidden_features),
        ])?;
        if let Some(out) = self.out_features {
            all_positive(&[("out_features", out)])?;
        }
        drop_rate("drop", self.drop)
    }

    /// As a gated MLP whose branches are `hidden_features` wide: `SwiGLU`'s, and an
    /// upper bound of `GluMlp`'s (half as wide).
    fn footprint(&self, work: &Workload) -> Footprint {
        self.config(self.hidden_features, GluMlpNames::default())
            .footprint(work)
    }
}

impl TimmGlu {
    fn config(&self, gated_width: usize, names: GluMlpNames) -> GluMlpConfig {
        GluMlpConfig {
            bias: self.bias,
            out_dim: self.out_features,
            dropout: self.drop,
            names,
            ..GluMlpConfig::new(self.in_features, gated_width, self.act_layer)
        }
    }
}

/// timm `SwiGLU(in_features, hidden_features)`: `hidden_features` is each branch's width.
fn swiglu_timm(bundle: &Bundle) -> Result<Report> {
    let args: TimmGlu = bundle.config()?;
    if args.gate_last.is_some() {
        return Err(bundle.config_error(
            "gate_last",
            "timm `SwiGLU` has separate gate and up projections, so no `gate_last`",
        ));
    }
    let config = args.config(args.hidden_features, GluMlpNames::timm_swiglu());
    check_block(bundle, WeightMap::new(), |vb| GluMlp::new(&config, vb), GluMlp::forward)
}

/// timm `GluMlp(in_features, hidden_features, act_layer, gate_last)`: `hidden_features`
/// is the fused `fc1`'s width, twice the gated width.
fn glu_mlp_timm(bundle: &Bundle) -> Result<Report> {
    let args: TimmGlu = bundle.config()?;
    if !args.hidden_features.is_multiple_of(2) {
        return Err(bundle.config_error(
            "hidden_features",
            format!(
                "`GluMlp` halves the fused width, so it must be even, got {}",
                args.hidden_features
            ),
        ));
    }
    let names = GluMlpNames::timm_glu_mlp(args.gate_last.unwrap_or(true));
    let config = args.config(args.hidden_features / 2, names);
    check_block(bundle, WeightMap::new(), |vb| GluMlp::new(&config, vb), GluMlp::forward)
}

/// HF `LlamaMLP`, configured straight from the LLaMA config fields.
fn glu_mlp_llama(bundle: &Bundle) -> Result<Report> {
    let config: GluMlpConfig = bundle.config()?;
    check_block(bundle, WeightMap::new(), |vb| GluMlp::new(&config, vb), GluMlp::forward)
}

fn patch_embed(bundle: &Bundle) -> Result<Report> {
    let config: PatchEmbedConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| PatchEmbed::new(&config, vb),
        PatchEmbed::forward,
    )
}

/// timm's `_pos_embed` with a class token and no position embedding (`pos_embed: "none"`).
fn class_token(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        #[serde(alias = "embed_dim", alias = "hidden_size")]
        dim: usize,
        #[serde(default = "yes")]
        class_token: bool,
        #[serde(default = "no_pos_embed")]
        pos_embed: String,
    }
    fn no_pos_embed() -> String {
        "none".into()
    }
    impl ConfigCheck for Args {
        fn validate(&self) -> std::result::Result<(), String> {
            ClassTokenConfig { dim: self.dim }.validate()
        }

        fn footprint(&self, work: &Workload) -> Footprint {
            ClassTokenConfig { dim: self.dim }.footprint(work)
        }
    }
    let args: Args = bundle.config()?;
    if !args.class_token {
        return Err(bundle.config_error(
            "class_token",
            "this case prepends a class token: expected true, got false",
        ));
    }
    if args.pos_embed != "none" {
        return Err(bundle.config_error(
            "pos_embed",
            format!(
                "this case adds no position embedding: expected \"none\", got {:?}",
                args.pos_embed
            ),
        ));
    }
    let config = ClassTokenConfig { dim: args.dim };
    check_block(
        bundle,
        WeightMap::new(),
        |vb| ClassToken::new(&config, vb),
        ClassToken::forward,
    )
}

fn layer_scale(bundle: &Bundle) -> Result<Report> {
    let config: LayerScaleConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| LayerScale::new(&config, vb),
        LayerScale::forward,
    )
}

/// Whether the reference module ran in training mode (torch's `module.training`).
#[derive(Deserialize)]
struct Mode {
    #[serde(default)]
    training: bool,
}

sizeless_config!(Mode);

/// The cases run dropout in eval mode: a training-mode reference drew random masks
/// that cannot be reproduced.
fn eval_mode(bundle: &Bundle, mode: &Mode) -> Result<()> {
    if mode.training {
        return Err(bundle.config_error(
            "training",
            "the block is checked in eval mode (a training-mode reference drew random masks): expected false, got true",
        ));
    }
    Ok(())
}

/// The reference ran in eval mode (`"training": false`): DropPath is the identity.
fn drop_path(bundle: &Bundle) -> Result<Report> {
    let (config, mode): (DropPathConfig, Mode) = bundle.config_parts(&[])?;
    eval_mode(bundle, &mode)?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| DropPath::new(&config, vb),
        |block, x| block.forward_t(x, false),
    )
}

/// The reference ran in eval mode (`"training": false`): dropout is the identity.
fn dropout(bundle: &Bundle) -> Result<Report> {
    let (config, mode): (DropoutConfig, Mode) = bundle.config_parts(&[])?;
    eval_mode(bundle, &mode)?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| Dropout::new(&config, vb),
        |block, x| block.forward_t(x, false),
    )
}
