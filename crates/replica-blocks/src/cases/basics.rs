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
use serde::de::DeserializeOwned;

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

/// The block's configuration, read from the bundle's `config` (the reference's own fields).
pub fn config_of<T: DeserializeOwned>(bundle: &Bundle) -> Result<T> {
    serde_json::from_value(bundle.metadata().config.clone())
        .map_err(|err| Error::file(bundle.origin(), format!("config: {err}")))
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
    let config: LinearConfig = config_of(bundle)?;
    check_block(bundle, WeightMap::new(), |vb| Linear::new(&config, vb), Linear::forward)
}

fn embedding(bundle: &Bundle) -> Result<Report> {
    let config: EmbeddingConfig = config_of(bundle)?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| Embedding::new(&config, vb),
        Embedding::forward,
    )
}

fn layer_norm(bundle: &Bundle) -> Result<Report> {
    let config: LayerNormConfig = config_of(bundle)?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| LayerNorm::new(&config, vb),
        LayerNorm::forward,
    )
}

fn rms_norm(bundle: &Bundle) -> Result<Report> {
    let config: RmsNormConfig = config_of(bundle)?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| RmsNorm::new(&config, vb),
        RmsNorm::forward,
    )
}

/// The bundle's config is `{"hidden_act": <HF name>}`.
fn activation(bundle: &Bundle) -> Result<Report> {
    #[derive(serde::Deserialize)]
    struct Config {
        hidden_act: Activation,
    }
    let config: Config = config_of(bundle)?;
    check_block(bundle, WeightMap::new(), |_| Ok(config.hidden_act), Activation::forward)
}

fn mlp_timm(bundle: &Bundle) -> Result<Report> {
    let config: MlpConfig = config_of(bundle)?;
    check_block(bundle, WeightMap::new(), |vb| Mlp::new(&config, vb), Mlp::forward)
}

/// GPT-2's `Conv1D` stores `[in, out]`: the weight map transposes it to `Linear`'s `[out, in]`.
fn mlp_gpt2(bundle: &Bundle) -> Result<Report> {
    let config = MlpConfig {
        names: MlpNames::gpt2(),
        ..config_of(bundle)?
    };
    let map = WeightMap::new().transpose(r"^(c_fc|c_proj)\.weight$");
    check_block(bundle, map, |vb| Mlp::new(&config, vb), Mlp::forward)
}

fn timm_size(bundle: &Bundle, field: &str) -> Result<usize> {
    bundle.metadata().config[field]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| Error::file(bundle.origin(), format!("config: `{field}` is not a size")))
}

fn timm_activation(bundle: &Bundle) -> Result<Activation> {
    serde_json::from_value(bundle.metadata().config["act_layer"].clone())
        .map_err(|err| Error::file(bundle.origin(), format!("config: `act_layer`: {err}")))
}

/// timm `SwiGLU(in_features, hidden_features)`: `hidden_features` is each branch's width.
fn swiglu_timm(bundle: &Bundle) -> Result<Report> {
    let config = GluMlpConfig {
        bias: true,
        names: GluMlpNames::timm_swiglu(),
        ..GluMlpConfig::new(
            timm_size(bundle, "in_features")?,
            timm_size(bundle, "hidden_features")?,
            timm_activation(bundle)?,
        )
    };
    check_block(bundle, WeightMap::new(), |vb| GluMlp::new(&config, vb), GluMlp::forward)
}

/// timm `GluMlp(in_features, hidden_features, act_layer, gate_last)`: `hidden_features`
/// is the fused `fc1`'s width, twice the gated width.
fn glu_mlp_timm(bundle: &Bundle) -> Result<Report> {
    let gate_last = bundle.metadata().config["gate_last"].as_bool().unwrap_or(true);
    let config = GluMlpConfig {
        bias: true,
        names: GluMlpNames::timm_glu_mlp(gate_last),
        ..GluMlpConfig::new(
            timm_size(bundle, "in_features")?,
            timm_size(bundle, "hidden_features")? / 2,
            timm_activation(bundle)?,
        )
    };
    check_block(bundle, WeightMap::new(), |vb| GluMlp::new(&config, vb), GluMlp::forward)
}

/// HF `LlamaMLP`, configured straight from the LLaMA config fields.
fn glu_mlp_llama(bundle: &Bundle) -> Result<Report> {
    let config: GluMlpConfig = config_of(bundle)?;
    check_block(bundle, WeightMap::new(), |vb| GluMlp::new(&config, vb), GluMlp::forward)
}

fn patch_embed(bundle: &Bundle) -> Result<Report> {
    let config: PatchEmbedConfig = config_of(bundle)?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| PatchEmbed::new(&config, vb),
        PatchEmbed::forward,
    )
}

fn class_token(bundle: &Bundle) -> Result<Report> {
    let config: ClassTokenConfig = config_of(bundle)?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| ClassToken::new(&config, vb),
        ClassToken::forward,
    )
}

fn layer_scale(bundle: &Bundle) -> Result<Report> {
    let config: LayerScaleConfig = config_of(bundle)?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| LayerScale::new(&config, vb),
        LayerScale::forward,
    )
}

/// The reference ran in eval mode (`"training": false`): DropPath is the identity.
fn drop_path(bundle: &Bundle) -> Result<Report> {
    let config: DropPathConfig = config_of(bundle)?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| DropPath::new(&config, vb),
        |block, x| block.forward_t(x, false),
    )
}

/// The reference ran in eval mode (`"training": false`): dropout is the identity.
fn dropout(bundle: &Bundle) -> Result<Report> {
    let config: DropoutConfig = config_of(bundle)?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| Dropout::new(&config, vb),
        |block, x| block.forward_t(x, false),
    )
}
