//! GPT-2: Radford et al., "Language Models are Unsupervised Multitask Learners"
//! (2019, [`papers::GPT2_REPORT`](crate::papers::GPT2_REPORT)), the decoder
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

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use replica_blocks::attention::{AttentionConfig, AttentionNames};
use replica_blocks::dropout::Dropout;
use replica_blocks::kv_cache::KvCache;
use replica_blocks::position_embedding::{LearnedPositionConfig, LearnedPositionEmbedding};
use replica_blocks::{
    Activation, AttentionOutput, BlockNames, Embedding, EmbeddingConfig, FeedForwardConfig, LayerNorm, LayerNormConfig,
    Linear, LinearConfig, MlpConfig, MlpNames, NormKind, ResidualLayout, TransformerBlock, TransformerBlockConfig,
};
use replica_check::WeightMap;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Family};
use crate::config::{parse_config, positive, probabilities};
use crate::generation::CausalLm;
use crate::{Error, Result};

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
    pub vocab_size: usize,
    /// Rows of the position table: the longest sequence.
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// The MLP's hidden width; `None` is `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "gelu_new")]
    pub activation_function: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Divide the scores by `sqrt(head_dim)`.
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    /// Attention in f32 with the scale applied before the product; only `false` is implemented.
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl crate::config::ModelConfig for Gpt2Config {
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

    fn check(&self) -> std::result::Result<(), String> {
        self.validate()
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

    /// Reads a HF `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let config: Self = crate::config::read_config(path)?;
        config.validate().map_err(|m| Error::config(path, m))?;
        Ok(config)
    }

    /// Reads a config held as JSON (a bundle's metadata, a preset); `origin` names it in errors.
    pub fn from_value(value: &serde_json::Value, origin: impl AsRef<Path>) -> Result<Self> {
        let config: Self = parse_config(value, &origin)?;
        config.validate().map_err(|m| Error::config(origin, m))?;
        Ok(config)
    }

    /// Refuses settings that contradict each other or that this model does not implement.
    pub fn validate(&self) -> std::result::Result<(), String> {
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
        if self.n_embd % self.n_head != 0 {
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
        Ok(())
    }

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
                trace_placeholders: false,
                ..AttentionNames::hf()
            }),
            ..AttentionConfig::new(self.n_embd, self.n_head)
        };
        let mlp = MlpConfig {
            hidden_dim: Some(self.n_inner.unwrap_or(4 * self.n_embd)),
            activation: self.activation_function,
            dropout: self.resid_pdrop,
            names: MlpNames::gpt2(),
            ..MlpConfig::new(self.n_embd, self.n_inner.unwrap_or(4 * self.n_embd))
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
            names: BlockNames::gpt2().returning(AttentionOutput::TupleWithWeights),
        }
    }

    fn summary(&self) -> String {
        format!(
            "vocab_size {}, n_positions {}, n_embd {}, n_layer {}, n_head {}",
            self.vocab_size, self.n_positions, self.n_embd, self.n_layer, self.n_head
        )
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
    training: bool,
    device: Device,
}

