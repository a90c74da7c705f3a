//! The T5 encoder: Raffel et al., "Exploring the Limits of Transfer Learning with a
//! Unified Text-to-Text Transformer", arXiv 1910.10683. Reference: HF
//! `transformers.T5EncoderModel`.
//!
//! Token embeddings (`shared`, no position embeddings), then pre-norm layers: an
//! RMSNorm without a bias (`T5LayerNorm`: variance in f32, rounded to a half
//! weight's dtype before the scale, which is [`RmsNorm`]'s LLaMA rounding),
//! self-attention with unscaled scores plus the bucketed relative position bias,
//! and a feed-forward network (`DenseReluDense`: `wi`, ReLU, `wo`; or with
//! `feed_forward_proj: gated-gelu`, T5 v1.1's `wi_0`, `wi_1`, tanh GELU, `wo`); a
//! final RMSNorm. The first layer's attention owns the bias
//! (`relative_attention_bias`) and every layer adds the same tensor. A padding mask
//! from the tokenizer's `attention_mask` hides padded keys.
//!
//! HF's T5 modules return tuples (`(hidden, position_bias)`); the model records the
//! elements the reference's hooks record under `path:0`, `path:1`.

use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;
use replica_blocks::attention::Attention;
use replica_blocks::dropout::Dropout;
use replica_blocks::mask;
use replica_blocks::relative_position_bias::{t5_attention_config, RelativePositionBias, RelativePositionBiasConfig};
use replica_blocks::{
    Activation, Embedding, GluMlp, GluMlpConfig, GluMlpNames, GluProjections, Mlp, MlpConfig, MlpNames, RmsNorm,
    RmsNormConfig,
};
use replica_check::config_check::non_negative;
use replica_check::{tap, ConfigCheck, Footprint, Size, TraceMap, WeightMap, Workload};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{positive, probabilities};
use crate::{papers, Architecture, Family, ModelConfig, Preset};

fn default_vocab() -> usize {
    32128
}
fn default_d_model() -> usize {
    512
}
fn default_d_kv() -> usize {
    64
}
fn default_d_ff() -> usize {
    2048
}
fn default_layers() -> usize {
    6
}
fn default_heads() -> usize {
    8
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-6
}
fn relu() -> String {
    "relu".into()
}

/// A HF T5 `config.json` (`T5Config`); fields it lacks take HF's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Rows of the shared token embedding.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// The width of the hidden states.
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    /// Features per attention head (not necessarily `d_model / num_heads`).
    #[serde(default = "default_d_kv")]
    pub d_kv: usize,
    /// The feed-forward network's hidden width.
    #[serde(default = "default_d_ff")]
    pub d_ff: usize,
    /// Encoder layers.
    #[serde(default = "default_layers")]
    pub num_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "default_heads")]
    pub num_heads: usize,
    /// Buckets of the relative position bias.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Relative positions this far apart or further share the last bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// Dropout on the embeddings, each sublayer's output, the feed-forward hidden
    /// layer, the attention probabilities and the final states, in training.
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
    /// The RMSNorms' epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (T5), `gated-gelu` (T5 v1.1: tanh GELU), or `ACT` / `gated-ACT` for
    /// another activation HF names.
    #[serde(default = "relu")]
    pub feed_forward_proj: String,
    /// Derived by HF from `feed_forward_proj`; when present it must agree.
    #[serde(default)]
    pub dense_act_fn: Option<String>,
    /// Derived by HF from `feed_forward_proj`; when present it must agree.
    #[serde(default)]
    pub is_gated_act: Option<bool>,
    /// A decoder stack; this model is the encoder (must be false).
    #[serde(default)]
    pub is_decoder: bool,
    /// `t5` when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ModelConfig for T5Config {
    /// What the encoder has no use for: the decoder's depth and start token, the
    /// encoder-decoder flag, the LM head's tying and output scaling, the
    /// classification heads' dropout, the padding id (T5's embedding has no
    /// padding row), the initialisation factor, chunked feed-forward (which
    /// changes memory, not values), and two legacy fields of the original
    /// checkpoints' `config.json` (`n_positions`: T5 has no position table;
    /// `output_past`: a cache flag).
    const NOT_USED: &'static [&'static str] = &[
        "n_positions",
        "output_past",
        "num_decoder_layers",
        "decoder_start_token_id",
        "is_encoder_decoder",
        "tie_word_embeddings",
        "scale_decoder_outputs",
        "classifier_dropout",
        "pad_token_id",
        "initializer_factor",
        "chunk_size_feed_forward",
    ];
}

