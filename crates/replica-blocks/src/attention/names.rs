//! [`AttentionNames`]: the checkpoint names of an attention module's parts, with
//! the HF transformers and timm presets.

use serde::{Deserialize, Serialize};

/// The names of an attention module's parts in the reference checkpoint; a
/// `VarBuilder` reads `<path>.<name>.weight`, and traces record the same names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionNames {
    /// The fused query/key/value projection.
    pub qkv: String,
    pub q: String,
    pub k: String,
    pub v: String,
    /// The output projection.
    pub out: String,
    pub q_norm: String,
    pub k_norm: String,
    /// The norm on the attention output before the projection (timm's `scale_norm`).
    pub norm: String,
    /// The dropout after the output projection, recorded in traces when named.
    #[serde(default)]
    pub proj_drop: Option<String>,
    /// Record `q_norm`, `k_norm` and `norm` in traces even when they are off: timm
    /// keeps `nn.Identity` placeholders there, which its forward hooks record.
    #[serde(default)]
    pub trace_placeholders: bool,
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
            trace_placeholders: false,
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
            trace_placeholders: true,
        }
    }
}
