//! ALiBi, attention with linear biases: Press, Smith & Lewis, "Train Short, Test
//! Long", arXiv 2108.12409.
//!
//! No position embedding at all: each head `h` adds `-m_h * (i - j)` to the score
//! of query `i` and key `j`, a penalty growing linearly with distance. The slopes
//! `m_h` are a geometric sequence fixed by the head count, computed exactly as the
//! paper's reference `get_slopes` (including its rule for head counts that are
//! not a power of two).
//!
//! Reference implementations (the paper's fairseq code, HF BLOOM's
//! `build_alibi_tensor`) add `m_h * j` instead, which differs from `-m_h * (i - j)`
//! by `m_h * i`, a constant along each row that softmax cancels: the attention
//! probabilities are the same. The relative form used here is also unaffected by
//! left padding and by the cache offset.

use candle_core::{DType, Device, Result, Tensor};
use replica_check::config_check::positive;
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::ops::{mask, AlibiBias, Causal};

/// ALiBi settings; the head count is read from a HF `config.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlibiConfig {
    /// Attention heads, one slope each; HF `num_attention_heads` (also `n_head`, `num_heads`).
    #[serde(alias = "num_attention_heads", alias = "n_head", alias = "num_heads")]
    pub heads: usize,
}

impl AlibiConfig {
    /// ALiBi for `heads` heads.
    pub fn new(heads: usize) -> Self {
        Self { heads }
    }
}

impl ConfigCheck for AlibiConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("heads", self.heads)
    }

    /// The slopes (computed in f64, up to twice the heads), and a bias per head for
    /// every query and key.
    fn footprint(&self, work: &Workload) -> Footprint {
        let heads = Size::field("heads", self.heads);
        Footprint {
            params: heads.clone() * 32,
            activations: work.bytes(heads * work.len() * work.len()),
        }
    }
}

/// The paper's `get_slopes(n)`, in f64.
///
/// For a power of two `n`, `m_h = start^(h+1)` with `start = 2^(-8/n)`. Otherwise
/// the slopes of the closest smaller power of two `p`, followed by every other
/// slope of `2p`, up to `n` in all.
pub fn alibi_slopes(heads: usize) -> Vec<f64> {
    fn power_of_2(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
        (0..n).map(|i| start * start.powf(i as f64)).collect()
    }
    if heads == 0 {
        return Vec::new();
    }
    if heads.is_power_of_two() {
        return power_of_2(heads);
    }
    let closest = 1usize << heads.ilog2();
    let mut slopes = power_of_2(closest);
    slopes.extend(alibi_slopes(2 * closest).into_iter().step_by(2).take(heads - closest));
    slopes
}

/// The per-head slopes, ready to make attention biases.
#[derive(Clone, Debug)]
pub struct Alibi {
    /// `[heads]`, f32.
    slopes: Tensor,
    /// The same slopes as numbers, as the op layer takes them.
    values: Vec<f32>,
}

impl Alibi {
    /// The slopes of [`alibi_slopes`] for `config.heads` heads, on `device`; fails on zero heads.
    pub fn new(config: &AlibiConfig, device: &Device) -> Result<Self> {
        crate::admit("alibi", config)?;
        let values: Vec<f32> = alibi_slopes(config.heads).into_iter().map(|s| s as f32).collect();
        Ok(Self {
            slopes: Tensor::from_slice(&values, config.heads, device)?,
            values,
        })
    }

    /// The number of heads (and slopes).
    pub fn heads(&self) -> usize {
        self.values.len()
    }

    /// The slopes `m_h`, `[heads]`, f32.
    pub fn slopes(&self) -> &Tensor {
        &self.slopes
    }

    /// The additive bias `[1, heads, q_len, k_len]`: `-m_h * (offset + i - j)` for
    /// query `i` (at position `offset + i`) and key `j`. Future keys get a positive
    /// bias; a causal mask removes them. Computed in f32, returned in `dtype`.
    pub fn bias(&self, q_len: usize, k_len: usize, offset: usize, dtype: DType) -> Result<Tensor> {
        let at = Causal::Offset(offset as isize);
        mask::alibi_bias(&self.values, q_len, k_len, at, dtype, self.slopes.device())
    }

    /// The biases of queries whose first one sits at position `offset`, as the
    /// attention op takes them.
    pub(crate) fn at(&self, offset: usize) -> AlibiBias<'_> {
        AlibiBias {
            slopes: &self.values,
            at: Causal::Offset(offset as isize),
        }
    }
}
