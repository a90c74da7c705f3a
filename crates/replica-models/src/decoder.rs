//! The decoder-only language model of LLaMA (arXiv 2302.13971) and the families
//! built like it (Gemma, arXiv 2403.08295, ...): a token embedding, pre-norm
//! decoder layers with rotary attention and a gated MLP, a final RMSNorm and an LM
//! head, as HF's `*ForCausalLM` lays them out (`model.embed_tokens`,
//! `model.layers.N`, `model.norm`, `lm_head`). A model file reads its reference's
//! config and implements [`DecoderConfig`] for it, whose [`DecoderSpec`] holds what
//! differs between the families (the norm, the embedding's scale, the activation,
//! the attention's options) as data; the model is [`DecoderLm`] of that config.

use std::fmt;

use candle_core::{Device, ModuleT, Tensor};
use candle_nn::VarBuilder;
use replica_blocks::kv_cache::KvCache;
use replica_blocks::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig, TransformerBlock};
use replica_blocks::{RopeScaling, TransformerBlockConfig};
use replica_check::{ConfigCheck, Footprint, Size, WeightMap, Workload};
use serde_json::Value;

use crate::generation::{decoder_positions, CausalLm};
use crate::{Architecture, Family, ModelConfig, Preset};

/// What a decoder is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderSpec {
    /// The family's name, in messages (`LLaMA`).
    pub family: &'static str,
    /// The token embedding (`model.embed_tokens`).
    pub embedding: EmbeddingConfig,
    /// Every decoder layer (`model.layers.N`).
    pub block: TransformerBlockConfig,
    /// The number of decoder layers.
    pub layers: usize,
    /// The norm after the last layer (`model.norm`).
    pub final_norm: RmsNormConfig,
    /// The LM head reads the token embedding's weight (HF `tie_word_embeddings`).
    pub tie_word_embeddings: bool,
    /// The longest sequence the rotary tables cover.
    pub max_positions: usize,
    /// The layers whose attention slides (Mistral, arXiv 2310.06825; Gemma 2's
    /// local layers), and their window; `None`: every layer attends to every
    /// earlier token.
    pub sliding: Option<SlidingWindow>,
    /// Gemma 2's final-logit soft-capping: the logits become `cap * tanh(logits / cap)`.
    pub final_logit_softcap: Option<f64>,
}

/// The sliding-window attention of a decoder's layers: each query of a sliding
/// layer sees itself and the `window - 1` tokens before it (HF `sliding_window`).
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// The window, in tokens.
    pub window: usize,
    /// Which layers slide.
    pub layers: SlidingLayers,
}

/// Which layers of a decoder attend through the sliding window.
#[derive(Clone, Debug, PartialEq)]
pub enum SlidingLayers {
    /// Every layer (Mistral).
    All,
    /// The layers from this index on (Qwen2's `max_window_layers`).
    From(usize),
    /// All but every n-th: layer `i` attends fully when `(i + 1) % n == 0` (Gemma 2's
    /// alternation is `n = 2`: local, global, local, ...).
    AllButEvery(usize),
    /// Per layer, as a config's `layer_types` lists them (`true`: `sliding_attention`).
    Listed(Vec<bool>),
}

impl SlidingWindow {
    /// Reads HF's `layer_types` (one `full_attention` or `sliding_attention` per
    /// layer): `None` when no layer slides. Refuses another layer type, a list of
    /// another length than the `layers`, and a sliding layer without a `window`.
    pub fn from_layer_types(
        types: &[String],
        layers: usize,
        window: Option<usize>,
    ) -> std::result::Result<Option<Self>, String> {
        if types.len() != layers {
            return Err(format!(
                "layer_types has {} entries, expected one per layer (num_hidden_layers {layers})",
                types.len()
            ));
        }
        let mut sliding = Vec::with_capacity(types.len());
        for (i, kind) in types.iter().enumerate() {
            sliding.push(match kind.as_str() {
                "full_attention" => false,
                "sliding_attention" => true,
                _ => {
                    return Err(format!(
                        "layer_types[{i}] is `{kind}`; expected `full_attention` or `sliding_attention`"
                    ))
                }
            });
        }
        if !sliding.contains(&true) {
            return Ok(None);
        }
        match window {
            Some(0) => Err("sliding_window must be positive, got 0".into()),
            Some(window) => Ok(Some(Self {
                window,
                layers: SlidingLayers::Listed(sliding),
            })),
            None => Err("layer_types has `sliding_attention` layers but sliding_window is null".into()),
        }
    }

