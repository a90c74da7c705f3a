//! Window multi-head self-attention with a relative position bias (W-MSA and,
//! with a mask, SW-MSA): Liu et al., "Swin Transformer: Hierarchical Vision
//! Transformer using Shifted Windows", arXiv 2103.14030 (registry:
//! [`crate::papers::SWIN`]), as timm's `WindowAttention`.
//!
//! Each window of `M = wh·ww` tokens attends within itself (eq. 4):
//!
//! ```text
//! Attention(Q, K, V) = SoftMax(Q Kᵀ / √d + B) V,   B[i, j] = B̂[index(i, j)]
//! ```
//!
//! `B̂` is the learned table `relative_position_bias_table` `[(2wh-1)(2ww-1),
//! heads]`, read through [`relative_position_index`]. Under shifted windows the
//! caller's mask `[nW, M, M]` is added after the bias, window by window. The order
//! is timm's unfused path (its default): `q · scale`, `q kᵀ`, `+ B`, `+ mask`,
//! softmax; each step rounds to the input's dtype as PyTorch does.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{all_positive, at_most, drop_rate};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::dropout::Dropout;
use crate::ops::{self, ScoreBias};
use crate::window::relative_position_index;
use crate::{Linear, LinearConfig, Size2};

fn yes() -> bool {
    true
}

fn default_window() -> Size2 {
    Size2::square(7)
}

/// The largest window side accepted: the bias table and the scores grow with its fourth power.
pub const MAX_WINDOW_SIDE: u64 = 1 << 10;

/// timm `WindowAttention(dim, num_heads, head_dim, window_size, qkv_bias, attn_drop, proj_drop)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowAttentionConfig {
    /// Channels in and out.
    pub dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Channels per head; `None`: `dim / num_heads`, as timm.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// The window, `(height, width)` (an integer for a square); timm's default 7.
    #[serde(default = "default_window")]
    pub window_size: Size2,
    /// A bias on the fused `qkv` projection (timm's default on).
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// Dropout on the attention probabilities in training.
    #[serde(default)]
    pub attn_drop: f64,
    /// Dropout after the output projection in training.
    #[serde(default)]
    pub proj_drop: f64,
}

impl WindowAttentionConfig {
    /// `num_heads` heads over `dim` channels in `window` windows, timm's defaults otherwise.
    pub fn new(dim: usize, num_heads: usize, window: impl Into<Size2>) -> Self {
        Self {
            dim,
            num_heads,
            head_dim: None,
            window_size: window.into(),
            qkv_bias: true,
            attn_drop: 0.0,
            proj_drop: 0.0,
        }
    }

    /// Channels per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.dim / self.num_heads.max(1))
    }

    /// Tokens per window, `wh·ww`.
    pub fn window_area(&self) -> usize {
        self.window_size.height * self.window_size.width
    }

    /// Rows of the relative position bias table, `(2wh - 1)(2ww - 1)`.
    pub fn table_rows(&self) -> usize {
        (2 * self.window_size.height - 1) * (2 * self.window_size.width - 1)
    }
}

impl ConfigCheck for WindowAttentionConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[
            ("dim", self.dim),
            ("num_heads", self.num_heads),
            ("window_size height", self.window_size.height),
            ("window_size width", self.window_size.width),
        ])?;
        at_most("window_size height", self.window_size.height, MAX_WINDOW_SIDE)?;
        at_most("window_size width", self.window_size.width, MAX_WINDOW_SIDE)?;
        at_most("num_heads", self.num_heads, 1 << 16)?;
        at_most("dim", self.dim, 1 << 24)?;
        if let Some(head_dim) = self.head_dim {
            all_positive(&[("head_dim", head_dim)])?;
            at_most("head_dim", head_dim, 1 << 16)?;
        } else if !self.dim.is_multiple_of(self.num_heads) {
            return Err(format!(
                "dim {} is not divisible by num_heads {}",
                self.dim, self.num_heads
            ));
        }
        drop_rate("attn_drop", self.attn_drop)?;
        drop_rate("proj_drop", self.proj_drop)
    }

    /// The projections and the bias table; per window the queries, keys and values
    /// and one score map per head.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        let heads = Size::field("num_heads", self.num_heads);
        let inner = heads.clone() * Size::count(self.head_dim() as u64);
        let area = Size::field("window_size height", self.window_size.height)
            * Size::field("window_size width", self.window_size.width);
        let table = area.clone() * Size::count(4) * heads.clone();
        Footprint {
            params: work.bytes(dim.clone() * inner.clone() * Size::count(4) + table),
            activations: work.bytes(work.rows() * (inner * Size::count(4) + dim) + work.rows() * heads * area * 3),
        }
    }
}