/// The feed-forward network `feed_forward_proj` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum T5FeedForward {
    /// `T5DenseActDense`: `wi`, the activation, `wo`.
    Dense(Activation),
    /// `T5DenseGatedActDense`: `act(wi_0(x)) · wi_1(x)`, then `wo`.
    Gated(Activation),
}

impl T5Config {
    /// The feed-forward network, parsed as HF's `T5Config` parses `feed_forward_proj`
    /// (`gated-gelu` is the tanh GELU, `gelu_new`).
    pub fn feed_forward(&self) -> std::result::Result<T5FeedForward, String> {
        let proj = self.feed_forward_proj.as_str();
        let (gated, name) = match proj.split('-').collect::<Vec<_>>()[..] {
            [name] => (false, name),
            ["gated", name] => (true, name),
            _ => {
                return Err(format!(
                    "feed_forward_proj `{proj}` is not `ACT` or `gated-ACT` (e.g. `relu`, `gated-gelu`)"
                ))
            }
        };
        let name = if proj == "gated-gelu" { "gelu_new" } else { name };
        let activation: Activation = serde_json::from_value(Value::String(name.into()))
            .map_err(|_| format!("feed_forward_proj `{proj}`: the activation `{name}` is not implemented"))?;
        if let Some(act) = self.dense_act_fn.as_deref().filter(|act| *act != name) {
            return Err(format!(
                "dense_act_fn `{act}` disagrees with feed_forward_proj `{proj}` (which gives `{name}`)"
            ));
        }
        if let Some(flag) = self.is_gated_act.filter(|flag| *flag != gated) {
            return Err(format!("is_gated_act {flag} disagrees with feed_forward_proj `{proj}`"));
        }
        Ok(if gated {
            T5FeedForward::Gated(activation)
        } else {
            T5FeedForward::Dense(activation)
        })
    }

    /// The relative position bias of the first layer (encoder buckets).
    pub fn bias_config(&self) -> RelativePositionBiasConfig {
        RelativePositionBiasConfig {
            num_buckets: self.relative_attention_num_buckets,
            max_distance: self.relative_attention_max_distance,
            heads: self.num_heads,
            causal: false,
        }
    }

    fn norm_config(&self) -> RmsNormConfig {
        RmsNormConfig {
            eps: self.layer_norm_epsilon,
            ..RmsNormConfig::new(self.d_model)
        }
    }

    fn dense_config(&self, activation: Activation) -> MlpConfig {
        MlpConfig {
            activation,
            bias: false,
            dropout: self.dropout_rate,
            names: MlpNames {
                fc1: "wi".into(),
                act: Some("act".into()),
                drop1: Some("dropout".into()),
                norm: None,
                fc2: "wo".into(),
                drop2: None,
            },
            ..MlpConfig::new(self.d_model, self.d_ff)
        }
    }

    fn gated_config(&self, activation: Activation) -> GluMlpConfig {
        GluMlpConfig {
            bias: false,
            dropout: self.dropout_rate,
            names: GluMlpNames {
                projections: GluProjections::Split {
                    gate: "wi_0".into(),
                    up: "wi_1".into(),
                },
                act: Some("act".into()),
                drop1: Some("dropout".into()),
                norm: None,
                down: "wo".into(),
                drop2: None,
            },
            ..GluMlpConfig::new(self.d_model, self.d_ff, activation)
        }
    }
}

