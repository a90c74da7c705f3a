//! Rotary position embedding (RoPE): Su et al., RoFormer, arXiv 2104.09864.
//!
//! Rotates each pair of query/key features by an angle proportional to the
//! position, so attention scores depend on relative position. Two pairings are
//! in use and checkpoints are tied to one:
//! - [`RopeStyle::HalfSplit`]: feature `i` pairs with `i + d/2` (HF LLaMA's `rotate_half`, GPT-NeoX);
//! - [`RopeStyle::Interleaved`]: feature `2i` pairs with `2i + 1` (the paper, GPT-J, timm).
//!
//! With a [`RopeScaling`] (HF's `rope_parameters` of type `linear`, `dynamic`,
//! `yarn`, `llama3` or `longrope`; [`crate::rope_scaling`]) the frequencies and
//! the tables' factor are HF's for that type.
//!
//! Gradients flow to queries and keys: through the fused kernel's backward when
//! [`crate::compute`] is on kernels, else through candle ops ([`crate::ops::rope`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Result, Tensor};
use replica_check::config_check::{at_most, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

pub use crate::ops::RopeStyle;
use crate::rope_scaling::{default_inv_freq, RopeScaling};

fn default_theta() -> f64 {
    10_000.0
}

fn default_fraction() -> f64 {
    1.0
}

fn default_max_positions() -> usize {
    4096
}

/// Rotary embedding settings; field aliases read a HF `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    /// Features per attention head.
    pub head_dim: usize,
    /// The base of the geometric progression of frequencies.
    #[serde(default = "default_theta", alias = "rope_theta", alias = "rotary_emb_base")]
    pub theta: f64,
    /// The fraction of each head's features that rotate (the rest pass through).
    #[serde(default = "default_fraction", alias = "partial_rotary_factor", alias = "rotary_pct")]
    pub fraction: f64,
    /// Which features pair up to rotate; default [`RopeStyle::HalfSplit`].
    #[serde(default)]
    pub style: RopeStyle,
    /// The longest sequence (plus cache offset) the tables cover.
    #[serde(default = "default_max_positions", alias = "max_position_embeddings")]
    pub max_positions: usize,
    /// How many features rotate, when given as a count (GPT-J's `rotary_dim`)
    /// rather than a fraction; overrides `fraction`.
    #[serde(default, alias = "rotary_dim")]
    pub rotary_features: Option<usize>,
    /// HF's RoPE scaling (`rope_parameters` of a type other than `default`); `None` is plain RoPE.
    #[serde(default)]
    pub scaling: Option<RopeScaling>,
}

impl RopeConfig {
    /// `head_dim` features per head, all rotating, base 10000, half-split pairing, 4096 positions.
    pub fn new(head_dim: usize) -> Self {
        Self {
            head_dim,
            theta: default_theta(),
            fraction: default_fraction(),
            style: RopeStyle::default(),
            max_positions: default_max_positions(),
            rotary_features: None,
            scaling: None,
        }
    }

    /// How many features of each head rotate: `rotary_features` when set, else
    /// `int(head_dim * fraction)` as HF computes it.
    pub fn rotary_dim(&self) -> usize {
        self.rotary_features
            .unwrap_or((self.head_dim as f64 * self.fraction) as usize)
    }
}