    /// Whether layer `i` slides.
    pub fn slides(&self, i: usize) -> bool {
        match &self.layers {
            SlidingLayers::All => true,
            SlidingLayers::From(first) => i >= *first,
            SlidingLayers::AllButEvery(n) => !(i + 1).is_multiple_of(*n.max(&1)),
            SlidingLayers::Listed(sliding) => sliding.get(i).copied().unwrap_or(false),
        }
    }
}

impl DecoderSpec {
    /// Layer `i`'s configuration: [`Self::block`], with the sliding window on the
    /// layers that slide.
    pub fn layer(&self, i: usize) -> TransformerBlockConfig {
        let mut block = self.block.clone();
        if let Some(sliding) = self.sliding.as_ref().filter(|s| s.slides(i)) {
            block.attention.window = Some(sliding.window);
        }
        block
    }

    /// The memory the decoder needs on token ids `work` describes (under HF's
    /// field names, for the budget's messages): the embedding, an untied head and
    /// the final norm; per token the logits and their gradient; every layer.
    pub fn footprint(&self, work: &Workload) -> Footprint {
        let hidden = work.as_tokens(self.embedding.dim);
        let dim = Size::field("hidden_size", self.embedding.dim);
        let vocab = Size::field("vocab_size", self.embedding.vocab);
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        let own = Footprint {
            params: hidden.bytes(vocab.clone() * dim.clone() * heads + dim.clone()),
            activations: hidden.bytes(hidden.rows() * (vocab * 2 + dim * 4)),
        };
        let layers = Size::field("num_hidden_layers", self.layers);
        own + self.block.footprint(&hidden).times(layers)
    }
}

/// A decoder-only language model built from a [`DecoderSpec`].
#[derive(Clone, Debug)]
pub struct CausalDecoder {
    embed_tokens: Embedding,
    layers: Vec<TransformerBlock>,
    norm: RmsNorm,
    lm_head: Linear,
    spec: DecoderSpec,
    device: Device,
}

impl CausalDecoder {
    /// Builds the decoder under `vb`, the checkpoint's root (`model.*`, `lm_head.weight`).
    pub fn new(spec: &DecoderSpec, vb: VarBuilder) -> candle_core::Result<Self> {
        let m = vb.pp("model");
        let embed_tokens = Embedding::new(&spec.embedding, m.pp("embed_tokens"))?;
        let layers = (0..spec.layers)
            .map(|i| TransformerBlock::new(&spec.layer(i), m.pp("layers").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = RmsNorm::new(&spec.final_norm, m.pp("norm"))?;
        let lm_head = if spec.tie_word_embeddings {
            Linear::from_weights(embed_tokens.weight().clone(), None, vb.pp("lm_head").prefix())
        } else {
            Linear::new(
                &LinearConfig::new(spec.embedding.dim, spec.embedding.vocab).no_bias(),
                vb.pp("lm_head"),
            )?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            spec: spec.clone(),
            device: vb.device().clone(),
        })
    }

    /// Logits `[batch, seq, vocab]` of token ids `[batch, seq]`, continuing from
    /// what `cache` holds, in training (`train`) or inference.
    pub fn logits_t(&self, ids: &Tensor, cache: Option<&mut [KvCache]>, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.logits_routed_t(ids, cache, train)?.0)
    }

    /// The LM head on the final hidden states, soft-capped where the spec says so.
    fn head(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let logits = self.lm_head.forward(hidden)?;
        match self.spec.final_logit_softcap {
            // HF divides, takes the tanh and multiplies in the logits' dtype.
            Some(cap) => {
                let cap = Tensor::new(cap, logits.device())?.to_dtype(logits.dtype())?;
                logits.broadcast_div(&cap)?.tanh()?.broadcast_mul(&cap)
            }
            None => Ok(logits),
        }
    }

