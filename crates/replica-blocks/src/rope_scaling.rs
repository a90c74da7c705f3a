//! RoPE scaling: the rotary frequencies for contexts longer than the one a model
//! was pretrained on, as HF transformers v5 computes them from a config's
//! `rope_parameters` (v4: `rope_scaling`) in `modeling_rope_utils.py`.
//!
//! | `rope_type` | method | source |
//! | --- | --- | --- |
//! | `linear` | position interpolation: every frequency divided by `factor` | Chen et al., arXiv 2306.15595 |
//! | `dynamic` | dynamic NTK: the base grows with the sequence once it passes `max_position_embeddings` | Peng et al., arXiv 2309.00071, section 3.3 |
//! | `yarn` | NTK-by-parts interpolation and the attention temperature `0.1 ln(factor) + 1` | Peng et al., arXiv 2309.00071 |
//! | `llama3` | low frequencies divided by `factor`, high ones kept, a smooth ramp between | Llama 3.1, arXiv 2407.21783 |
//! | `longrope` | one factor per frequency, the short set up to the original length, the long set beyond | Ding et al., arXiv 2402.13753 (Phi-3) |
//!
//! Every step runs in the precision HF's runs it in: the frequencies in f32
//! (`torch.float`), the Python scalars (`attention_factor`, yarn's correction range,
//! llama3's wavelength bounds) in f64 and rounded to f32 where they meet a tensor.
//! `attention_factor` multiplies the f32 cosine and sine tables, as
//! `LlamaRotaryEmbedding.forward` multiplies them by `attention_scaling`.
//!
//! Two types pick their frequencies per call from the positions' end
//! (`max(position_ids) + 1`), as HF's `dynamic_rope_update` does: `longrope` the
//! long factors past `original_max_position_embeddings`, and `dynamic` recomputes its
//! base from the sequence length past `max_position_embeddings`, keeping the longest
//! length seen until a sequence shorter than `max_position_embeddings` resets it
//! ([`crate::rope::Rope`] keeps that state as HF's module does).

use serde::{Deserialize, Serialize};

/// HF transformers v5 `rope_parameters` (v4's `rope_scaling`), as a `config.json`
/// holds them. Keys a rope type does not use are refused by [`RopeParameters::scaling`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeParameters {
    /// The RoPE variant; `None` reads `type`, then `default`.
    #[serde(default)]
    pub rope_type: Option<String>,
    /// v4's name of `rope_type`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The RoPE base; `None` leaves the config's `rope_theta` (or 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// The fraction of each head that rotates.
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// How much longer the context is than the original (linear, dynamic, yarn, llama3, longrope).
    #[serde(default)]
    pub factor: Option<f64>,
    /// The pretraining context (yarn, llama3, longrope); `None` is `max_position_embeddings`.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// The factor on the cosine and sine tables (yarn, longrope); `None` is the paper's.
    #[serde(default)]
    pub attention_factor: Option<f64>,
    /// yarn: rotations below which frequencies are extrapolated (default 32).
    #[serde(default)]
    pub beta_fast: Option<f64>,
    /// yarn: rotations above which frequencies are interpolated (default 1).
    #[serde(default)]
    pub beta_slow: Option<f64>,
    /// yarn: with `mscale_all_dim`, the numerator's scale of `ln(factor)` in the attention factor.
    #[serde(default)]
    pub mscale: Option<f64>,
    /// yarn: with `mscale`, the denominator's scale of `ln(factor)` in the attention factor.
    #[serde(default)]
    pub mscale_all_dim: Option<f64>,
    /// yarn: round the correction range outwards to whole dimensions (default true).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// llama3: wavelengths above `original / low_freq_factor` are divided by `factor`.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// llama3: wavelengths below `original / high_freq_factor` are kept.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// longrope: per-frequency factors up to the original context.
    #[serde(default)]
    pub short_factor: Option<Vec<f64>>,
    /// longrope: per-frequency factors past the original context.
    #[serde(default)]
    pub long_factor: Option<Vec<f64>>,
}