/// timm's `WindowAttention`: `qkv`, `relative_position_bias_table`, `proj`.
#[derive(Clone, Debug)]
pub struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    table: Tensor,
    /// `[M·M]` rows of the table, the `relative_position_index` buffer flattened.
    index: Tensor,
    attn_drop: Dropout,
    proj_drop: Dropout,
    heads: usize,
    head_dim: usize,
    area: usize,
    softmax_path: String,
    path: String,
}

impl WindowAttention {
    /// Loads `qkv` `[3·heads·head_dim, dim]` (and its bias), `proj` and
    /// `relative_position_bias_table` `[(2wh-1)(2ww-1), heads]` (fresh: N(0, 0.02²),
    /// near timm's truncated normal) at `vb`'s path.
    pub fn new(config: &WindowAttentionConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        crate::admit(&format!("window attention `{path}`"), config)?;
        let inner = config.num_heads * config.head_dim();
        let qkv = LinearConfig {
            bias: config.qkv_bias,
            ..LinearConfig::new(config.dim, 3 * inner)
        };
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let table = vb.get_with_hints(
            (config.table_rows(), config.num_heads),
            "relative_position_bias_table",
            init,
        )?;
        let index = relative_position_index(config.window_size, vb.device())?.flatten_all()?;
        Ok(Self {
            qkv: Linear::new(&qkv, vb.pp("qkv"))?,
            proj: Linear::new(&LinearConfig::new(inner, config.dim), vb.pp("proj"))?,
            table,
            index,
            attn_drop: Dropout::from_probability(config.attn_drop, vb.pp("attn_drop").prefix())?,
            proj_drop: Dropout::from_probability(config.proj_drop, vb.pp("proj_drop").prefix())?,
            heads: config.num_heads,
            head_dim: config.head_dim(),
            area: config.window_area(),
            softmax_path: vb.pp("softmax").prefix(),
            path,
        })
    }

    /// The relative position bias `[1, heads, M, M]` gathered from the table.
    pub fn relative_position_bias(&self) -> Result<Tensor> {
        let m = self.area;
        self.table
            .index_select(&self.index, 0)?
            .reshape((m, m, self.heads))?
            .permute((2, 0, 1))?
            .contiguous()?
            .unsqueeze(0)
    }

    /// `a b` in `a`'s dtype: half precision multiplied in f32 and rounded once, as PyTorch.
    fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        match a.dtype() {
            DType::F16 | DType::BF16 => a
                .to_dtype(DType::F32)?
                .matmul(&b.to_dtype(DType::F32)?)?
                .to_dtype(a.dtype()),
            _ => a.matmul(b),
        }
    }

    /// Windows `[B·nW, M, dim]` to `[B·nW, M, dim]`; `mask` `[nW, M, M]` (additive) is
    /// added to each image's windows in order. Dropout only when `train`. Records
    /// `qkv`, `softmax` and `attn_drop` (the probabilities), `proj`, `proj_drop` and
    /// its own output.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let (windows, m, _) = x.dims3()?;
        if m != self.area {
            candle_core::bail!(
                "window attention `{}`: windows of {m} tokens, the bias table is for {}",
                self.path,
                self.area
            )
        }
        let (h, d) = (self.heads, self.head_dim);
        let dtype = x.dtype();
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((windows, m, 3, h, d))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let q = (q * (d as f64).powf(-0.5))?;
        let scores = Self::matmul(&q, &k.t()?.contiguous()?)?;
        let scores = scores.broadcast_add(&self.relative_position_bias()?.to_dtype(dtype)?)?;
        let scores = match mask {
            Some(mask) => {
                let (count, mm, mn) = mask.dims3()?;
                if count == 0 || windows % count != 0 || (mm, mn) != (m, m) {
                    candle_core::bail!(
                        "window attention `{}`: a mask {:?} does not fit {windows} windows of {m} tokens",
                        self.path,
                        mask.dims()
                    )
                }
                scores
                    .reshape((windows / count, count, h, m, m))?
                    .broadcast_add(&mask.to_dtype(dtype)?.unsqueeze(1)?.unsqueeze(0)?)?
                    .reshape((windows, h, m, m))?
            }
            None => scores,
        };
        let probs = ops::softmax(&scores, 1.0, &ScoreBias::default())?.to_dtype(dtype)?;
        replica_check::tap(&self.softmax_path, &probs);
        let probs = self.attn_drop.forward_t(&probs, train)?;
        let y = Self::matmul(&probs, &v)?
            .transpose(1, 2)?
            .reshape((windows, m, h * d))?;
        let y = self.proj_drop.forward_t(&self.proj.forward(&y)?, train)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }

    /// The evaluation-mode forward pass.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_t(x, mask, false)
    }
}
