//! Learned absolute position embeddings: a trained vector per position, added to
//! the token embeddings (Gehring et al., "Convolutional Sequence to Sequence
//! Learning", arXiv 1705.03122; GPT-2's `wpe`, BERT's `position_embeddings`).
//!
//! The table is `[max_positions, dim]`, laid out as `torch.nn.Embedding`, so it
//! loads from those checkpoints as it is. Rows are sliced with differentiable
//! ops, so the table trains.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::all_positive;
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

/// A learned position table; aliases read GPT-2 / BERT / OPT `config.json` fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedPositionConfig {
    /// Rows in the table: the longest sequence (plus cache offset) it can embed.
    #[serde(alias = "max_position_embeddings", alias = "n_positions", alias = "num_positions")]
    pub max_positions: usize,
    /// Features per position (HF `hidden_size`, GPT-2 `n_embd`, OPT `d_model`).
    #[serde(alias = "hidden_size", alias = "n_embd", alias = "embedding_dim", alias = "d_model")]
    pub dim: usize,
    /// Rows skipped before position 0: OPT's `OPTLearnedPositionalEmbedding` and
    /// fairseq's tables start at row 2 (`padding_idx + 1`); GPT-2 and BERT at 0.
    #[serde(default)]
    pub row_offset: usize,
}

impl LearnedPositionConfig {
    /// A table of `max_positions` rows of `dim` features, starting at row 0 (GPT-2, BERT).
    pub fn new(max_positions: usize, dim: usize) -> Self {
        Self {
            max_positions,
            dim,
            row_offset: 0,
        }
    }
}

impl ConfigCheck for LearnedPositionConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[("max_positions", self.max_positions), ("dim", self.dim)])
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        Footprint {
            params: work.bytes(Size::field("max_positions", self.max_positions) * dim.clone()),
            activations: work.bytes(work.len() * dim + work.elements()),
        }
    }
}

/// A `[max_positions, dim]` table of trained position vectors.
#[derive(Clone, Debug)]
pub struct LearnedPositionEmbedding {
    weight: Tensor,
    row_offset: usize,
    path: String,
}

impl LearnedPositionEmbedding {
    /// Reads `weight` `[max_positions, dim]` at `vb`'s path (a fresh table is drawn
    /// from N(0, 0.02²)). Fails on an empty table.
    pub fn new(config: &LearnedPositionConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("learned position embedding `{}`", vb.prefix()), config)?;
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let weight = vb.get_with_hints((config.max_positions, config.dim), "weight", init)?;
        Ok(Self {
            weight,
            row_offset: config.row_offset,
            path: vb.prefix(),
        })
    }

    /// The table, `[max_positions, dim]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// How many positions the table covers (after the row offset).
    pub fn max_positions(&self) -> usize {
        self.weight.dims()[0].saturating_sub(self.row_offset)
    }

    /// The embeddings of positions `offset .. offset + seq_len`, `[1, seq_len, dim]`,
    /// to add to token embeddings `[batch, seq_len, dim]`. `offset` is the number of
    /// tokens already in a KV cache.
    pub fn forward(&self, seq_len: usize, offset: usize) -> Result<Tensor> {
        let available = self.max_positions();
        if offset.checked_add(seq_len).is_none_or(|end| end > available) {
            candle_core::bail!(
                "learned position embedding `{}`: positions {offset}..{} do not fit a table of {available} positions{}",
                self.path,
                offset as u128 + seq_len as u128,
                if offset > 0 {
                    format!(" (sequence of {seq_len} after {offset} cached tokens)")
                } else {
                    String::new()
                }
            )
        }
        let y = self.weight.narrow(0, self.row_offset + offset, seq_len)?.unsqueeze(0)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }

    /// `x + P`, for `x` shaped `[batch, seq, dim]` whose first token sits at `offset`.
    pub fn add_to(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, seq, dim) = x.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "learned position embedding `{}`: input must be [batch, seq, dim], got shape {:?}",
                self.path,
                x.dims()
            ))
        })?;
        let table_dim = self.weight.dims()[1];
        if dim != table_dim {
            candle_core::bail!(
                "learned position embedding `{}`: input has {dim} features, the table {table_dim}",
                self.path
            )
        }
        x.broadcast_add(&self.forward(seq, offset)?.to_dtype(x.dtype())?)
    }
}
