//! GPT-2: Radford et al., "Language Models are Unsupervised Multitask Learners"
//! (2019, [`papers::GPT2_REPORT`]), the decoder
//! architecture restated in Brown et al., arXiv 2005.14165, and written out in one
//! readable file by minGPT. Reference: HF `transformers.GPT2LMHeadModel`.
//!
//! Token and learned position embeddings, `n_layer` pre-norm transformer blocks
//! (causal multi-head attention with a fused `c_attn` projection, a GELU-tanh MLP),
//! a final LayerNorm, and an LM head tied to the token embedding.
//!
//! Module paths are HF's (`transformer.h.0.attn.c_attn`, `lm_head`), so a HF
//! checkpoint loads through [`Gpt2::weight_map`] alone: it transposes the
//! `Conv1D` weights (stored `[in, out]`), drops the causal-mask buffers
//! (`attn.bias`, `attn.masked_bias`) and the tied `lm_head.weight`, and adds the
//! `transformer.` prefix that `GPT2Model` checkpoints lack.

use candle_core::{Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use replica_blocks::attention::{AttentionConfig, AttentionNames};
use replica_blocks::dropout::Dropout;
use replica_blocks::kv_cache::KvCache;
use replica_blocks::position_embedding::{LearnedPositionConfig, LearnedPositionEmbedding};
use replica_blocks::{
    Activation, BlockNames, Embedding, EmbeddingConfig, FeedForwardConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig, MlpConfig, MlpNames, NormKind, ResidualLayout, TransformerBlock, TransformerBlockConfig,
};
use replica_check::config_check::{at_most, non_negative};
use replica_check::{ConfigCheck, Footprint, Size, WeightMap, Workload};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{positive, probabilities};
use crate::generation::{decoder_positions, CausalLm};
use crate::{papers, Architecture, Family, ModelConfig, Preset};

fn yes() -> bool {
    true
}
fn gelu_new() -> Activation {
    Activation::GeluTanh
}
fn default_eps() -> f64 {
    1e-5
}
fn default_dropout() -> f64 {
    0.1
}

/// A HF GPT-2 `config.json` (`GPT2Config`); fields it lacks take HF's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Rows of the token embedding (and columns of the LM head).
    pub vocab_size: usize,
    /// Rows of the position table: the longest sequence.
    pub n_positions: usize,
    /// The width of the residual stream.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// The MLP's hidden width; `None` is `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// The MLP's activation (HF's `gelu_new`, GELU with the tanh approximation).
    #[serde(default = "gelu_new")]
    pub activation_function: Activation,
    /// The LayerNorms' epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Dropout on the embeddings, in training.
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    /// Dropout on the attention probabilities, in training.
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    /// Dropout on each residual branch's output, in training.
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    /// The LM head reads the token embedding's weight.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Divide the scores by `sqrt(head_dim)`.
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    /// Also divide the scores by the layer's index + 1; only `false` is implemented.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Cross-attention to an encoder's states; only `false` is implemented.
    #[serde(default)]
    pub add_cross_attention: bool,
    /// Attention in f32 with the scale applied before the product; only `false` is implemented.
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    /// `gpt2` when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ModelConfig for Gpt2Config {
    /// `GPT2DoubleHeadsModel`'s sequence-summary head, `n_ctx` (a legacy copy of
    /// `n_positions` that no modeling code reads) and `pad_token_id` (GPT-2's `wte`
    /// has no padding row).
    const NOT_USED: &'static [&'static str] = &[
        "summary_type",
        "summary_use_proj",
        "summary_activation",
        "summary_proj_to_labels",
        "summary_first_dropout",
        "n_ctx",
        "pad_token_id",
    ];
}

