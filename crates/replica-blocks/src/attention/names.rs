//! [`AttentionNames`]: the checkpoint names of an attention module's parts, with
//! the HF transformers and timm presets.

use serde::{Deserialize, Serialize};

/// The names of an attention module's parts in the reference checkpoint; a
/// `VarBuilder` reads `<path>.<name>.weight`, and traces record the same names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionNames {
    /// The fused query/key/value projection.
    pub qkv: String,
    /// The query projection, when unfused.
    pub q: String,
    /// The key projection, when unfused.
    pub k: String,
    /// The value projection, when unfused.
    pub v: String,
    /// The output projection.
    pub out: String,
    /// The per-head query norm (QK-norm).
    pub q_norm: String,
    /// The per-head key norm (QK-norm).
    pub k_norm: String,
    /// The norm on the attention output before the projection (timm's `scale_norm`).
    pub norm: String,
    /// The dropout after the output projection, a module of its own when named.
    #[serde(default)]
    pub proj_drop: Option<String>,
    /// The reference keeps a module in `q_norm`, `k_norm` and `norm` even when they
    /// are off (timm's `nn.Identity`, which its hooks record): the block builds an
    /// [`Identity`](crate::Identity) there. HF has no module where a norm is off.
    #[serde(default)]
    pub identity_norms: bool,
}

impl AttentionNames {
    /// HF transformers: `q_proj`, `k_proj`, `v_proj`, `o_proj` (fused: Phi-3's `qkv_proj`),
    /// `q_norm`, `k_norm` (Qwen3, OLMo 2).
    pub fn hf() -> Self {
        Self {
            qkv: "qkv_proj".into(),
            q: "q_proj".into(),
            k: "k_proj".into(),
            v: "v_proj".into(),
            out: "o_proj".into(),
            q_norm: "q_norm".into(),
            k_norm: "k_norm".into(),
            norm: "norm".into(),
            proj_drop: None,
            identity_norms: false,
        }
    }

    /// timm `Attention`: `qkv`, `q_norm`, `k_norm`, `norm`, `proj`, `proj_drop`
    /// (unfused, as `AttentionRope`: `q_proj`, `k_proj`, `v_proj`).
    pub fn timm() -> Self {
        Self {
            qkv: "qkv".into(),
            q: "q_proj".into(),
            k: "k_proj".into(),
            v: "v_proj".into(),
            out: "proj".into(),
            q_norm: "q_norm".into(),
            k_norm: "k_norm".into(),
            norm: "norm".into(),
            proj_drop: Some("proj_drop".into()),
            identity_norms: true,
        }
    }
}
