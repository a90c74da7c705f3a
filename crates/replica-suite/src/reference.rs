//! What the reference implementations' configs and wrappers look like, shared by
//! several case files: the fields of a HF decoder `config.json` that one attention
//! module or layer does not use, timm's norm-layer names, torch's
//! `nn.MultiheadAttention` arguments and HF's rotary-table layout.

use replica_blocks::attention::AttentionConfig;
use replica_blocks::norm::NormKind;
use replica_check::config_check::{all_positive, probability};
use replica_check::{sizeless_config, Bundle, ConfigCheck, Footprint, Result, Size, Workload};
use serde::Deserialize;

/// serde's default for the torch arguments that default to `True`.
pub(crate) fn yes() -> bool {
    true
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
pub(crate) fn outside_rope() -> Vec<&'static str> {
    let mut fields = OUTSIDE_ATTENTION.to_vec();
    fields.push("model_type");
    fields
}

/// The attention settings of a HF decoder `config.json` in the bundle (LLaMA,
/// GPT-NeoX, Gemma 2), read strictly as the cases read it, for tests that build the
/// block themselves. The RoPE fixtures' `offset` (and `grown_to`) and the fields of the attention
/// pattern (`sliding_window`, `layer_types`, ...) are accepted without being checked:
/// the cases check them.
pub fn attention_config(bundle: &Bundle) -> Result<AttentionConfig> {
    #[derive(Deserialize)]
    struct Rest {
        #[serde(default)]
        #[allow(dead_code)] // read so that it is not refused
        offset: Option<usize>,
        /// The dynamic-NTK fixture's earlier sequence length.
        #[serde(default)]
        #[allow(dead_code)] // read so that it is not refused
        grown_to: Option<usize>,
    }
    sizeless_config!(Rest);
    let (config, _, _): (AttentionConfig, AttentionPattern, Rest) = bundle.config_parts(&outside_rope())?;
    Ok(config)
}

/// The fields of a HF decoder config that decide the attention pattern: causal,
/// over every earlier token or through a sliding window.
#[derive(Deserialize)]
pub(crate) struct AttentionPattern {
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

// The pattern only decides which scores are masked; `window` refuses what is not implemented.
sizeless_config!(AttentionPattern);

impl AttentionPattern {
    /// The sliding window of layer 0's attention as HF's `model_type` reads the
    /// fields (`None`: every earlier token), refusing another model type, a
    /// bidirectional attention and a layer type other than full or sliding.
    pub(crate) fn window(&self, bundle: &Bundle, model_type: &str, seq: usize) -> Result<Option<usize>> {
        if let Some(kind) = self.model_type.as_deref().filter(|kind| *kind != model_type) {
            return Err(bundle.config_error(
                "model_type",
                format!("this case implements {model_type:?} attention, got {kind:?}"),
            ));
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(bundle.config_error(
                "use_bidirectional_attention",
                "this case checks causal attention: expected false or null, got true",
            ));
        }
        let slides = match self.layer_types.as_ref().and_then(|types| types.first()) {
            Some(kind) if kind == "full_attention" => false,
            Some(kind) if kind == "sliding_attention" => true,
            Some(kind) => {
                return Err(bundle.config_error(
                    "layer_types",
                    format!("layer 0 must be \"full_attention\" or \"sliding_attention\", got {kind:?}"),
                ))
            }
            // Without layer types, HF's Gemma 2 alternates from a sliding layer 0.
            None if model_type == "gemma2" => true,
            None => {
                // LLaMA has no window: one shorter than the sequence is refused, not ignored.
                if let Some(window) = self.sliding_window.filter(|&window| window < seq) {
                    return Err(bundle.config_error(
                        "sliding_window",
                        format!("{model_type} attention has no sliding window: expected null or at least the sequence length {seq}, got {window}"),
                    ));
                }
                false
            }
        };
        match (slides, self.sliding_window) {
            (true, None) => Err(bundle.config_error("sliding_window", "layer 0 slides, but sliding_window is null")),
            (true, Some(0)) => Err(bundle.config_error("sliding_window", "must be positive, got 0")),
            (true, window) => Ok(window),
            (false, _) => Ok(None),
        }
    }
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

/// `torch.nn.MultiheadAttention`'s arguments, as the fixtures record them.
#[derive(Deserialize)]
pub struct MultiheadArgs {
    /// The query (and output) width.
    pub embed_dim: usize,
    /// Heads; `embed_dim` splits evenly between them.
    pub num_heads: usize,
    /// The key width, when the keys come from another sequence (cross-attention).
    #[serde(default)]
    pub kdim: Option<usize>,
    /// The value width; must equal `kdim`.
    #[serde(default)]
    pub vdim: Option<usize>,
    /// Biases on the projections.
    #[serde(default = "yes")]
    pub bias: bool,
    /// Inputs are `[batch, seq, features]`; required.
    #[serde(default)]
    pub batch_first: bool,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub dropout: f32,
    /// Extra learned key/value rows; refused.
    #[serde(default)]
    pub add_bias_kv: bool,
    /// An extra zero key/value row; refused.
    #[serde(default)]
    pub add_zero_attn: bool,
}

impl ConfigCheck for MultiheadArgs {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[("embed_dim", self.embed_dim), ("num_heads", self.num_heads)])?;
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(format!(
                "`embed_dim` {} is not divisible by `num_heads` {}",
                self.embed_dim, self.num_heads
            ));
        }
        for (field, width) in [("kdim", self.kdim), ("vdim", self.vdim)] {
            if let Some(width) = width {
                all_positive(&[(field, width)])?;
            }
        }
        probability("dropout", f64::from(self.dropout))
    }

    /// The query, key, value and output projections; per row the projections and
    /// output, and per head a score for every key.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("embed_dim", self.embed_dim);
        let context = self.kdim.map_or(dim.clone(), |k| Size::field("kdim", k))
            + self.vdim.map_or(dim.clone(), |v| Size::field("vdim", v));
        let heads = Size::field("num_heads", self.num_heads);
        Footprint {
            params: work.bytes(dim.clone() * (dim.clone() * 2 + context + Size::count(4))),
            activations: work.bytes(work.rows() * dim * 8 + work.rows() * heads * work.len() * 3),
        }
    }
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

/// What a port of torch's `nn.MultiheadAttention` records and the reference cannot:
/// torch projects with `F.multi_head_attention_forward` on the raw `in_proj_weight`
/// and `out_proj.weight`, so no hook fires for the projections. Under `attn`:
pub const CROSS_ATTENTION_PORT_ONLY: [&str; 4] = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"];

/// The same projections under `self_attn`, as `nn.TransformerEncoderLayer` names its attention.
pub const POST_NORM_PORT_ONLY: [&str; 4] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
];