impl ConfigCheck for RopeConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("head_dim", self.head_dim)?;
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(format!("fraction must be in (0, 1], got {}", self.fraction));
        }
        let rotary_dim = self.rotary_dim();
        let source = match self.rotary_features {
            Some(features) => format!("rotary_dim {features}"),
            None => format!("head_dim {} x fraction {}", self.head_dim, self.fraction),
        };
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
            return Err(format!(
                "the rotated dimension must be even and positive, got {rotary_dim} ({source})"
            ));
        }
        if rotary_dim > self.head_dim {
            return Err(format!(
                "{rotary_dim} rotated features do not fit heads of {} features ({source})",
                self.head_dim
            ));
        }
        if !(self.theta > 0.0 && self.theta.is_finite()) {
            return Err(format!("theta must be positive, got {}", self.theta));
        }
        positive("max_positions", self.max_positions)?;
        if let Some(scaling) = &self.scaling {
            scaling.validate(rotary_dim)?;
        }
        // Positions are counted in u32 (as candle's `arange` takes them).
        at_most("max_positions", self.max_positions, u64::from(u32::MAX))
    }

    /// The tables: positions, angles, cosines and sines, in f32 whatever the input's
    /// dtype; the rotation makes a few copies of its input.
    fn footprint(&self, work: &Workload) -> Footprint {
        let positions = Size::field("max_positions", self.max_positions);
        let pairs = match self.rotary_features {
            Some(features) => Size::from_field("rotary_features", features, features / 2),
            None => Size::from_field("head_dim", self.head_dim, self.rotary_dim() / 2),
        };
        Footprint {
            params: (positions.clone() * pairs * 3 + positions * 2) * 4,
            activations: work.bytes(work.elements() * 4),
        }
    }
}

/// Precomputed cosine and sine tables, `[max_positions, rotary_dim / 2]`, in f32
/// (times the scaling's attention factor).
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
    style: RopeStyle,
    theta: f64,
    scaling: Option<RopeScaling>,
    seen: SeenLength,
}

/// Dynamic NTK's state, HF's `max_seq_len_cached`: the sequence length its
/// frequencies were last grown for (the original length when not grown). A clone
/// starts from the state it was cloned in.
#[derive(Debug)]
struct SeenLength(AtomicUsize);

impl Clone for SeenLength {
    fn clone(&self) -> Self {
        Self(AtomicUsize::new(self.0.load(Ordering::Relaxed)))
    }
}