impl ConfigCheck for T5Config {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.model_type.as_deref().filter(|k| *k != "t5") {
            return Err(format!("model_type is `{kind}`, not `t5`: this is not a T5 config"));
        }
        positive(&[
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets),
        ])?;
        probabilities(&[("dropout_rate", self.dropout_rate)])?;
        non_negative("layer_norm_epsilon", self.layer_norm_epsilon)?;
        if self.is_decoder {
            return Err("is_decoder: the T5 decoder stack is not implemented (this is T5EncoderModel)".into());
        }
        let feed_forward = self.feed_forward()?;
        self.bias_config().validate().map_err(|m| {
            // The bias's own field names, spelled as the config spells them.
            m.replace("num_buckets", "relative_attention_num_buckets")
                .replace("max_distance", "relative_attention_max_distance")
        })?;
        t5_attention_config(self.d_model, self.num_heads, self.d_kv, false, self.dropout_rate as f32)
            .validate()
            .map_err(|m| format!("attention: {m}"))?;
        match feed_forward {
            T5FeedForward::Dense(act) => self.dense_config(act).validate(),
            T5FeedForward::Gated(act) => self.gated_config(act).validate(),
        }
        .map_err(|m| format!("feed-forward: {m}"))
    }

    /// The shared embedding, the bias table, per layer the attention, the
    /// feed-forward network and two norms, and per token the embeddings.
    fn footprint(&self, work: &Workload) -> Footprint {
        let hidden = work.as_tokens(self.d_model);
        let dim = Size::field("d_model", self.d_model);
        let own = Footprint {
            params: hidden.bytes(Size::field("vocab_size", self.vocab_size) * dim.clone() + dim.clone()),
            activations: hidden.bytes(hidden.rows() * dim.clone() * 4),
        };
        let attention = t5_attention_config(self.d_model, self.num_heads, self.d_kv, false, 0.0).footprint(&hidden);
        let feed_forward = match self.feed_forward() {
            Ok(T5FeedForward::Gated(act)) => self.gated_config(act).footprint(&hidden),
            Ok(T5FeedForward::Dense(act)) => self.dense_config(act).footprint(&hidden),
            Err(_) => Footprint::NONE,
        };
        let norms = Footprint {
            params: hidden.bytes(dim.clone() * 2),
            activations: hidden.bytes(hidden.rows() * dim * 4),
        };
        let layers = Size::field("num_layers", self.num_layers);
        own + self.bias_config().footprint(&hidden) + (attention + feed_forward + norms).times(layers)
    }
}

/// T5's feed-forward network, dense or gated.
#[derive(Clone, Debug)]
enum FeedForward {
    Dense(Mlp),
    Gated(GluMlp),
}

impl FeedForward {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward_t(x, train),
            FeedForward::Gated(glu) => glu.forward_t(x, train),
        }
    }
}

/// One `T5Block` of the encoder: `layer.0` (`T5LayerSelfAttention`) and `layer.1`
/// (`T5LayerFF`).
#[derive(Clone, Debug)]
struct T5Layer {
    attention_norm: RmsNorm,
    attention: Attention,
    attention_dropout: Dropout,
    ff_norm: RmsNorm,
    feed_forward: FeedForward,
    ff_dropout: Dropout,
    path: String,
}

impl T5Layer {
    fn new(config: &T5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (layer0, layer1) = (vb.pp("layer.0"), vb.pp("layer.1"));
        let dropout = |vb: &VarBuilder| Dropout::from_probability(config.dropout_rate, vb.pp("dropout").prefix());
        let attention = t5_attention_config(
            config.d_model,
            config.num_heads,
            config.d_kv,
            false,
            config.dropout_rate as f32,
        );
        let ff_vb = layer1.pp("DenseReluDense");
        let feed_forward = match config.feed_forward().map_err(candle_core::Error::Msg)? {
            T5FeedForward::Dense(act) => FeedForward::Dense(Mlp::new(&config.dense_config(act), ff_vb)?),
            T5FeedForward::Gated(act) => FeedForward::Gated(GluMlp::new(&config.gated_config(act), ff_vb)?),
        };
        Ok(Self {
            attention_norm: RmsNorm::new(&config.norm_config(), layer0.pp("layer_norm"))?,
            attention: Attention::new(&attention, layer0.pp("SelfAttention"))?,
            attention_dropout: dropout(&layer0)?,
            ff_norm: RmsNorm::new(&config.norm_config(), layer1.pp("layer_norm"))?,
            feed_forward,
            ff_dropout: dropout(&layer1)?,
            path: vb.prefix(),
        })
    }

