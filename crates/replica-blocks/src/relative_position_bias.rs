//! T5's bucketed relative position bias: Raffel et al., "Exploring the Limits of
//! Transfer Learning with a Unified Text-to-Text Transformer", arXiv 1910.10683
//! (section 2.1). Reference: HF `transformers.models.t5.modeling_t5.T5Attention`
//! (`_relative_position_bucket`, `compute_bias`).
//!
//! Instead of position embeddings, each attention head adds a learned scalar to the
//! score of query `i` and key `j`, looked up by the bucket of `j - i`: the first half
//! of the buckets are exact offsets, the rest grow logarithmically up to
//! `max_distance`, beyond which every offset shares the last bucket. An encoder
//! (`causal: false`) gives keys before and after the query buckets of their own; a
//! decoder's buckets only count keys before it (later keys all fall in bucket 0).
//!
//! T5 computes the bias once, in its first layer (`has_relative_attention_bias`),
//! and every later layer adds the same tensor: one [`RelativePositionBias`] serves a
//! whole stack. The attention that adds it does not scale its scores by
//! `1 / sqrt(d)` (T5's initialisation folds that scale into the query projection).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::all_positive;
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::attention::{AttentionConfig, AttentionNames};
use crate::embedding::{Embedding, EmbeddingConfig};

fn default_num_buckets() -> usize {
    32
}

fn default_max_distance() -> usize {
    128
}

/// The relative position bias of a T5 attention layer; the aliases read a HF
/// `T5Config` (`relative_attention_num_buckets`, `relative_attention_max_distance`,
/// `num_heads`, `is_decoder`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelativePositionBiasConfig {
    /// Buckets of relative positions (HF `relative_attention_num_buckets`); default 32.
    #[serde(default = "default_num_buckets", alias = "relative_attention_num_buckets")]
    pub num_buckets: usize,
    /// Offsets this far apart or further share the last bucket (HF
    /// `relative_attention_max_distance`); default 128.
    #[serde(default = "default_max_distance", alias = "relative_attention_max_distance")]
    pub max_distance: usize,
    /// Attention heads: one learned scalar per head and bucket.
    #[serde(alias = "num_heads")]
    pub heads: usize,
    /// Buckets for a decoder's self-attention, which sees no later keys (HF
    /// `is_decoder`: `bidirectional=False`); `false` is the encoder's.
    #[serde(default, alias = "is_decoder")]
    pub causal: bool,
}

impl RelativePositionBiasConfig {
    /// An encoder's bias for `heads` heads with T5's defaults: 32 buckets, max distance 128.
    pub fn new(heads: usize) -> Self {
        Self {
            num_buckets: default_num_buckets(),
            max_distance: default_max_distance(),
            heads,
            causal: false,
        }
    }

    /// The buckets of one direction: half of them for an encoder, all for a decoder.
    fn one_side(&self) -> usize {
        if self.causal {
            self.num_buckets
        } else {
            self.num_buckets / 2
        }
    }
}

impl ConfigCheck for RelativePositionBiasConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[("num_buckets", self.num_buckets), ("heads", self.heads)])?;
        // HF divides by log(max_distance / max_exact): max_exact (half of one side's
        // buckets) must be at least 1 and max_distance above it, or the buckets are NaN.
        let max_exact = self.one_side() / 2;
        if max_exact == 0 {
            let least = if self.causal { 2 } else { 4 };
            return Err(format!(
                "num_buckets must be at least {least} (half of each side's buckets are exact offsets), got {}",
                self.num_buckets
            ));
        }
        if self.max_distance <= max_exact {
            return Err(format!(
                "max_distance must be above the {max_exact} exact offsets, got {}",
                self.max_distance
            ));
        }
        if self.num_buckets > u32::MAX as usize {
            return Err(format!(
                "num_buckets must be at most {}, got {}",
                u32::MAX,
                self.num_buckets
            ));
        }
        Ok(())
    }

    /// The table, and per head a bias for every query and key.
    fn footprint(&self, work: &Workload) -> Footprint {
        let heads = Size::field("heads", self.heads);
        Footprint {
            params: work.bytes(Size::field("num_buckets", self.num_buckets) * heads.clone()),
            activations: work.bytes(work.len() * work.len() * (heads + Size::count(1)) * 2),
        }
    }
}

