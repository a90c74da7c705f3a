//! The basic blocks against the real PyTorch modules (`python/fixtures_blocks_basics.py`):
//! Linear, Embedding, the norms and activations, the MLPs and gated MLPs, the
//! ViT patch embedding and class token, LayerScale, DropPath and Dropout.
//!
//! Every case builds the block from the bundle's weights through the strict
//! loader (so a naming slip is reported), runs it on the bundle's input, and
//! checks the output, every activation the reference's forward hooks recorded
//! (by name: a reference activation the block never records fails, and so does
//! one the block records that the reference does not have) and, in f32, the
//! gradients of the input and of every parameter. The f16 / bf16 cases check the
//! forward pass at that dtype's default tolerance. All cases use the default
//! tolerance of the bundle's dtype.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use replica_check::{
    compare, compare_trace, trace, Bundle, Case, Error, Namespace, Parity, Report, Result, Tolerance, WeightMap,
};
use serde::Deserialize;

use crate::class_token::{ClassToken, ClassTokenConfig};
use crate::drop_path::{DropPath, DropPathConfig};
use crate::dropout::{Dropout, DropoutConfig};
use crate::glu::{GluMlp, GluMlpConfig, GluMlpNames};
use crate::layer_scale::{LayerScale, LayerScaleConfig};
use crate::mlp::{Mlp, MlpConfig, MlpNames};
use crate::papers;
use crate::patch_embed::{PatchEmbed, PatchEmbedConfig};
use crate::{
    Activation, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig,
};

macro_rules! case {
    ($name:literal, $reference:literal, $paper:expr, $fixture:literal, $run:expr) => {
        Case {
            name: $name,
            reference: $reference,
            paper: $paper,
            fixture: concat!("blocks/", $fixture),
            run: $run,
        }
    };
}

/// Every case of this module.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    let aiayn = Some(papers::ATTENTION_IS_ALL_YOU_NEED.arxiv);
    let ln = Some(papers::LAYER_NORM.arxiv);
    let rms = Some(papers::RMS_NORM.arxiv);
    let gelu = Some(papers::GELU.arxiv);
    let glu = Some(papers::GLU_VARIANTS.arxiv);
    let vit = Some(papers::VIT.arxiv);
    vec![
        case!("linear_with_bias",        "torch.nn.Linear",                     aiayn, "linear",         linear),
        case!("linear_no_bias",          "torch.nn.Linear",                     aiayn, "linear_no_bias", linear),
        case!("embedding",               "torch.nn.Embedding",                  aiayn, "embedding",      embedding),
        case!("layer_norm_affine",       "torch.nn.LayerNorm",                  ln,    "layer_norm",      layer_norm),
        case!("layer_norm_affine_f16",   "torch.nn.LayerNorm",                  ln,    "layer_norm_f16",  layer_norm),
        case!("layer_norm_affine_bf16",  "torch.nn.LayerNorm",                  ln,    "layer_norm_bf16", layer_norm),
        case!("rms_norm_llama",          "transformers LlamaRMSNorm",           rms,   "rms_norm",        rms_norm),
        case!("rms_norm_llama_f16",      "transformers LlamaRMSNorm",           rms,   "rms_norm_f16",    rms_norm),
        case!("rms_norm_llama_bf16",     "transformers LlamaRMSNorm",           rms,   "rms_norm_bf16",   rms_norm),
        case!("activation_gelu",         "torch.nn.GELU",                       gelu,  "act_gelu",        activation),
        case!("activation_gelu_tanh",    "torch.nn.GELU(approximate='tanh')",   gelu,  "act_gelu_tanh",   activation),
        case!("activation_gelu_new",     "transformers NewGELUActivation",      gelu,  "act_gelu_new",    activation),
        case!("activation_quick_gelu",   "transformers QuickGELUActivation",    gelu,  "act_quick_gelu",  activation),
        case!("activation_silu",         "torch.nn.SiLU",        Some(papers::SWISH.arxiv),  "act_silu",  activation),
        case!("activation_relu",         "torch.nn.ReLU",                       None,  "act_relu",        activation),
        case!("activation_relu_squared", "transformers ReLUSquaredActivation", Some(papers::PRIMER.arxiv), "act_relu_squared", activation),
        case!("mlp_timm",                "timm.layers.Mlp",                     aiayn, "mlp",             mlp_timm),
        case!("mlp_timm_f16",            "timm.layers.Mlp",                     aiayn, "mlp_f16",         mlp_timm),
        case!("mlp_timm_bf16",           "timm.layers.Mlp",                     aiayn, "mlp_bf16",        mlp_timm),
        case!("mlp_timm_norm",           "timm.layers.Mlp(norm_layer=nn.LayerNorm)", aiayn, "mlp_norm",   mlp_timm),
        case!("mlp_gpt2",                "transformers GPT2MLP",                aiayn, "mlp_gpt2",        mlp_gpt2),
        case!("swiglu_timm",             "timm.layers.SwiGLU",                  glu,   "swiglu",          swiglu_timm),
        case!("swiglu_timm_packed",      "timm.layers.SwiGLUPacked",            glu,   "swiglu_packed",   glu_mlp_timm),
        case!("geglu_timm",              "timm.layers.GluMlp(act_layer=nn.GELU)", glu, "geglu",           glu_mlp_timm),
        case!("reglu_timm",              "timm.layers.GluMlp(act_layer=nn.ReLU)", glu, "reglu",           glu_mlp_timm),
        case!("swiglu_llama",            "transformers LlamaMLP",               glu,   "llama_mlp",       glu_mlp_llama),
        case!("swiglu_llama_f16",        "transformers LlamaMLP",               glu,   "llama_mlp_f16",   glu_mlp_llama),
        case!("swiglu_llama_bf16",       "transformers LlamaMLP",               glu,   "llama_mlp_bf16",  glu_mlp_llama),
        case!("patch_embed",             "timm.layers.PatchEmbed",              vit,   "patch_embed",     patch_embed),
        case!("patch_embed_f16",         "timm.layers.PatchEmbed",              vit,   "patch_embed_f16", patch_embed),
        case!("patch_embed_bf16",        "timm.layers.PatchEmbed",              vit,   "patch_embed_bf16", patch_embed),
        case!("patch_embed_rect_norm",   "timm.layers.PatchEmbed(norm_layer=nn.LayerNorm)", vit, "patch_embed_norm", patch_embed),
        case!("class_token",             "timm VisionTransformer._pos_embed",   vit,   "class_token",     class_token),
        case!("layer_scale",             "timm.layers.LayerScale",  Some(papers::CAIT.arxiv),  "layer_scale", layer_scale),
        case!("drop_path_eval",          "timm.layers.DropPath",    Some(papers::STOCHASTIC_DEPTH.arxiv), "drop_path", drop_path),
        case!("dropout_eval",            "torch.nn.Dropout",        Some(papers::DROPOUT.arxiv), "dropout",   dropout),
    ]
}