    /// The final hidden states `[batch, seq, hidden]` (after `model.norm`).
    pub fn hidden_t(&self, ids: &Tensor, cache: Option<&mut [KvCache]>, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.hidden_routed_t(ids, cache, train)?.0)
    }

    /// [`hidden_t`](Self::hidden_t), and the router logits `[tokens, num_experts]` of
    /// every layer whose feed-forward is a mixture of experts, first layer first.
    pub fn hidden_routed_t(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut [KvCache]>,
        train: bool,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let limit = self.spec.max_positions;
        let rope = self.layers.first().and_then(|l| l.attention().rope());
        let table = if rope.is_some_and(|r| matches!(r.scaling(), Some(RopeScaling::Dynamic { .. }))) {
            format!("{limit} positions (max_position_embeddings times the dynamic RoPE factor)")
        } else {
            format!("max_position_embeddings {limit} (the rotary tables end there)")
        };
        let (seq, offset) = decoder_positions(self.spec.family, ids, &cache, self.layers.len(), limit, &table)?;
        let mut x = self.embed_tokens.forward(ids)?;
        if let Some(rope) = rope {
            rope.tap_hf_tables("model.rotary_emb", seq, offset, x.dtype())?;
        }
        let mut router_logits = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let (y, logits) = layer.forward_routed_t(&x, None, cache.as_mut().map(|c| &mut c[i]), train)?;
            x = y;
            router_logits.extend(logits);
        }
        let x = self.norm.forward(&x)?;
        replica_check::tap("model:last_hidden_state", &x);
        Ok((x, router_logits))
    }

    /// [`logits_t`](Self::logits_t), and every mixture-of-experts layer's router logits.
    pub fn logits_routed_t(
        &self,
        ids: &Tensor,
        cache: Option<&mut [KvCache]>,
        train: bool,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let (hidden, router_logits) = self.hidden_routed_t(ids, cache, train)?;
        Ok((self.head(&hidden)?, router_logits))
    }
}

impl CausalLm for CausalDecoder {
    fn forward_lm(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        self.logits_t(ids, cache, false)
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn max_positions(&self) -> usize {
        self.spec.max_positions
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// One cache per layer; a sliding layer's rolls, keeping only its window.
    fn new_cache(&self) -> Vec<KvCache> {
        let window = |l: &TransformerBlock| l.attention().window();
        self.layers
            .iter()
            .map(|l| window(l).map_or_else(KvCache::new, KvCache::with_window))
            .collect()
    }
}

/// The config of a decoder family laid out as HF's LLaMA (LLaMA, Gemma, Qwen2,
/// Qwen3): who the model is, its presets, and the decoder it describes.
/// [`DecoderLm`] of it is the model (`Llama = DecoderLm<LlamaConfig>`), so a new
/// family of this layout is a config type and this impl.
pub trait DecoderConfig: ModelConfig + Clone + fmt::Debug + Send + Sync + 'static {
    /// Who the model is.
    const FAMILY: Family;
    /// Its named configurations.
    const PRESETS: &'static [Preset] = &[];
    /// The decoder the config describes (called once the config is validated).
    fn decoder_spec(&self) -> DecoderSpec;

    /// When generation rebuilds its cache ([`CausalLm::cache_rebuilt_past`]); never by default.
    fn cache_rebuilt_past(&self) -> Option<usize> {
        None
    }
}

/// A decoder-only language model of a [`DecoderConfig`], with its LM head
/// (`LlamaForCausalLM`, `GemmaForCausalLM`, ...).
#[derive(Clone, Debug)]
pub struct DecoderLm<C> {
    decoder: CausalDecoder,
    config: C,
}

impl<C: DecoderConfig> Architecture for DecoderLm<C> {
    type Config = C;
    const FAMILY: Family = C::FAMILY;
    const PRESETS: &'static [Preset] = C::PRESETS;

    /// Builds the model under `vb` (the checkpoint's root: `model.*`, `lm_head.weight`).
    fn new(config: &C, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::check(config)?;
        Ok(Self {
            decoder: CausalDecoder::new(&config.decoder_spec(), vb)?,
            config: config.clone(),
        })
    }

    /// HF's checkpoints of this layout need no renaming; a tied head's
    /// `lm_head.weight` copy and the old `rotary_emb.inv_freq` buffers are dropped.
    fn weight_map(config: &C) -> WeightMap {
        let map = WeightMap::new().ignore(r"\.rotary_emb\.inv_freq$");
        if config.decoder_spec().tie_word_embeddings {
            map.ignore(r"^lm_head\.weight$")
        } else {
            map
        }
    }
}

impl<C> DecoderLm<C> {
    /// The configuration the model was built with.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// The final hidden states `[batch, seq, hidden_size]` (after `model.norm`), in
    /// inference, continuing from what `cache` holds (one [`KvCache`] per layer).
    pub fn forward_hidden(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        self.decoder.hidden_t(ids, cache, false)
    }

