//! HF `GemmaForCausalLM` (Gemma Team, arXiv 2403.08295) ported on replica's blocks.
//!
//! Gemma is the LLaMA decoder with four choices of its own, each a block option:
//! RMSNorms that scale by `1 + weight` in f32 and round after the scale
//! (`NormKind::GemmaRmsNorm`), token embeddings scaled by `sqrt(hidden_size)`
//! (`EmbeddingConfig::scale`), the tanh GELU in the gated MLP, and a head size
//! decoupled from `hidden_size / num_attention_heads`. The LM head is the
//! embedding's weight, and the padding row gets no gradient.

use replica::blocks::{
    attention::{AttentionConfig, AttentionNames},
    Activation, BlockNames, Embedding, EmbeddingConfig, FeedForwardConfig, GluMlpConfig, Linear, NormKind,
    ResidualLayout, RmsNorm, RmsNormConfig, RopeStyle, TransformerBlock, TransformerBlockConfig,
};
use replica::candle_core::{DType, Device, Result, Tensor};
use replica::candle_nn::VarBuilder;
use replica::check::{
    Bundle, Case, ConfigCheck, Footprint, Parity, Report, Result as CheckResult, Size, TraceReport, Unmatched,
    WeightMap, Workload,
};
use replica::models::decoder::{rope_theta, RopeParameters};
use serde::Deserialize;

/// The fields of HF's `GemmaConfig` the port reads (the bundle's config is read
/// strictly: a field nobody reads that is not HF bookkeeping is an error).
#[derive(Clone, Debug, Deserialize)]
pub struct GemmaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub pad_token_id: Option<usize>,
    pub tie_word_embeddings: bool,
    pub rope_parameters: Option<RopeParameters>,
    pub attention_bias: bool,
    pub attention_dropout: f64,
    pub use_bidirectional_attention: Option<bool>,
    pub model_type: String,
}

/// What the harness checks of a config before anything is built from it
/// (`bundle.config()` runs both).
impl ConfigCheck for GemmaConfig {
    /// Refuses what the port does not implement, so that it is never ignored.
    fn validate(&self) -> std::result::Result<(), String> {
        rope_theta(None, &None, &self.rope_parameters)?; // unscaled RoPE only
        match self {
            c if c.model_type != "gemma" => Err(format!("model_type `{}` is not gemma", c.model_type)),
            c if c.use_bidirectional_attention == Some(true) => Err("only causal attention".into()),
            c if !c.tie_word_embeddings => Err("only a tied LM head".into()),
            c => c.layer().validate(),
        }
    }

    /// The memory it needs, checked against the budget: the embedding (the head is
    /// tied to it) and the layers, on the ids' hidden states.
    fn footprint(&self, work: &Workload) -> Footprint {
        let hidden = work.as_tokens(self.hidden_size);
        let table = Size::field("vocab_size", self.vocab_size) * Size::field("hidden_size", self.hidden_size);
        let layers = Size::field("num_hidden_layers", self.num_hidden_layers);
        Footprint::params(hidden.bytes(table)) + self.layer().footprint(&hidden).times(layers)
    }
}

impl GemmaConfig {
    /// One decoder layer, as `GemmaDecoderLayer`.
    pub fn layer(&self) -> TransformerBlockConfig {
        TransformerBlockConfig {
            dim: self.hidden_size,
            layout: ResidualLayout::PreNorm,
            norm: NormKind::GemmaRmsNorm,
            norm_eps: self.rms_norm_eps,
            attention: AttentionConfig {
                kv_heads: Some(self.num_key_value_heads),
                head_dim: Some(self.head_dim),
                qkv_bias: self.attention_bias,
                proj_bias: Some(self.attention_bias),
                causal: true,
                rope: Some(RopeStyle::HalfSplit),
                rope_theta: rope_theta(None, &None, &self.rope_parameters).ok(),
                attention_dropout: self.attention_dropout as f32,
                max_positions: self.max_position_embeddings,
                names: Some(AttentionNames::hf()),
                ..AttentionConfig::new(self.hidden_size, self.num_attention_heads)
            },
            feed_forward: FeedForwardConfig::Glu(GluMlpConfig::new(
                self.hidden_size,
                self.intermediate_size,
                self.hidden_act,
            )),
            layer_scale: None,
            drop_path: 0.0,
            names: BlockNames::llama(),
        }
    }
}