/// The rope types implemented, in messages.
const IMPLEMENTED: &str = "default, linear, dynamic, yarn, llama3, longrope";

impl RopeParameters {
    /// The RoPE variant: `rope_type`, else v4's `type`, else `default` (HF's `standardize_rope_params`).
    pub fn rope_type(&self) -> &str {
        self.rope_type.as_deref().or(self.kind.as_deref()).unwrap_or("default")
    }

    /// The scaling these parameters ask for (`None` for `default`), given the config's
    /// `max_position_embeddings`, with HF's defaults filled in. Refuses an unknown
    /// type, a missing required key and a key the type does not use, by name.
    pub fn scaling(&self, max_position_embeddings: usize) -> Result<Option<RopeScaling>, String> {
        let kind = self.rope_type();
        let allowed: &[&str] = match kind {
            "default" => &[],
            "linear" | "dynamic" => &["factor"],
            "yarn" => &[
                "factor",
                "original_max_position_embeddings",
                "attention_factor",
                "beta_fast",
                "beta_slow",
                "mscale",
                "mscale_all_dim",
                "truncate",
            ],
            "llama3" => &[
                "factor",
                "original_max_position_embeddings",
                "low_freq_factor",
                "high_freq_factor",
            ],
            "longrope" => &[
                "factor",
                "original_max_position_embeddings",
                "attention_factor",
                "short_factor",
                "long_factor",
            ],
            other => {
                return Err(format!(
                    "rope_parameters.rope_type `{other}` is not implemented (expected one of {IMPLEMENTED})"
                ))
            }
        };
        let given = [
            ("factor", self.factor.is_some()),
            (
                "original_max_position_embeddings",
                self.original_max_position_embeddings.is_some(),
            ),
            ("attention_factor", self.attention_factor.is_some()),
            ("beta_fast", self.beta_fast.is_some()),
            ("beta_slow", self.beta_slow.is_some()),
            ("mscale", self.mscale.is_some()),
            ("mscale_all_dim", self.mscale_all_dim.is_some()),
            ("truncate", self.truncate.is_some()),
            ("low_freq_factor", self.low_freq_factor.is_some()),
            ("high_freq_factor", self.high_freq_factor.is_some()),
            ("short_factor", self.short_factor.is_some()),
            ("long_factor", self.long_factor.is_some()),
        ];
        if let Some((name, _)) = given.iter().find(|(name, set)| *set && !allowed.contains(name)) {
            return Err(format!("rope_parameters.{name} is not used by rope_type `{kind}`"));
        }
        let need = |name: &str, value: Option<f64>| {
            value.ok_or_else(|| format!("rope_parameters.{name} is required by rope_type `{kind}`, got none"))
        };
        // HF's `standardize_rope_params` defaults it to `max_position_embeddings`.
        let original = self.original_max_position_embeddings.unwrap_or(max_position_embeddings);
        let scaling = match kind {
            "default" => return Ok(None),
            "linear" => RopeScaling::Linear {
                factor: need("factor", self.factor)?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: need("factor", self.factor)?,
                original_max_positions: max_position_embeddings,
            },
            "yarn" => {
                let factor = need("factor", self.factor)?;
                let attention_factor = match (self.attention_factor, self.mscale, self.mscale_all_dim) {
                    (Some(given), _, _) => given,
                    // Python truthiness: a zero `mscale` counts as absent.
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                        yarn_get_mscale(factor, m) / yarn_get_mscale(factor, all)
                    }
                    _ => yarn_get_mscale(factor, 1.0),
                };
                RopeScaling::Yarn {
                    factor,
                    original_max_positions: original,
                    attention_factor,
                    // `get("beta_fast") or 32`: zero too falls back.
                    beta_fast: self.beta_fast.filter(|b| *b != 0.0).unwrap_or(32.0),
                    beta_slow: self.beta_slow.filter(|b| *b != 0.0).unwrap_or(1.0),
                    truncate: self.truncate.unwrap_or(true),
                }
            }
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor", self.factor)?,
                low_freq_factor: need("low_freq_factor", self.low_freq_factor)?,
                high_freq_factor: need("high_freq_factor", self.high_freq_factor)?,
                original_max_positions: original,
            },
            _ => {
                let factors = |name: &str, value: &Option<Vec<f64>>| {
                    value
                        .clone()
                        .ok_or_else(|| format!("rope_parameters.{name} is required by rope_type `{kind}`, got none"))
                };
                // Phi-3: without `factor`, the ratio of the two lengths.
                let factor = self.factor.unwrap_or(max_position_embeddings as f64 / original as f64);
                let attention_factor = match self.attention_factor {
                    Some(given) => given,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
                };
                RopeScaling::LongRope {
                    short_factor: factors("short_factor", &self.short_factor)?,
                    long_factor: factors("long_factor", &self.long_factor)?,
                    original_max_positions: original,
                    attention_factor,
                }
            }
        };
        Ok(Some(scaling))
    }
}