/// The bucket of the relative position `relative = key - query`, bit for bit as HF's
/// `T5Attention._relative_position_bucket(relative, bidirectional, num_buckets,
/// max_distance)`: the logarithmic buckets are computed in f32 and truncated, as the
/// reference does, so offsets on a bucket boundary land where the reference puts them.
/// Expects a config [`RelativePositionBiasConfig`] admits (at least one exact offset).
pub fn relative_position_bucket(relative: i64, bidirectional: bool, num_buckets: usize, max_distance: usize) -> u32 {
    let mut side = num_buckets as i64;
    let mut bucket = 0i64;
    let distance = if bidirectional {
        side /= 2;
        if relative > 0 {
            bucket += side;
        }
        relative.saturating_abs()
    } else {
        // Later keys (positive offsets) all fall in bucket 0.
        relative.min(0).saturating_neg()
    };
    let max_exact = side / 2;
    if distance < max_exact {
        return (bucket + distance) as u32;
    }
    // As the reference: f32 throughout, `max_distance / max_exact` taken in f64 and
    // its logarithm rounded to f32 when it meets the f32 tensor.
    let ratio = (max_distance as f64 / max_exact as f64).ln() as f32;
    let scaled = (distance as f32 / max_exact as f32).ln() / ratio * (side - max_exact) as f32;
    let large = (max_exact + scaled as i64).min(side - 1);
    (bucket + large) as u32
}

/// The attention T5 adds the bias to (HF `T5Attention`): `dim` features in `heads`
/// heads of `head_dim` (HF `d_model`, `num_heads`, `d_kv`), unbiased projections
/// `q`, `k`, `v`, `o`, scores not scaled (scale 1), `causal` for a decoder's
/// self-attention, `dropout` on the probabilities in training (HF `dropout_rate`).
/// The bias goes in as its additive mask.
pub fn t5_attention_config(dim: usize, heads: usize, head_dim: usize, causal: bool, dropout: f32) -> AttentionConfig {
    AttentionConfig {
        head_dim: Some(head_dim),
        scale: Some(1.0),
        causal,
        attention_dropout: dropout,
        names: Some(AttentionNames {
            q: "q".into(),
            k: "k".into(),
            v: "v".into(),
            out: "o".into(),
            ..AttentionNames::hf()
        }),
        ..AttentionConfig::new(dim, heads)
    }
}

/// T5's learned relative position bias: `relative_attention_bias`, an embedding of
/// `[num_buckets, heads]`, looked up by bucket.
#[derive(Clone, Debug)]
pub struct RelativePositionBias {
    embedding: Embedding,
    num_buckets: usize,
    max_distance: usize,
    causal: bool,
}

impl RelativePositionBias {
    /// Reads `weight` `[num_buckets, heads]` at `vb`'s path (HF's
    /// `...SelfAttention.relative_attention_bias`; fresh: N(0, 1), as torch's embedding).
    pub fn new(config: &RelativePositionBiasConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("relative_position_bias `{}`", vb.prefix()), config)?;
        let table = EmbeddingConfig::new(config.num_buckets, config.heads);
        Ok(Self {
            embedding: Embedding::new(&table, vb)?,
            num_buckets: config.num_buckets,
            max_distance: config.max_distance,
            causal: config.causal,
        })
    }

    /// The bucket of every query `i` (at position `offset + i`, after `offset` cached
    /// tokens) and key `j`: `[q_len, k_len]` u32, as HF's `compute_bias`.
    pub fn buckets(&self, q_len: usize, k_len: usize, offset: usize, device: &Device) -> Result<Tensor> {
        let cells = q_len.checked_mul(k_len).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "relative_position_bias: {q_len} queries by {k_len} keys is too many"
            ))
        })?;
        let mut buckets = Vec::with_capacity(cells);
        let position = |p: usize| i64::try_from(p).unwrap_or(i64::MAX);
        for i in 0..q_len {
            let query = position(offset.saturating_add(i));
            for j in 0..k_len {
                buckets.push(relative_position_bucket(
                    position(j).saturating_sub(query),
                    !self.causal,
                    self.num_buckets,
                    self.max_distance,
                ));
            }
        }
        Tensor::from_vec(buckets, (q_len, k_len), device)
    }

    /// The bias `[1, heads, q_len, k_len]` in the table's dtype, to add to the
    /// attention scores of every layer. The lookup `[q_len, k_len, heads]` is recorded
    /// under the table's path, as the reference's hook on the embedding records it.
    pub fn forward(&self, q_len: usize, k_len: usize, offset: usize) -> Result<Tensor> {
        let buckets = self.buckets(q_len, k_len, offset, self.embedding.weight().device())?;
        self.embedding.forward(&buckets)?.permute((2, 0, 1))?.unsqueeze(0)
    }

    /// The table's dtype.
    pub fn dtype(&self) -> DType {
        self.embedding.weight().dtype()
    }
}