    /// Logits `[batch, seq, vocab_size]`, in inference (`forward_t(ids, true)` trains).
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        self.decoder.logits_t(ids, cache, false)
    }

    /// Logits and the router logits `[tokens, num_experts]` of every
    /// mixture-of-experts layer (none for a dense decoder), in training or inference.
    pub fn forward_routed_t(
        &self,
        ids: &Tensor,
        cache: Option<&mut [KvCache]>,
        train: bool,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        self.decoder.logits_routed_t(ids, cache, train)
    }
}

impl<C: DecoderConfig> ModuleT for DecoderLm<C> {
    /// Logits `[batch, seq, vocab_size]` for token ids `[batch, seq]`; `train` turns
    /// attention dropout on.
    fn forward_t(&self, ids: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.decoder.logits_t(ids, None, train)
    }
}

impl<C: DecoderConfig> CausalLm for DecoderLm<C> {
    fn forward_lm(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        self.decoder.forward_lm(ids, cache)
    }

    fn num_layers(&self) -> usize {
        self.decoder.num_layers()
    }

    fn max_positions(&self) -> usize {
        self.decoder.max_positions()
    }

    fn device(&self) -> &Device {
        self.decoder.device()
    }

    fn new_cache(&self) -> Vec<KvCache> {
        self.decoder.new_cache()
    }

    fn cache_rebuilt_past(&self) -> Option<usize> {
        self.config.cache_rebuilt_past()
    }
}

/// HF transformers v5 `rope_parameters` (v4 configs carry `rope_theta` and
/// `rope_scaling` instead): the blocks' type, every key HF's rope types read.
pub use replica_blocks::RopeParameters;

/// The RoPE parameters of a HF decoder config as transformers v5 merges them
/// (`convert_rope_params_to_dict`, `standardize_rope_params`): v4's `rope_scaling`
/// when it is set, else `rope_parameters`, with `rope_theta` from the top level
/// (else 10000) when they lack it. Refuses an unknown `rope_type`, a missing or
/// unused key and a base that is not a positive number.
pub fn rope_parameters(
    rope_theta: Option<f64>,
    rope_scaling: &Option<RopeParameters>,
    rope_parameters: &Option<RopeParameters>,
    max_position_embeddings: usize,
) -> std::result::Result<RopeParameters, String> {
    let scaling = rope_scaling.clone().filter(|s| *s != RopeParameters::default());
    let field = if scaling.is_some() {
        "rope_scaling"
    } else {
        "rope_parameters"
    };
    let mut merged = scaling.or_else(|| rope_parameters.clone()).unwrap_or_default();
    merged.rope_type = Some(merged.rope_type().to_string());
    merged.kind = None;
    let theta = merged.rope_theta.or(rope_theta).unwrap_or(10_000.0);
    if !(theta.is_finite() && theta > 0.0) {
        return Err(format!("rope_theta must be a positive number, got {theta}"));
    }
    merged.rope_theta = Some(theta);
    // The messages name the field the config gave.
    merged
        .scaling(max_position_embeddings)
        .map_err(|message| message.replacen("rope_parameters.", &format!("{field}."), 1))?;
    Ok(merged)
}

/// The RoPE base a HF config asks for (`rope_parameters.rope_theta`, else v4's
/// `rope_theta`, else 10000), for a model that implements unscaled RoPE only:
/// refuses any `rope_scaling` and any `rope_type` but `default`.
pub fn rope_theta(
    rope_theta: Option<f64>,
    rope_scaling: &Option<Value>,
    rope_parameters: &Option<RopeParameters>,
) -> std::result::Result<f64, String> {
    if rope_scaling.as_ref().is_some_and(|s| !s.is_null()) {
        return Err("rope_scaling is set; this model implements only unscaled RoPE".into());
    }
    let parameters = rope_parameters.as_ref();
    if let Some(kind) = parameters.map(RopeParameters::rope_type).filter(|t| *t != "default") {
        return Err(format!(
            "rope_type `{kind}` is not implemented for this model (only `default`, unscaled RoPE)"
        ));
    }
    let theta = parameters.and_then(|p| p.rope_theta).or(rope_theta).unwrap_or(10_000.0);
    if !(theta.is_finite() && theta > 0.0) {
        return Err(format!("rope_theta must be a positive number, got {theta}"));
    }
    Ok(theta)
}