    /// `x + attention(norm(x))` with `scores_bias` (the position bias, and the padding
    /// mask when there is one) added to the scores, then `x + ff(norm(x))`.
    /// `position_bias` is what the reference's modules pass on (recorded as `:1`).
    /// With `want_weights`, also the attention probabilities `[batch, heads, seq, seq]`
    /// (HF's eager attention returns them as the third element, `:2`).
    fn forward_t(
        &self,
        x: &Tensor,
        scores_bias: &Tensor,
        position_bias: &Tensor,
        want_weights: bool,
        train: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let attention_path = format!("{}.layer.0", self.path);
        let normed = self.attention_norm.forward(x)?;
        let (attended, weights) = if want_weights {
            let (y, w) = self
                .attention
                .forward_with_weights_t(&normed, None, Some(scores_bias), None, train)?;
            (y, Some(w))
        } else {
            (self.attention.forward_t(&normed, Some(scores_bias), None, train)?, None)
        };
        // Renamed `SelfAttention:1` by the trace map (the block's own `:1` is its probabilities).
        tap(&format!("{attention_path}.SelfAttention:position_bias"), position_bias);
        let x = (x + self.attention_dropout.forward_t(&attended, train)?)?;
        tap(&format!("{attention_path}:0"), &x);
        tap(&format!("{attention_path}:1"), position_bias);
        if let Some(w) = &weights {
            tap(&format!("{attention_path}:2"), w);
        }
        let normed = self.ff_norm.forward(&x)?;
        let x = (&x
            + self
                .ff_dropout
                .forward_t(&self.feed_forward.forward_t(&normed, train)?, train)?)?;
        tap(&format!("{}.layer.1", self.path), &x);
        tap(&format!("{}:0", self.path), &x);
        tap(&format!("{}:1", self.path), position_bias);
        Ok((x, weights))
    }
}

/// HF's `T5EncoderModel`.
#[derive(Clone, Debug)]
pub struct T5Encoder {
    embed_tokens: Embedding,
    embed_dropout: Dropout,
    relative_bias: RelativePositionBias,
    layers: Vec<T5Layer>,
    final_layer_norm: RmsNorm,
    final_dropout: Dropout,
    config: T5Config,
    trace_map: TraceMap,
}

fn t5_config(d_model: usize, d_ff: usize, layers: usize, heads: usize, feed_forward_proj: &str) -> Value {
    json!({
        "model_type": "t5", "vocab_size": 32128, "d_model": d_model, "d_kv": 64, "d_ff": d_ff,
        "num_layers": layers, "num_heads": heads, "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": feed_forward_proj,
    })
}

impl Architecture for T5Encoder {
    type Config = T5Config;

    const FAMILY: Family = Family {
        name: "T5",
        reference: "transformers.T5EncoderModel",
        paper: papers::T5,
        checkpoint_naming: "HF T5: shared, encoder.block.N.layer.0.{layer_norm,SelfAttention.{q,k,v,o}}, \
                            encoder.block.0.layer.0.SelfAttention.relative_attention_bias, \
                            encoder.block.N.layer.1.{layer_norm,DenseReluDense.{wi,wi_0,wi_1,wo}}, \
                            encoder.final_layer_norm (a whole T5's decoder.* and lm_head are dropped)",
        signature: r"(^|\.)block\.\d+\.layer\.0\.SelfAttention\.q\.weight$",
        example_tensor: "encoder.block.0.layer.0.SelfAttention.q.weight",
    };