impl Gpt2 {
    /// Builds the model under `vb` (the checkpoint's root: it reads `transformer.*`
    /// and, untied, `lm_head.weight`). A `VarBuilder` over a `VarMap` gives a freshly
    /// initialised model to train.
    pub fn new(config: &Gpt2Config, vb: VarBuilder) -> candle_core::Result<Self> {
        config
            .validate()
            .map_err(|m| candle_core::Error::Msg(format!("GPT-2 config: {m}")))?;
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
            training: false,
            device: vb.device().clone(),
        })
    }

    /// The map from a HF GPT-2 checkpoint's tensors to this model's: `Conv1D`
    /// weights transposed to `[out, in]`, the attention-mask buffers dropped, the
    /// tied `lm_head.weight` dropped (the head reads `transformer.wte.weight`), and
    /// `transformer.` added where a `GPT2Model` checkpoint lacks it.
    pub fn weight_map(config: &Gpt2Config) -> WeightMap {
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

    /// Loads a HF GPT-2 checkpoint (`model.safetensors`, or a reference bundle's
    /// `param/` tensors) strictly: another model's checkpoint, shapes that
    /// contradict `config`, and missing or unused tensors are errors.
    pub fn load(config: &Gpt2Config, checkpoint: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let checkpoint = checkpoint.as_ref();
        let tensors = checkpoint::read_checkpoint(checkpoint, device)?;
        Self::from_tensors(config, tensors, checkpoint, dtype, device)
    }

    /// Loads a checkpoint with its config: `config` when given, else the
    /// `config.json` beside the checkpoint, else the config a reference bundle
    /// carries in its metadata.
    pub fn from_checkpoint(
        checkpoint: impl AsRef<Path>,
        config: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let checkpoint = checkpoint.as_ref();
        let beside = checkpoint.with_file_name("config.json");
        let config = match config {
            Some(path) => Gpt2Config::from_file(path)?,
            None if beside.is_file() => Gpt2Config::from_file(&beside)?,
            None => match checkpoint::embedded_config(checkpoint)? {
                Some(value) => Gpt2Config::from_value(&value, checkpoint)?,
                None => {
                    return Err(Error::config(
                        checkpoint,
                        format!(
                        "no GPT-2 config: give one, or put the checkpoint's config.json beside it ({} does not exist)",
                        beside.display()
                    ),
                    ))
                }
            },
        };
        Self::load(&config, checkpoint, dtype, device)
    }

    /// [`load`](Self::load) from tensors already read, by checkpoint name; `origin` names them in errors.
    pub fn from_tensors(
        config: &Gpt2Config,
        tensors: std::collections::BTreeMap<String, Tensor>,
        origin: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|m| Error::config(origin.as_ref(), format!("GPT-2 config: {m}")))?;
        checkpoint::load_strict(
            Family::Gpt2,
            tensors,
            origin.as_ref(),
            &Self::weight_map(config),
            dtype,
            device,
            &config.summary(),
            |vb| Self::new(config, vb),
        )
    }

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

    /// Turns dropout on (training) or off (inference, the default).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
        for block in &mut self.h {
            block.set_training(training);
        }
    }

    /// The final hidden states `[batch, seq, n_embd]` (after `ln_f`) for token ids
    /// `[batch, seq]`, continuing from what `cache` holds (one [`KvCache`] per layer).
    pub fn forward_hidden(&self, ids: &Tensor, mut cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        let (_, seq) = ids.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "GPT-2: token ids must be [batch, seq], got shape {:?}",
                ids.dims()
            ))
        })?;
        let offset = check_cache(&cache, self.h.len())?;
        if offset + seq > self.config.n_positions {
            candle_core::bail!(
                "GPT-2: a sequence of {} tokens{} is longer than the position table (n_positions {})",
                offset + seq,
                if offset > 0 {
                    format!(" ({offset} cached + {seq} new)")
                } else {
                    String::new()
                },
                self.config.n_positions
            )
        }
        let tokens = self.wte.forward(ids)?;
        let positions = self.wpe.forward(seq, offset)?;
        let mut x = self.drop.forward_t(&tokens.broadcast_add(&positions)?, self.training)?;
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward(&x, None, cache.as_mut().map(|c| &mut c[i]))?;
        }
        let x = self.ln_f.forward(&x)?;
        replica_check::tap("transformer:last_hidden_state", &x);
        Ok(x)
    }

    /// Logits `[batch, seq, vocab_size]`.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        let hidden = self.forward_hidden(ids, cache)?;
        self.lm_head.forward(&hidden)
    }
}

/// The number of cached tokens, after checking there is one cache per layer.
pub(crate) fn check_cache(cache: &Option<&mut [KvCache]>, layers: usize) -> candle_core::Result<usize> {
    match cache {
        Some(cache) if cache.len() != layers => {
            candle_core::bail!(
                "kv cache: {} layer caches given, the model has {layers} layers",
                cache.len()
            )
        }
        Some(cache) => Ok(cache[0].len()),
        None => Ok(0),
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