impl ConfigCheck for Gpt2Config {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.model_type.as_deref().filter(|k| *k != "gpt2") {
            return Err(format!(
                "model_type is `{kind}`, not `gpt2`: this is not a GPT-2 config"
            ));
        }
        positive(&[
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ])?;
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd {} is not divisible by n_head {}",
                self.n_embd, self.n_head
            ));
        }
        probabilities(&[
            ("embd_pdrop", self.embd_pdrop),
            ("attn_pdrop", self.attn_pdrop),
            ("resid_pdrop", self.resid_pdrop),
        ])?;
        if self.scale_attn_by_inverse_layer_idx {
            return Err("scale_attn_by_inverse_layer_idx is not implemented".into());
        }
        if self.reorder_and_upcast_attn {
            return Err("reorder_and_upcast_attn is not implemented".into());
        }
        if self.add_cross_attention {
            return Err("add_cross_attention (GPT-2 as a decoder of an encoder) is not implemented".into());
        }
        if let Some(inner) = self.n_inner {
            positive(&[("n_inner", inner)])?;
        }
        non_negative("layer_norm_epsilon", self.layer_norm_epsilon)?;
        // Token ids are u32.
        at_most("vocab_size", self.vocab_size, 1 << 32)?;
        self.block_config().validate().map_err(|m| format!("layer: {m}"))
    }

    /// `wte`, `wpe`, `ln_f` and an untied head; per token the logits (and their
    /// gradient); `n_layer` blocks.
    fn footprint(&self, work: &Workload) -> Footprint {
        let hidden = work.as_tokens(self.n_embd);
        let dim = Size::field("n_embd", self.n_embd);
        let vocab = Size::field("vocab_size", self.vocab_size);
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        let tables = vocab.clone() * dim.clone() * heads + Size::field("n_positions", self.n_positions) * dim.clone();
        let own = Footprint {
            params: hidden.bytes(tables + dim.clone() * 2),
            activations: hidden.bytes(hidden.rows() * (vocab * 2 + dim * 4)),
        };
        own + self
            .block_config()
            .footprint(&hidden)
            .times(Size::field("n_layer", self.n_layer))
    }
}

impl Gpt2Config {
    /// A config of the given size with HF's defaults elsewhere (dropout 0.1).
    pub fn new(vocab_size: usize, n_positions: usize, n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: gelu_new(),
            layer_norm_epsilon: default_eps(),
            embd_pdrop: default_dropout(),
            attn_pdrop: default_dropout(),
            resid_pdrop: default_dropout(),
            tie_word_embeddings: true,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            add_cross_attention: false,
            reorder_and_upcast_attn: false,
            model_type: Some("gpt2".into()),
        }
    }

    /// Features per attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// One transformer block, as `GPT2Block`.
    pub fn block_config(&self) -> TransformerBlockConfig {
        let attention = AttentionConfig {
            fused_qkv: true,
            qkv_bias: true,
            proj_bias: Some(true),
            causal: true,
            scale: (!self.scale_attn_weights).then_some(1.0),
            attention_dropout: self.attn_pdrop as f32,
            proj_dropout: self.resid_pdrop as f32,
            max_positions: self.n_positions,
            names: Some(AttentionNames {
                qkv: "c_attn".into(),
                out: "c_proj".into(),
                proj_drop: Some("resid_dropout".into()),
                ..AttentionNames::hf()
            }),
            ..AttentionConfig::new(self.n_embd, self.n_head)
        };
        let mlp = MlpConfig {
            // `None` is 4 * n_embd, as GPT-2's `n_inner: null`.
            hidden_dim: self.n_inner,
            activation: self.activation_function,
            dropout: self.resid_pdrop,
            names: MlpNames::gpt2(),
            ..MlpConfig::new(self.n_embd, self.n_inner.unwrap_or(self.n_embd.saturating_mul(4)))
        };
        TransformerBlockConfig {
            dim: self.n_embd,
            layout: ResidualLayout::PreNorm,
            norm: NormKind::LayerNorm,
            norm_eps: self.layer_norm_epsilon,
            attention,
            feed_forward: FeedForwardConfig::Mlp(mlp),
            layer_scale: None,
            drop_path: 0.0,
            names: BlockNames::gpt2(),
        }
    }
}

