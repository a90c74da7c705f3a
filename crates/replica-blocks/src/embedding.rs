//! Token embeddings: a lookup table `[vocab, dim]` laid out as `torch.nn.Embedding`
//! (the Transformer's input embedding, arXiv 1706.03762).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::all_positive;
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

/// `torch.nn.Embedding(num_embeddings, embedding_dim, padding_idx)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingConfig {
    /// Rows of the table: the vocabulary size (HF `vocab_size`, torch `num_embeddings`).
    #[serde(alias = "vocab_size", alias = "num_embeddings")]
    pub vocab: usize,
    /// Features per token (HF `hidden_size`, GPT-2 `n_embd`, torch `embedding_dim`).
    #[serde(alias = "hidden_size", alias = "n_embd", alias = "embedding_dim")]
    pub dim: usize,
    /// Torch's `padding_idx`: that row's output is as any other's, but no gradient
    /// flows to it.
    #[serde(default)]
    pub padding_idx: Option<usize>,
    /// A factor on every output, held as an f32 and rounded to the table's dtype
    /// before the product, as HF Gemma's `embed_scale` (`sqrt(hidden_size)`, arXiv
    /// 2403.08295); `None` is no scaling.
    #[serde(default)]
    pub scale: Option<f64>,
}

impl EmbeddingConfig {
    /// A table of `vocab` rows of `dim` features, without a padding row.
    pub fn new(vocab: usize, dim: usize) -> Self {
        Self {
            vocab,
            dim,
            padding_idx: None,
            scale: None,
        }
    }
}

impl ConfigCheck for EmbeddingConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[("vocab", self.vocab), ("dim", self.dim)])?;
        if let Some(pad) = self.padding_idx.filter(|&pad| pad >= self.vocab) {
            return Err(format!(
                "padding_idx {pad} is out of range for a table of {} rows",
                self.vocab
            ));
        }
        Ok(())
    }

    /// The table, and per id its row (the ids are also checked as f64).
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        Footprint {
            params: work.bytes(Size::field("vocab", self.vocab) * dim.clone()),
            activations: work.bytes(work.elements() * (dim + Size::count(2))),
        }
    }
}

/// Maps integer ids of any shape to vectors: `[...] -> [..., dim]`.
#[derive(Clone, Debug)]
pub struct Embedding {
    weight: Tensor,
    padding_idx: Option<usize>,
    scale: Option<f64>,
    path: String,
}

impl Embedding {
    /// Reads `weight` `[vocab, dim]` at `vb`'s path (a fresh table is drawn from N(0, 1), as
    /// torch's). Fails on a `padding_idx` outside the table.
    pub fn new(config: &EmbeddingConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("embedding `{}`", vb.prefix()), config)?;
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 };
        let weight = vb.get_with_hints((config.vocab, config.dim), "weight", init)?;
        Ok(Self {
            weight,
            padding_idx: config.padding_idx,
            scale: config.scale,
            path: vb.prefix(),
        })
    }

    /// A table from an existing `weight` `[vocab, dim]` (a tied or shared one), recorded in traces
    /// under `path` (`""`: not recorded), without a padding row.
    pub fn from_weight(weight: Tensor, path: impl Into<String>) -> Self {
        Self {
            weight,
            padding_idx: None,
            scale: None,
            path: path.into(),
        }
    }

    /// The table, `[vocab, dim]` (for tied output projections).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The rows of `ids` (integers of any shape), times the scale if any: `[...] -> [..., dim]`. Fails on float ids and
    /// on ids outside `0..vocab`.
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
        let flat = ids.flatten_all()?;
        let mut y = self.weight.index_select(&flat, 0)?;
        if let Some(pad) = self.padding_idx {
            // The same values, with the padding rows' gradient cut: y * keep + detached y * (1 - keep).
            let keep = flat.ne(pad as f64)?.to_dtype(y.dtype())?.unsqueeze(1)?;
            y = (y.broadcast_mul(&keep)? + y.detach().broadcast_mul(&keep.affine(-1.0, 1.0)?)?)?;
        }
        if let Some(scale) = self.scale {
            let scale = Tensor::new(scale as f32, y.device())?.to_dtype(y.dtype())?;
            y = y.broadcast_mul(&scale)?;
        }
        let y = y.reshape(shape)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

impl candle_core::Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Embedding::forward(self, ids)
    }
}
