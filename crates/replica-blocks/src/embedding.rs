//! Token embeddings: a lookup table `[vocab, dim]` laid out as `torch.nn.Embedding`
//! (the Transformer's input embedding, arXiv 1706.03762).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// `torch.nn.Embedding(num_embeddings, embedding_dim)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingConfig {
    #[serde(alias = "vocab_size", alias = "num_embeddings")]
    pub vocab: usize,
    #[serde(alias = "hidden_size", alias = "n_embd", alias = "embedding_dim")]
    pub dim: usize,
}

/// Maps integer ids of any shape to vectors: `[...] -> [..., dim]`.
#[derive(Clone, Debug)]
pub struct Embedding {
    weight: Tensor,
    path: String,
}

impl Embedding {
    pub fn new(config: &EmbeddingConfig, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 };
        let weight = vb.get_with_hints((config.vocab, config.dim), "weight", init)?;
        Ok(Self {
            weight,
            path: vb.prefix(),
        })
    }

    pub fn from_weight(weight: Tensor, path: impl Into<String>) -> Self {
        Self {
            weight,
            path: path.into(),
        }
    }

    /// The table, `[vocab, dim]` (for tied output projections).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        if ids.dtype().is_float() {
            candle_core::bail!("embedding `{}`: ids must be integers, got {:?}", self.path, ids.dtype())
        }
        let vocab = self.weight.dim(0)?;
        if ids.elem_count() > 0 {
            let flat = ids.flatten_all()?.to_dtype(DType::F64)?;
            let (low, high) = (flat.min(0)?.to_scalar::<f64>()?, flat.max(0)?.to_scalar::<f64>()?);
            if low < 0.0 || high >= vocab as f64 {
                let bad = if low < 0.0 { low } else { high };
                candle_core::bail!(
                    "embedding `{}`: token id {bad} is out of range for a table of {vocab} rows",
                    self.path
                )
            }
        }
        let mut shape = ids.dims().to_vec();
        shape.push(self.weight.dim(1)?);
        let y = self.weight.index_select(&ids.flatten_all()?, 0)?.reshape(shape)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

impl candle_core::Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Embedding::forward(self, ids)
    }
}