/// GPT-2 with its language-model head (`GPT2LMHeadModel`).
#[derive(Clone, Debug)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: LearnedPositionEmbedding,
    drop: Dropout,
    h: Vec<TransformerBlock>,
    ln_f: LayerNorm,
    lm_head: Linear,
    config: Gpt2Config,
    device: Device,
}

fn gpt2_config(n_embd: usize, n_layer: usize, n_head: usize) -> Value {
    json!({
        "model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": n_embd, "n_layer": n_layer,
        "n_head": n_head, "n_inner": null, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "embd_pdrop": 0.1, "attn_pdrop": 0.1, "resid_pdrop": 0.1, "tie_word_embeddings": true,
    })
}

impl Architecture for Gpt2 {
    type Config = Gpt2Config;

    const FAMILY: Family = Family {
        name: "GPT-2",
        reference: "transformers.GPT2LMHeadModel",
        paper: papers::GPT2,
        checkpoint_naming:
            "HF GPT-2: transformer.{wte,wpe,h.N.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj},ln_f}, \
                            Conv1D weights [in, out], lm_head tied to wte (the `transformer.` prefix may be absent)",
        signature: r"(^|\.)h\.\d+\.attn\.c_attn\.weight$",
        example_tensor: "transformer.h.0.attn.c_attn.weight",
    };

