//! Transformer building blocks on candle: each cites its paper, records its
//! output in activation traces under its module path, and can be trained.
//!
//! The blocks compute through one op layer, [`ops`]: softmax with scale and mask,
//! attention, norms, activations, RoPE, masks and position biases, each written
//! once. On the CPU the ops run the fused kernels of `replica-kernels` (each with
//! a backward) by default; [`compute`] switches them to the plain composition of
//! differentiable candle ops (`REPLICA_COMPUTE=composition`, or [`with_compute`]).
//!
//! Blocks take a serde `Config` (whose field aliases read the relevant part of a
//! reference `config.json`) and a `VarBuilder` positioned at the block's module
//! path, so `vb.pp("h").pp("0").pp("attn")` loads `h.0.attn.*` and traces as
//! `h.0.attn`, the name PyTorch's `named_modules()` gives it. A block records only
//! its own output; where a reference names things otherwise, a
//! [`replica_check::TraceMap`] says how. Train or eval is an argument of each call
//! (`forward_t(x, .., train)`), as candle's `ModuleT`; no block keeps a mode.
#![warn(missing_docs)]

pub mod activation;
pub mod adamw;
pub mod alibi;
pub mod attention;
pub mod class_token;
pub mod compute;
pub mod convnext;
pub mod diff_attention;
pub mod dit_block;
pub mod drop_path;
pub mod dropout;
pub mod dyt;
pub mod embedding;
pub mod glu;
pub mod grn;
pub mod identity;
pub mod kv_cache;
pub mod layer_scale;
pub mod linear;
pub mod mla;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod ops;
pub mod papers;
pub mod patch_embed;
pub mod patch_merging;
pub mod position_embedding;
pub mod relative_position_bias;
pub mod rope;
pub mod rope_scaling;
pub mod sinusoidal;
pub mod swin_block;
pub mod transformer_block;
pub mod window;
pub mod window_attention;

/// The masks, kept at their old path; they belong to the op layer.
pub use ops::mask;

pub use activation::{Activation, ActivationLayer};
pub use adamw::{AdamWConfig, FusedAdamW};
pub use alibi::{Alibi, AlibiConfig};
pub use attention::{scaled_dot_product_attention, Attention, AttentionConfig, AttentionNames, SdpaOptions};
pub use class_token::{ClassToken, ClassTokenConfig};
pub use compute::{current, with_compute, Compute};
pub use convnext::{ConvNextBlock, ConvNextBlockConfig};
pub use diff_attention::{DiffAttention, DiffAttentionConfig};
pub use dit_block::{DitBlock, DitBlockConfig};
pub use drop_path::{DropPath, DropPathConfig};
pub use dropout::{Dropout, DropoutConfig};
pub use dyt::{DynamicTanh, DynamicTanhConfig};
pub use embedding::{Embedding, EmbeddingConfig};
pub use glu::{GluMlp, GluMlpConfig, GluMlpNames, GluProjections};
pub use grn::{GlobalResponseNorm, GlobalResponseNormConfig, GlobalResponseNormMlp, GlobalResponseNormMlpConfig};
pub use identity::Identity;
pub use kv_cache::KvCache;
pub use layer_scale::{LayerScale, LayerScaleConfig};
pub use linear::{Linear, LinearConfig};
pub use mla::{Mla, MlaConfig};
pub use mlp::{Mlp, MlpConfig, MlpNames};
pub use moe::{load_balancing_loss, GroupLimit, Moe, MoeConfig, RouterDtype, Routing};
pub use norm::{LayerNorm, LayerNormConfig, Norm, NormKind, RmsNorm, RmsNormConfig};
pub use papers::{paper_of, BlockPaper, Paper, PAPERS};
pub use patch_embed::{PatchEmbed, PatchEmbedConfig, PatchEmbedNames, Size2};
pub use patch_merging::{PatchMerging, PatchMergingConfig};
pub use position_embedding::{LearnedPositionConfig, LearnedPositionEmbedding};
pub use relative_position_bias::{
    relative_position_bucket, t5_attention_config, RelativePositionBias, RelativePositionBiasConfig,
};
pub use rope::{Rope, RopeConfig, RopeStyle};
pub use rope_scaling::{RopeParameters, RopeScaling};
pub use sinusoidal::{SinusoidalConfig, SinusoidalLayout, SinusoidalPositionEmbedding};
pub use swin_block::{SwinBlock, SwinBlockConfig};
pub use transformer_block::{BlockNames, FeedForwardConfig, ResidualLayout, TransformerBlock, TransformerBlockConfig};
pub use window_attention::{WindowAttention, WindowAttentionConfig};

/// Refuses a config before a block is built from it ([`replica_check::admit`], on
/// no inputs yet): the error names the block (`what`, e.g. ``attention `h.0.attn` ``).
pub(crate) fn admit(what: &str, config: &impl replica_check::ConfigCheck) -> candle_core::Result<()> {
    replica_check::admit(config, &replica_check::Workload::default())
        .map_err(|message| candle_core::Error::Msg(format!("{what}: {message}")))
}