/// `(cos, sin)` of positions `start .. start + len` times `inv_freq`, each
/// `[len, inv_freq.len()]` in f32, multiplied by `factor` as HF multiplies them by
/// `attention_scaling` (in f32).
fn angle_tables(inv_freq: &[f32], start: usize, len: usize, factor: f64, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv_freq = Tensor::from_slice(inv_freq, (1, inv_freq.len()), device)?;
    let positions = Tensor::arange(start as u32, (start + len) as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((len, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    let (cos, sin) = (angles.cos()?, angles.sin()?);
    if factor == 1.0 {
        return Ok((cos, sin));
    }
    let factor = Tensor::new(factor as f32, device)?;
    Ok((cos.broadcast_mul(&factor)?, sin.broadcast_mul(&factor)?))
}

impl Rope {
    /// Precomputes the tables in f32, as HF computes `inv_freq` (and, scaled, as its
    /// rope init function does at construction). Fails unless the rotated features
    /// are even, positive and fit the head, `fraction` is in `(0, 1]`, `theta` is
    /// positive, `max_positions` is positive and the scaling's parameters are usable.
    pub fn new(config: &RopeConfig, device: &Device) -> Result<Self> {
        crate::admit("rope", config)?;
        let rotary_dim = config.rotary_dim();
        // In f32, step for step as HF computes `inv_freq` (`1.0 / base ** (arange(0, d, 2).float() / d)`),
        // so the angles at long positions agree with the reference to the last bit as far as `powf` allows.
        let (inv_freq, factor) = match &config.scaling {
            None => (default_inv_freq(config.theta as f32, rotary_dim), 1.0),
            Some(scaling) => (scaling.inv_freq(config.theta, rotary_dim), scaling.attention_factor()),
        };
        let (cos, sin) = angle_tables(&inv_freq, 0, config.max_positions, factor, device)?;
        let original = match &config.scaling {
            Some(RopeScaling::Dynamic {
                original_max_positions, ..
            }) => *original_max_positions,
            _ => 0,
        };
        Ok(Self {
            cos,
            sin,
            rotary_dim,
            style: config.style,
            theta: config.theta,
            scaling: config.scaling.clone(),
            seen: SeenLength(AtomicUsize::new(original)),
        })
    }

    /// The inverse frequencies of a call whose positions end at `end`, where they are
    /// not the tables' ([`RopeScaling::inv_freq_past_original`]). For dynamic NTK this
    /// updates the state as HF's `dynamic_frequency_update` does: a longer sequence
    /// than the last grown-for one grows the frequencies for it, one shorter than the
    /// original length resets them, and any other keeps them.
    fn frequencies_for(&self, end: usize) -> Option<Vec<f32>> {
        let scaling = self.scaling.as_ref()?;
        let len = match scaling {
            RopeScaling::Dynamic {
                original_max_positions: original,
                ..
            } => {
                let seen = self.seen.0.load(Ordering::Relaxed);
                let len = if end > seen {
                    end
                } else if end < *original {
                    *original
                } else {
                    seen
                };
                self.seen.0.store(len, Ordering::Relaxed);
                len
            }
            _ => end,
        };
        scaling.inv_freq_past_original(self.theta, self.rotary_dim, len)
    }

    /// How many features of each head rotate.
    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim
    }

    /// Which features pair up to rotate.
    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// The RoPE scaling, if any.
    pub fn scaling(&self) -> Option<&RopeScaling> {
        self.scaling.as_ref()
    }

    /// The longest sequence (plus offset) the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// `(cos, sin)` of the angles of positions `offset .. offset + seq`, each
    /// `[seq, rotary_dim / 2]` in f32 (frequency `i` in column `i`). With `dynamic`
    /// or `longrope` scaling, positions ending past the original context take that
    /// call's frequencies, as HF's module does (and `dynamic` updates its state).
    pub fn tables(&self, seq: usize, offset: usize) -> Result<(Tensor, Tensor)> {
        let max_positions = self.max_positions();
        if offset.checked_add(seq).is_none_or(|end| end > max_positions) {
            candle_core::bail!(
                "rope: positions {offset}..{} exceed the table of {max_positions} positions (raise max_positions)",
                offset as u128 + seq as u128
            )
        }
        if let Some(inv_freq) = self.frequencies_for(offset + seq) {
            let factor = self.scaling.as_ref().map_or(1.0, RopeScaling::attention_factor);
            return angle_tables(&inv_freq, offset, seq, factor, self.cos.device());
        }
        Ok((self.cos.narrow(0, offset, seq)?, self.sin.narrow(0, offset, seq)?))
    }

    /// The tables of positions `offset .. offset + seq` as HF's rotary embedding
    /// modules return them (`LlamaRotaryEmbedding` and its copies): `(cos, sin)`,
    /// each `[1, seq, rotary_dim]` with the frequencies repeated twice, in `dtype`.
    pub fn hf_tables(&self, seq: usize, offset: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (cos, sin) = self.tables(seq, offset)?;
        let twice = |t: &Tensor| {
            Tensor::cat(&[t, t], candle_core::D::Minus1)?
                .unsqueeze(0)?
                .to_dtype(dtype)
        };
        Ok((twice(&cos)?, twice(&sin)?))
    }

    /// Records [`hf_tables`](Self::hf_tables) under `path` as the reference's
    /// hooks record that module's tuple output (`path:0`, `path:1`). Only while a
    /// trace is recorded.
    pub fn tap_hf_tables(&self, path: &str, seq: usize, offset: usize, dtype: DType) -> Result<()> {
        if !replica_check::trace::is_active() {
            return Ok(());
        }
        let (cos, sin) = self.hf_tables(seq, offset, dtype)?;
        replica_check::tap_tuple(path, &[&cos, &sin]);
        Ok(())
    }

    /// Rotates `x`, shaped `[batch, heads, seq, head_dim]`, whose first token sits at
    /// position `offset` (the number of tokens already in a KV cache).
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, _, seq, head_dim) = x.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "rope: input must be [batch, heads, seq, head_dim], got shape {:?}",
                x.dims()
            ))
        })?;
        if head_dim < self.rotary_dim {
            candle_core::bail!(
                "rope: heads have {head_dim} features, fewer than the {} to rotate",
                self.rotary_dim
            )
        }
        let (cos, sin) = self.tables(seq, offset)?;
        // As HF: the tables are cast to the input dtype (and, composed, the rotation runs in it).
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        crate::ops::rope(x, &cos, &sin, self.style)
    }
}
