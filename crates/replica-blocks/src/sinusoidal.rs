//! Fixed sinusoidal position encodings: Vaswani et al., "Attention Is All You
//! Need", arXiv 1706.03762, section 3.5.
//!
//! `PE(pos, 2i) = sin(pos / base^(2i/d))`, `PE(pos, 2i+1) = cos(pos / base^(2i/d))`
//! with `base = 10000`. Two layouts of the same numbers are in use:
//! - [`SinusoidalLayout::Interleaved`]: sin and cos alternate, as in the paper;
//! - [`SinusoidalLayout::Concatenated`]: all sines, then all cosines (tensor2tensor,
//!   HF Marian's `MarianSinusoidalPositionalEmbedding`, XLM-style tables).
//!
//! The table is evaluated in f64 (as numpy-built reference tables are) and rounded
//! once to f32, so it has no parameters and no length limit.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{finite_positive, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

/// How sines and cosines are laid out along the feature dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinusoidalLayout {
    /// `[sin f0, cos f0, sin f1, cos f1, ...]`, the paper's.
    #[default]
    Interleaved,
    /// `[sin f0, sin f1, ..., cos f0, cos f1, ...]`; with an odd dimension the sines
    /// take the extra feature, as Marian's table does.
    Concatenated,
}

fn default_base() -> f64 {
    10_000.0
}

/// Sinusoidal encoding settings; aliases read HF / fairseq names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SinusoidalConfig {
    /// Features per position (HF `hidden_size`, `d_model`; fairseq `embedding_dim`).
    #[serde(alias = "hidden_size", alias = "d_model", alias = "embedding_dim", alias = "n_embd")]
    pub dim: usize,
    /// The base of the geometric progression of wavelengths.
    #[serde(default = "default_base", alias = "max_timescale")]
    pub base: f64,
    /// How sines and cosines are laid out; default [`SinusoidalLayout::Interleaved`].
    #[serde(default)]
    pub layout: SinusoidalLayout,
}

impl SinusoidalConfig {
    /// `dim` features with base 10000 in the paper's interleaved layout.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            base: default_base(),
            layout: SinusoidalLayout::default(),
        }
    }
}

impl ConfigCheck for SinusoidalConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        finite_positive("base", self.base)
    }

    /// No table is kept: the rows of the input's positions, added to it.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        Footprint::activations(work.bytes(work.len() * dim * 2 + work.elements()))
    }
}

/// The fixed encoding of arXiv 1706.03762: rows for any positions, on demand.
#[derive(Clone, Debug)]
pub struct SinusoidalPositionEmbedding {
    dim: usize,
    base: f64,
    layout: SinusoidalLayout,
    device: Device,
    path: String,
}

impl SinusoidalPositionEmbedding {
    /// `vb` gives the device and the module path; no tensors are loaded.
    pub fn new(config: &SinusoidalConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit("sinusoidal position embedding", config)?;
        Ok(Self {
            dim: config.dim,
            base: config.base,
            layout: config.layout,
            device: vb.device().clone(),
            path: vb.prefix(),
        })
    }

    /// Features per position.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The rows for positions `offset .. offset + seq_len`, `[seq_len, dim]`, f32.
    pub fn table(&self, seq_len: usize, offset: usize) -> Result<Tensor> {
        let d = self.dim;
        // Frequency k serves features 2k (sin) and 2k + 1 (cos).
        let sines = d.div_ceil(2);
        let end = offset.checked_add(seq_len).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "sinusoidal position embedding: positions {offset} + {seq_len} overflow"
            ))
        })?;
        let count = seq_len.checked_mul(d).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "sinusoidal position embedding: {seq_len} x {d} values overflow"
            ))
        })?;
        let mut values = Vec::with_capacity(count);
        for pos in offset..end {
            let angle = |k: usize| pos as f64 / self.base.powf((2 * k) as f64 / d as f64);
            match self.layout {
                SinusoidalLayout::Interleaved => values.extend((0..d).map(|j| {
                    let a = angle(j / 2);
                    (if j % 2 == 0 { a.sin() } else { a.cos() }) as f32
                })),
                SinusoidalLayout::Concatenated => {
                    values.extend((0..sines).map(|k| angle(k).sin() as f32));
                    values.extend((0..d - sines).map(|k| angle(k).cos() as f32));
                }
            }
        }
        Tensor::from_vec(values, (seq_len, d), &self.device)
    }

    /// The encodings of positions `offset .. offset + seq_len`, `[1, seq_len, dim]` (f32),
    /// to add to token embeddings `[batch, seq_len, dim]`.
    pub fn forward(&self, seq_len: usize, offset: usize) -> Result<Tensor> {
        let y = self.table(seq_len, offset)?.unsqueeze(0)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }

    /// `x + PE`, for `x` shaped `[batch, seq, dim]` whose first token sits at `offset`.
    pub fn add_to(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, seq, dim) = x.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "sinusoidal position embedding: input must be [batch, seq, dim], got shape {:?}",
                x.dims()
            ))
        })?;
        if dim != self.dim {
            candle_core::bail!(
                "sinusoidal position embedding: input has {dim} features, the encoding {}",
                self.dim
            )
        }
        x.broadcast_add(&self.forward(seq, offset)?.to_dtype(x.dtype())?)
    }
}