/// YaRN's `mscale` (arXiv 2309.00071, Eq. 21): `0.1 * mscale * ln(scale) + 1`, 1 for `scale <= 1`.
fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// A RoPE scaling with HF's defaults resolved ([`RopeParameters::scaling`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Position interpolation: `inv_freq / factor`.
    Linear {
        /// The interpolation factor.
        factor: f64,
    },
    /// Dynamic NTK: past `original_max_positions` (HF's `max_position_embeddings`),
    /// the base becomes `theta * (factor * len / original - (factor - 1)) ^ (d / (d - 2))`.
    Dynamic {
        /// The scaling factor.
        factor: f64,
        /// HF's `max_position_embeddings`: the length past which the base grows.
        original_max_positions: usize,
    },
    /// YaRN: each frequency between its interpolated (`/ factor`) and original value
    /// by a ramp over the dimensions whose rotations in the original context lie
    /// between `beta_slow` and `beta_fast`.
    Yarn {
        /// The context extension factor.
        factor: f64,
        /// The pretraining context.
        original_max_positions: usize,
        /// The factor on the cosine and sine tables.
        attention_factor: f64,
        /// Rotations below which frequencies are extrapolated.
        beta_fast: f64,
        /// Rotations above which frequencies are interpolated.
        beta_slow: f64,
        /// Round the correction range outwards.
        truncate: bool,
    },
    /// Llama 3.1: wavelengths past `original / low_freq_factor` divided by `factor`,
    /// below `original / high_freq_factor` kept, smoothly blended between.
    Llama3 {
        /// The factor on the low frequencies.
        factor: f64,
        /// Bounds the low-frequency band.
        low_freq_factor: f64,
        /// Bounds the high-frequency band.
        high_freq_factor: f64,
        /// The pretraining context.
        original_max_positions: usize,
    },
    /// LongRoPE: `inv_freq / factor_i`, with the short factors up to
    /// `original_max_positions` and the long ones past it.
    LongRope {
        /// Per-frequency factors up to the original context.
        short_factor: Vec<f64>,
        /// Per-frequency factors past it.
        long_factor: Vec<f64>,
        /// The pretraining context.
        original_max_positions: usize,
        /// The factor on the cosine and sine tables.
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// The factor HF multiplies the cosine and sine tables by (`attention_scaling`).
    pub fn attention_factor(&self) -> f64 {
        match self {
            Self::Yarn { attention_factor, .. } | Self::LongRope { attention_factor, .. } => *attention_factor,
            _ => 1.0,
        }
    }

    /// The longest sequence a model with `max_position_embeddings` runs: that, or
    /// for `dynamic`, whose point is to run past it, `factor` times it.
    pub fn max_positions(&self, max_position_embeddings: usize) -> usize {
        match self {
            Self::Dynamic { factor, .. } => {
                ((max_position_embeddings as f64 * factor) as usize).max(max_position_embeddings)
            }
            _ => max_position_embeddings,
        }
    }

    /// Refuses what HF's formulas cannot take for `rotary_dim` rotated features.
    pub fn validate(&self, rotary_dim: usize) -> Result<(), String> {
        let positive = |name: &str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "rope_parameters.{name} must be a finite number > 0, got {value}"
                ))
            }
        };
        let original = |value: usize| {
            if value == 0 {
                Err("rope_parameters.original_max_position_embeddings must be positive, got 0".to_string())
            } else {
                Ok(())
            }
        };
        match self {
            Self::Linear { factor } => positive("factor", *factor),
            Self::Dynamic {
                factor,
                original_max_positions,
            } => {
                positive("factor", *factor)?;
                original(*original_max_positions)?;
                if rotary_dim <= 2 {
                    return Err(format!(
                        "rope_type `dynamic` needs more than 2 rotated features (its exponent is d / (d - 2)), got {rotary_dim}"
                    ));
                }
                Ok(())
            }
            Self::Yarn {
                factor,
                original_max_positions,
                attention_factor,
                beta_fast,
                beta_slow,
                ..
            } => {
                positive("factor", *factor)?;
                original(*original_max_positions)?;
                positive("attention_factor", *attention_factor)?;
                positive("beta_fast", *beta_fast)?;
                positive("beta_slow", *beta_slow)
            }
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                positive("factor", *factor)?;
                positive("low_freq_factor", *low_freq_factor)?;
                positive("high_freq_factor", *high_freq_factor)?;
                original(*original_max_positions)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope_parameters.high_freq_factor must be greater than low_freq_factor {low_freq_factor}, got {high_freq_factor}"
                    ));
                }
                Ok(())
            }
            Self::LongRope {
                short_factor,
                long_factor,
                original_max_positions,
                attention_factor,
            } => {
                original(*original_max_positions)?;
                positive("attention_factor", *attention_factor)?;
                for (name, factors) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if factors.len() != rotary_dim / 2 {
                        return Err(format!(
                            "rope_parameters.{name} must hold one factor per frequency ({}), got {}",
                            rotary_dim / 2,
                            factors.len()
                        ));
                    }
                    if let Some(bad) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
                        return Err(format!(
                            "rope_parameters.{name} must hold finite numbers > 0, got {bad}"
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// The inverse frequencies HF's rope init function returns at construction
    /// (`seq_len` unset), for `rotary_dim` features and base `theta`, in f32.
    pub fn inv_freq(&self, theta: f64, rotary_dim: usize) -> Vec<f32> {
        let dim = rotary_dim;
        match self {
            Self::Linear { factor } => default_inv_freq(theta as f32, dim)
                .into_iter()
                .map(|f| f / *factor as f32)
                .collect(),
            // At construction `seq_len` is `max_position_embeddings` and the new base is
            // computed in Python floats: `factor * L / L - (factor - 1)`, about 1.
            Self::Dynamic {
                factor,
                original_max_positions,
            } => {
                let len = *original_max_positions as f64;
                let grow = (factor * len / len - (factor - 1.0)).powf(dim as f64 / (dim as f64 - 2.0));
                default_inv_freq((theta * grow) as f32, dim)
            }
            Self::Yarn {
                factor,
                original_max_positions,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => yarn_inv_freq(
                theta,
                dim,
                *factor,
                *original_max_positions,
                *beta_fast,
                *beta_slow,
                *truncate,
            ),
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => llama3_inv_freq(
                theta,
                dim,
                *factor,
                *low_freq_factor,
                *high_freq_factor,
                *original_max_positions,
            ),
            Self::LongRope { short_factor, .. } => longrope_inv_freq(theta, dim, short_factor),
        }
    }

    /// The inverse frequencies of a call whose positions end at `end` (HF's
    /// `max(position_ids) + 1`), when they differ from [`inv_freq`](Self::inv_freq)'s:
    /// `longrope` past the original context uses its long factors; `dynamic` past it
    /// grows the base for `len`, the length its state holds ([`crate::rope::Rope`]).
    pub fn inv_freq_past_original(&self, theta: f64, rotary_dim: usize, len: usize) -> Option<Vec<f32>> {
        match self {
            Self::LongRope {
                long_factor,
                original_max_positions,
                ..
            } if len > *original_max_positions => Some(longrope_inv_freq(theta, rotary_dim, long_factor)),
            Self::Dynamic {
                factor,
                original_max_positions,
            } if len > *original_max_positions => Some(dynamic_inv_freq(
                theta,
                rotary_dim,
                *factor,
                *original_max_positions,
                len,
            )),
            _ => None,
        }
    }
}

/// HF's default inverse frequencies in f32: `1.0 / base ** (arange(0, d, 2).float() / d)`.
pub(crate) fn default_inv_freq(base: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0f32 / base.powf((2 * i) as f32 / dim as f32))
        .collect()
}

/// Dynamic NTK at run time: `seq_len` is a tensor there, so the new base is computed
/// in f32 tensor ops (the power of a 0-dim f32 tensor by a Python float runs in f64
/// and rounds once), then `base * that` and the powers in f32.
fn dynamic_inv_freq(theta: f64, dim: usize, factor: f64, original: usize, len: usize) -> Vec<f32> {
    let ratio = (factor as f32 * len as f32) / original as f32 - (factor - 1.0) as f32;
    let grow = (ratio as f64).powf(dim as f64 / (dim as f64 - 2.0)) as f32;
    default_inv_freq(theta as f32 * grow, dim)
}

/// `_compute_yarn_parameters`: the correction range in Python floats, the ramp and
/// the blend in f32.
fn yarn_inv_freq(
    theta: f64,
    dim: usize,
    factor: f64,
    original: usize,
    beta_fast: f64,
    beta_slow: f64,
    truncate: bool,
) -> Vec<f32> {
    let correction_dim = |rotations: f64| {
        (dim as f64 * (original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
    if low == high {
        high += 0.001; // HF: "prevent singularity"
    }
    let (low32, span32) = (low as f32, (high - low) as f32);
    let base = theta as f32;
    let factor = factor as f32;
    (0..dim / 2)
        .map(|i| {
            let pos_freq = base.powf((2 * i) as f32 / dim as f32);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (factor * pos_freq);
            let ramp = ((i as f32 - low32) / span32).clamp(0.0, 1.0);
            let extrapolation_factor = 1.0 - ramp;
            interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect()
}

/// `_compute_llama3_parameters`, op for op in f32 (`2π / inv_freq` is
/// `inv_freq.reciprocal() * 2π` in torch).
fn llama3_inv_freq(theta: f64, dim: usize, factor: f64, low_freq: f64, high_freq: f64, original: usize) -> Vec<f32> {
    let low_freq_wavelen = (original as f64 / low_freq) as f32;
    let high_freq_wavelen = (original as f64 / high_freq) as f32;
    let (factor, two_pi, original32) = (factor as f32, (2.0 * std::f64::consts::PI) as f32, original as f32);
    let (low32, span32) = (low_freq as f32, (high_freq - low_freq) as f32);
    default_inv_freq(theta as f32, dim)
        .into_iter()
        .map(|inv| {
            let wavelen = (1.0 / inv) * two_pi;
            let scaled = if wavelen > low_freq_wavelen { inv / factor } else { inv };
            let smooth = ((1.0 / wavelen) * original32 - low32) / span32;
            let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
            let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
            if medium {
                smoothed
            } else {
                scaled
            }
        })
        .collect()
}

/// `_compute_longrope_parameters`: `1 / (factor_i * base ** (2i / d))` in f32.
fn longrope_inv_freq(theta: f64, dim: usize, factors: &[f64]) -> Vec<f32> {
    let base = theta as f32;
    (0..dim / 2)
        .map(|i| {
            let ext = factors.get(i).copied().unwrap_or(1.0) as f32;
            1.0 / (ext * base.powf((2 * i) as f32 / dim as f32))
        })
        .collect()
}