/// The dtype the reference ran in (the bundle's `dtype`).
pub fn dtype_of(bundle: &Bundle) -> Result<DType> {
    match bundle.metadata().dtype.as_str() {
        "float32" => Ok(DType::F32),
        "float16" => Ok(DType::F16),
        "bfloat16" => Ok(DType::BF16),
        "float64" => Ok(DType::F64),
        other => Err(Error::file(bundle.origin(), format!("unsupported dtype `{other}`"))),
    }
}

/// Adds one row per activation to `report`: each recorded activation against the
/// reference's, each reference activation the trace lacks as a failure, and each
/// recorded activation the reference lacks as a failure (a wrong module path).
pub fn check_trace(report: &mut Report, bundle: &Bundle, recorded: &trace::Trace, tolerance: Tolerance) {
    let traced = compare_trace(recorded, bundle, tolerance);
    // compare_trace makes one row per recorded entry, in order.
    for (row, entry) in traced.rows.into_iter().zip(&recorded.entries) {
        let name = format!("{}{}", Namespace::Activation, row.path);
        match row.comparison {
            Some(comparison) => report.push(name, comparison),
            // No such reference activation: a failed row that says so.
            None => report.check(bundle, Namespace::Activation, &row.path, &entry.tensor, tolerance),
        }
    }
    for path in traced.not_recorded {
        let Ok(expected) = bundle.activation(&path) else {
            continue;
        };
        let mut comparison = compare(expected, expected, tolerance);
        comparison.incompatible = Some("the reference records this activation; the block never did".into());
        comparison.max_abs_diff = None;
        comparison.max_rel_diff = None;
        comparison.cosine = None;
        report.push(format!("{}{path}", Namespace::Activation), comparison);
    }
}

/// Builds a block from the bundle's parameters (through `map`, strictly), runs
/// `forward` on `input/0` with tracing on, and checks the output, the trace and,
/// when the bundle has them, the gradients.
pub fn check_block<M>(
    bundle: &Bundle,
    map: WeightMap,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
    forward: impl FnOnce(&M, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let dtype = dtype_of(bundle)?;
    let x = run.input("0")?;
    let weights = map.apply(run.params().clone(), bundle.origin())?;
    let block = weights.build(dtype, x.device(), build)?;
    let (y, recorded) = trace::record(|| forward(&block, &x));
    let y = y?;
    check_trace(run.report_mut(), bundle, &recorded, Tolerance::for_dtype(dtype));
    run.check_outputs(&[("0", &y)]);
    if bundle.contains(Namespace::OutputGrad, "0") {
        run.check_backward(&[("0", &y)])?;
    }
    Ok(run.finish())
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

fn yes() -> bool {
    true
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
    if args.hidden_features % 2 != 0 {
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