    const PRESETS: &'static [Preset] = &[
        Preset {
            name: "gpt2",
            paper: papers::GPT2,
            checkpoint: "HF openai-community/gpt2",
            description: "GPT-2 small, 124M parameters: 12 layers, 768 wide, 12 heads",
            config: || gpt2_config(768, 12, 12),
        },
        Preset {
            name: "gpt2-medium",
            paper: papers::GPT2,
            checkpoint: "HF openai-community/gpt2-medium",
            description: "GPT-2 medium, 355M parameters: 24 layers, 1024 wide, 16 heads",
            config: || gpt2_config(1024, 24, 16),
        },
    ];

    /// Builds the model under `vb` (the checkpoint's root: it reads `transformer.*`
    /// and, untied, `lm_head.weight`). A `VarBuilder` over a `VarMap` gives a freshly
    /// initialised model to train.
    fn new(config: &Gpt2Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::check(config)?;
        let t = vb.pp("transformer");
        let wte = Embedding::new(&EmbeddingConfig::new(config.vocab_size, config.n_embd), t.pp("wte"))?;
        let wpe = LearnedPositionEmbedding::new(
            &LearnedPositionConfig::new(config.n_positions, config.n_embd),
            t.pp("wpe"),
        )?;
        let drop = Dropout::from_probability(config.embd_pdrop, t.pp("drop").prefix())?;
        let block = config.block_config();
        let h = (0..config.n_layer)
            .map(|i| TransformerBlock::new(&block, t.pp("h").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(
            &LayerNormConfig {
                eps: config.layer_norm_epsilon,
                ..LayerNormConfig::new(config.n_embd)
            },
            t.pp("ln_f"),
        )?;
        let lm_head = if config.tie_word_embeddings {
            Linear::from_weights(wte.weight().clone(), None, vb.pp("lm_head").prefix())
        } else {
            Linear::new(
                &LinearConfig::new(config.n_embd, config.vocab_size).no_bias(),
                vb.pp("lm_head"),
            )?
        };
        Ok(Self {
            wte,
            wpe,
            drop,
            h,
            ln_f,
            lm_head,
            config: config.clone(),
            device: vb.device().clone(),
        })
    }

    /// The map from a HF GPT-2 checkpoint's tensors to this model's: `Conv1D`
    /// weights transposed to `[out, in]`, the attention-mask buffers dropped, the
    /// tied `lm_head.weight` dropped (the head reads `transformer.wte.weight`), and
    /// `transformer.` added where a `GPT2Model` checkpoint lacks it.
    fn weight_map(config: &Gpt2Config) -> WeightMap {
        let map = WeightMap::new()
            .ignore(r"(^|\.)attn\.(masked_)?bias$")
            .rename(r"^(wte|wpe|h|ln_f)\.", "transformer.$1.")
            .transpose(r"\.(c_attn|c_proj|c_fc)\.weight$");
        if config.tie_word_embeddings {
            map.ignore(r"^lm_head\.weight$")
        } else {
            map
        }
    }
}

impl Gpt2 {
    /// The configuration the model was built with.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Gives a model built on `varmap` GPT-2's initialisation (minGPT's
    /// `_init_weights`): linear and embedding weights from N(0, 0.02), the two
    /// residual projections (`attn.c_proj`, `mlp.c_proj`) from N(0, 0.02 / sqrt(2 n_layer)),
    /// biases 0, LayerNorm scales 1. The blocks' own defaults (PyTorch's, N(0, 1)
    /// embeddings with a tied head) start training from a loss far above log(vocab).
    pub fn init_weights(varmap: &VarMap, config: &Gpt2Config) -> candle_core::Result<()> {
        let residual_std = 0.02 / (2.0 * config.n_layer as f64).sqrt();
        let vars = varmap.data().lock().expect("the varmap's lock");
        for (name, var) in vars.iter() {
            let t = var.as_tensor();
            let value = if name.ends_with(".bias") {
                t.zeros_like()?
            } else if name.contains(".ln_") {
                t.ones_like()?
            } else if name.ends_with("c_proj.weight") {
                Tensor::randn(0f32, residual_std as f32, t.shape(), t.device())?.to_dtype(t.dtype())?
            } else {
                Tensor::randn(0f32, 0.02, t.shape(), t.device())?.to_dtype(t.dtype())?
            };
            var.set(&value)?;
        }
        Ok(())
    }

    /// The final hidden states `[batch, seq, n_embd]` (after `ln_f`) for token ids
    /// `[batch, seq]`, in inference, continuing from what `cache` holds (one
    /// [`KvCache`] per layer).
    pub fn forward_hidden(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        self.hidden_t(ids, cache, false)
    }

    /// Logits `[batch, seq, vocab_size]`, in inference (`forward_t(ids, true)` trains).
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        self.lm_head.forward(&self.hidden_t(ids, cache, false)?)
    }

    fn hidden_t(&self, ids: &Tensor, mut cache: Option<&mut [KvCache]>, train: bool) -> candle_core::Result<Tensor> {
        let n_positions = self.config.n_positions;
        let table = format!("the position table (n_positions {n_positions})");
        let (seq, offset) = decoder_positions("GPT-2", ids, &cache, self.h.len(), n_positions, &table)?;
        let tokens = self.wte.forward(ids)?;
        let positions = self.wpe.forward(seq, offset)?;
        let mut x = self.drop.forward_t(&tokens.broadcast_add(&positions)?, train)?;
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward_eager_t(&x, None, cache.as_mut().map(|c| &mut c[i]), train)?;
        }
        let x = self.ln_f.forward(&x)?;
        replica_check::tap("transformer:last_hidden_state", &x);
        Ok(x)
    }
}

impl ModuleT for Gpt2 {
    /// Logits `[batch, seq, vocab_size]` for token ids `[batch, seq]`; `train` turns dropout on.
    fn forward_t(&self, ids: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.lm_head.forward(&self.hidden_t(ids, None, train)?)
    }
}

impl CausalLm for Gpt2 {
    fn forward_lm(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        self.forward(ids, cache)
    }

    fn num_layers(&self) -> usize {
        self.h.len()
    }

    fn max_positions(&self) -> usize {
        self.config.n_positions
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