    const PRESETS: &'static [Preset] = &[
        Preset {
            name: "t5-small",
            paper: papers::T5,
            checkpoint: "HF google-t5/t5-small",
            description: "the T5 small encoder: 6 layers, 512 wide, 8 heads, ReLU feed-forward",
            config: || t5_config(512, 2048, 6, 8, "relu"),
        },
        Preset {
            name: "t5-v1_1-small",
            paper: papers::T5,
            checkpoint: "HF google/t5-v1_1-small",
            description: "the T5 v1.1 small encoder: 8 layers, 512 wide, 6 heads, gated-GELU feed-forward",
            config: || t5_config(512, 1024, 8, 6, "gated-gelu"),
        },
    ];

    /// Builds the encoder under `vb` (the checkpoint's root: `shared`, `encoder.*`).
    fn new(config: &T5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::check(config)?;
        let encoder = vb.pp("encoder");
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 };
        let shared = vb.get_with_hints((config.vocab_size, config.d_model), "shared.weight", init)?;
        let layers = (0..config.num_layers)
            .map(|i| T5Layer::new(config, encoder.pp("block").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let bias_vb = encoder.pp("block.0.layer.0.SelfAttention.relative_attention_bias");
        Ok(Self {
            // The encoder's `embed_tokens` is the shared table, recorded under its own path.
            embed_tokens: Embedding::from_weight(shared, encoder.pp("embed_tokens").prefix()),
            embed_dropout: Dropout::from_probability(config.dropout_rate, encoder.pp("dropout").prefix())?,
            relative_bias: RelativePositionBias::new(&config.bias_config(), bias_vb)?,
            layers,
            final_layer_norm: RmsNorm::new(&config.norm_config(), encoder.pp("final_layer_norm"))?,
            final_dropout: Dropout::from_probability(config.dropout_rate, encoder.pp("dropout").prefix())?,
            config: config.clone(),
            trace_map: Self::trace_map(config),
        })
    }

    /// `T5Attention` returns `(output, position_bias, weights)`: the attention block's
    /// output is element 0, its probabilities (when asked for) element 2, and the bias
    /// the layer records beside them element 1.
    fn trace_map(_: &T5Config) -> TraceMap {
        let attention = r"^(encoder\.block\.\d+\.layer\.0\.SelfAttention)";
        TraceMap::new()
            .element(&format!("{attention}$"), 0)
            .rename(&format!("{attention}:1$"), "$1:2")
            .rename(&format!("{attention}:position_bias$"), "$1:1")
    }

    /// HF T5 checkpoints: the encoder's tied copy of `shared` (`encoder.embed_tokens.weight`)
    /// and, in a whole T5's checkpoint, the decoder and the LM head are dropped.
    fn weight_map(_: &T5Config) -> WeightMap {
        WeightMap::new()
            .ignore(r"^encoder\.embed_tokens\.weight$")
            .ignore(r"^decoder\.")
            .ignore(r"^lm_head\.weight$")
    }
}

impl T5Encoder {
    /// The configuration the model was built with.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// The last hidden states `[batch, seq, d_model]` of token ids `[batch, seq]`, in
    /// inference; `attention_mask` (1 = token, 0 = padding) defaults to all ones.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.encode_t(input_ids, attention_mask, false)
    }

    /// [`forward`](Self::forward) in training (`train`: dropout on) or inference.
    pub fn encode_t(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let (hidden, _) = replica_check::mapped(&self.trace_map, || self.run(input_ids, attention_mask, false, train))?;
        Ok(hidden)
    }

    /// [`forward`](Self::forward), also returning each layer's attention probabilities
    /// `[batch, heads, seq, seq]` (HF's `output_attentions` with eager attention, whose
    /// modules then record them as `SelfAttention:2` and `layer.0:2`).
    pub fn forward_with_attentions(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        replica_check::mapped(&self.trace_map, || self.run(input_ids, attention_mask, true, false))
    }

    fn run(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        want_weights: bool,
        train: bool,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let (_, seq) = input_ids.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "T5: input_ids must be [batch, seq], got shape {:?}",
                input_ids.dims()
            ))
        })?;
        if let Some(mask) = attention_mask.filter(|m| m.dims() != input_ids.dims()) {
            candle_core::bail!(
                "T5: attention_mask has shape {:?}, input_ids {:?}; they must match",
                mask.dims(),
                input_ids.dims()
            )
        }
        let x = self.embed_tokens.forward(input_ids)?;
        let mut x = self.embed_dropout.forward_t(&x, train)?;
        let position_bias = self.relative_bias.forward(seq, seq, 0)?;
        // HF keeps the bias and the padding mask apart and adds both to the scores.
        let scores_bias = match attention_mask {
            Some(m) => position_bias.broadcast_add(&mask::padding_mask(m, position_bias.dtype())?)?,
            None => position_bias.clone(),
        };
        let mut attentions = Vec::new();
        for layer in &self.layers {
            let (y, weights) = layer.forward_t(&x, &scores_bias, &position_bias, want_weights, train)?;
            x = y;
            attentions.extend(weights);
        }
        let x = self.final_layer_norm.forward(&x)?;
        let x = self.final_dropout.forward_t(&x, train)?;
        tap("encoder:last_hidden_state", &x);
        Ok((x, attentions))
    }
}

impl ModuleT for T5Encoder {
    /// The last hidden states `[batch, seq, d_model]` of unpadded token ids `[batch,
    /// seq]`; `train` turns dropout on ([`T5Encoder::encode_t`] takes a padding mask).
    fn forward_t(&self, input_ids: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.encode_t(input_ids, None, train)
    }
}
