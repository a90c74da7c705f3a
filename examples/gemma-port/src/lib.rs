//! HF `GemmaForCausalLM` (Gemma Team, arXiv 2403.08295) ported on replica's blocks.
//!
//! Gemma is the LLaMA decoder (`replica::models::decoder`: embedding, pre-norm
//! layers, final norm, LM head, as HF lays them out and records them) with choices
//! of its own, each a block option: RMSNorms that scale by `1 + weight` in f32 and
//! round after the scale (`NormKind::GemmaRmsNorm`), token embeddings scaled by
//! `sqrt(hidden_size)` (`EmbeddingConfig::scale`) whose padding row gets no
//! gradient, the tanh GELU in the gated MLP, a head size decoupled from
//! `hidden_size / num_attention_heads`, and the LM head tied to the embedding.

use replica::blocks::attention::{AttentionConfig, AttentionNames};
use replica::blocks::{
    Activation, BlockNames, EmbeddingConfig, FeedForwardConfig, GluMlpConfig, NormKind, ResidualLayout, RmsNormConfig,
    RopeStyle, TransformerBlockConfig,
};
use replica::check::{
    Bundle, Case, ConfigCheck, Footprint, Parity, Report, Result, TraceReport, Unmatched, WeightMap, Workload,
};
use replica::models::decoder::{rope_theta, CausalDecoder, DecoderSpec, RopeParameters};
use replica::prelude::{DType, Device};
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

/// What `bundle.config()` checks before anything is built from a config.
impl ConfigCheck for GemmaConfig {
    /// Refuses what the port does not implement, so that it is never ignored.
    fn validate(&self) -> std::result::Result<(), String> {
        rope_theta(None, &None, &self.rope_parameters)?; // unscaled RoPE only
        match self {
            c if c.model_type != "gemma" => Err(format!("model_type `{}` is not gemma", c.model_type)),
            c if c.use_bidirectional_attention == Some(true) => Err("only causal attention".into()),
            c if !c.tie_word_embeddings => Err("only a tied LM head".into()),
            c => c.spec().block.validate(),
        }
    }

    /// The memory it needs, checked against the budget before anything is built.
    fn footprint(&self, work: &Workload) -> Footprint {
        self.spec().footprint(work)
    }
}

impl GemmaConfig {
    /// `GemmaForCausalLM`, under HF's module paths (`model.layers.0.self_attn.q_proj`).
    pub fn spec(&self) -> DecoderSpec {
        let attention = AttentionConfig {
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
        };
        let mlp = GluMlpConfig::new(self.hidden_size, self.intermediate_size, self.hidden_act);
        DecoderSpec {
            family: "Gemma",
            embedding: EmbeddingConfig {
                padding_idx: self.pad_token_id,
                scale: Some((self.hidden_size as f64).sqrt()),
                ..EmbeddingConfig::new(self.vocab_size, self.hidden_size)
            },
            block: TransformerBlockConfig {
                dim: self.hidden_size,
                layout: ResidualLayout::PreNorm,
                norm: NormKind::GemmaRmsNorm,
                norm_eps: self.rms_norm_eps,
                attention,
                feed_forward: FeedForwardConfig::Glu(mlp),
                layer_scale: None,
                drop_path: 0.0,
                names: BlockNames::llama(),
            },
            layers: self.num_hidden_layers,
            final_norm: RmsNormConfig::gemma(self.hidden_size, self.rms_norm_eps),
            tie_word_embeddings: true,
            max_positions: self.max_position_embeddings,
            sliding: None,
            final_logit_softcap: None,
        }
    }
}

/// The port built from `spec` against a reference bundle of `GemmaForCausalLM`:
/// built strictly from the bundle's weights, run traced, its logits, every
/// module's output and every parameter's gradient (the tied head's against the
/// embedding's) compared. Returns the report and the module-by-module comparison.
pub fn parity(bundle: &Bundle, spec: &DecoderSpec) -> Result<(Report, TraceReport)> {
    let mut run = Parity::new(bundle)?;
    // A tensor the port does not read, or reads and the bundle lacks, is an error.
    let weights = WeightMap::new().ignore(r"^lm_head\.weight$");
    let weights = weights.apply(run.params().clone(), bundle.origin())?;
    let model = weights.build(DType::F32, &Device::Cpu, |vb| CausalDecoder::new(spec, vb))?;
    let ids = run.input("0")?;
    let (logits, trace) = run.traced(Unmatched::NONE, || model.logits_t(&ids, None, false))?;
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
        run: |bundle| Ok(parity(bundle, &bundle.config::<GemmaConfig>()?.spec())?.0),
    }
}