/// `GemmaForCausalLM`, under HF's module paths (`model.layers.0.self_attn.q_proj`).
pub struct Gemma {
    embed_tokens: Embedding,
    layers: Vec<TransformerBlock>,
    norm: RmsNorm,
    lm_head: Linear,
}

impl Gemma {
    /// Builds the model under `vb` with `layer` for every decoder layer.
    pub fn new(config: &GemmaConfig, layer: &TransformerBlockConfig, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(replica::candle_core::Error::Msg)?;
        let m = vb.pp("model");
        let embedding = EmbeddingConfig {
            padding_idx: config.pad_token_id,
            scale: Some((config.hidden_size as f64).sqrt()),
            ..EmbeddingConfig::new(config.vocab_size, config.hidden_size)
        };
        let embed_tokens = Embedding::new(&embedding, m.pp("embed_tokens"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| TransformerBlock::new(layer, m.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(
            &RmsNormConfig::gemma(config.hidden_size, config.rms_norm_eps),
            m.pp("norm"),
        )?;
        let lm_head = Linear::from_weights(embed_tokens.weight().clone(), None, "lm_head");
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    /// Logits `[batch, seq, vocab_size]` of token ids `[batch, seq]`. Traced, it
    /// records what HF's hooks record: every module's output, the rotary tables
    /// (`model.rotary_emb`), eager attention's `(output, probabilities)` and the
    /// decoder's `last_hidden_state`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut x = self.embed_tokens.forward(ids)?;
        if let Some(rope) = self.layers[0].attention().rope() {
            rope.tap_hf_tables("model.rotary_emb", ids.dim(1)?, 0, x.dtype())?;
        }
        for layer in &self.layers {
            x = layer.forward_eager_t(&x, None, None, false)?;
        }
        let x = self.norm.forward(&x)?;
        replica::check::tap("model:last_hidden_state", &x);
        self.lm_head.forward(&x)
    }
}

/// The port, with `layer` for its decoder layers, against a reference bundle of
/// `GemmaForCausalLM`: built strictly from the bundle's weights, run traced, its
/// logits, every module's output and every parameter's gradient (the tied head's
/// against the embedding's) compared. Returns the report and the module-by-module
/// trace comparison.
pub fn parity(
    bundle: &Bundle,
    config: &GemmaConfig,
    layer: &TransformerBlockConfig,
) -> CheckResult<(Report, TraceReport)> {
    let mut run = Parity::new(bundle)?;
    // A tensor the port does not read, or reads and the bundle lacks, is an error.
    let weights = WeightMap::new()
        .ignore(r"^lm_head\.weight$")
        .apply(run.params().clone(), bundle.origin())?;
    let model = weights.build(DType::F32, &Device::Cpu, |vb| Gemma::new(config, layer, vb))?;
    let ids = run.input("0")?;
    let (logits, trace) = run.traced(Unmatched::NONE, || model.forward(&ids))?;
    run.tie("lm_head.weight", "model.embed_tokens.weight")?;
    run.check_outputs_and_gradients(&[("logits", &logits)])?;
    Ok((run.finish(), trace))
}

/// The parity case of the port, as `replica check` runs it (`src/bin/gemma-check.rs`).
pub fn case() -> Case {
    Case {
        name: "gemma_port",
        reference: "transformers.GemmaForCausalLM",
        paper: Some("2403.08295"),
        fixture: "gemma",
        run: |bundle| {
            let config: GemmaConfig = bundle.config()?;
            Ok(parity(bundle, &config, &config.layer())?.0)
        },
    }
}
