//! candle's own operations against the real PyTorch modules, forward and backward.
//!
//! Where candle has a fused op without a backward (`softmax_last_dim`,
//! `layer_norm`), its forward is checked, and the gradients are checked through
//! the plain composition of differentiable ops.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use replica_check::{compare_trace, trace, Bundle, Namespace, Parity, Report, Result, Tolerance, WeightMap};

use replica_check::Case;

/// Every case of this module.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "linear",
            reference: "torch.nn.Linear",
            paper: None,
            fixture: "linear",
            run: linear,
        },
        Case {
            name: "layer_norm",
            reference: "torch.nn.LayerNorm",
            paper: None,
            fixture: "layer_norm",
            run: layer_norm,
        },
        Case {
            name: "layer_norm_f16",
            reference: "torch.nn.LayerNorm",
            paper: None,
            fixture: "layer_norm_f16",
            run: layer_norm_forward,
        },
        Case {
            name: "layer_norm_bf16",
            reference: "torch.nn.LayerNorm",
            paper: None,
            fixture: "layer_norm_bf16",
            run: layer_norm_forward,
        },
        Case {
            name: "softmax",
            reference: "torch.nn.Softmax",
            paper: None,
            fixture: "softmax",
            run: softmax,
        },
        Case {
            name: "gelu_erf",
            reference: "torch.nn.GELU",
            paper: None,
            fixture: "gelu_erf",
            run: gelu_erf,
        },
        Case {
            name: "gelu_tanh",
            reference: "torch.nn.GELU(approximate='tanh')",
            paper: None,
            fixture: "gelu_tanh",
            run: gelu_tanh,
        },
        Case {
            name: "multihead_attention",
            reference: "torch.nn.MultiheadAttention",
            paper: None,
            fixture: "multihead_attention",
            run: multihead_attention,
        },
        Case {
            name: "two_layer_mlp",
            reference: "torch.nn.Sequential",
            paper: None,
            fixture: "two_layer_mlp",
            run: two_layer_mlp,
        },
    ]
}

fn linear(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let layer = Linear::new(run.param("weight")?, Some(run.param("bias")?));
    let y = layer.forward(&run.input("0")?)?;
    run.check_outputs(&[("0", &y)]);
    run.check_backward(&[("0", &y)])?;
    Ok(run.finish())
}

fn layer_norm_eps(bundle: &Bundle) -> f64 {
    bundle.metadata().config["eps"].as_f64().unwrap_or(1e-5)
}

/// LayerNorm from differentiable ops: (x - mean) / sqrt(var + eps) * weight + bias,
/// with the biased variance PyTorch uses.
fn composed_layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(variance + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

fn layer_norm(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let (x, w, b) = (run.input("0")?, run.param("weight")?, run.param("bias")?);
    let eps = layer_norm_eps(bundle);
    let fused = candle_nn::ops::layer_norm(&x, &w, &b, eps as f32)?;
    run.check_outputs_of("fused candle_nn::ops::layer_norm", &[("0", &fused)]);
    let composed = composed_layer_norm(&x, &w, &b, eps)?;
    run.check_outputs(&[("0", &composed)]);
    run.check_backward(&[("0", &composed)])?;
    Ok(run.finish())
}

/// Half-precision LayerNorm: candle's fused op in the bundle's dtype, against
/// torch's module run in that dtype.
fn layer_norm_forward(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let (x, w, b) = (run.input("0")?, run.param("weight")?, run.param("bias")?);
    let y = candle_nn::ops::layer_norm(&x, &w, &b, layer_norm_eps(bundle) as f32)?;
    run.check_outputs(&[("0", &y)]);
    Ok(run.finish())
}

fn softmax(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    let fused = candle_nn::ops::softmax_last_dim(&x)?;
    run.check_outputs_of("fused candle_nn::ops::softmax_last_dim", &[("0", &fused)]);
    let composed = candle_nn::ops::softmax(&x, D::Minus1)?;
    run.check_outputs(&[("0", &composed)]);
    run.check_backward(&[("0", &composed)])?;
    Ok(run.finish())
}

fn unary(bundle: &Bundle, op: fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let y = op(&run.input("0")?)?;
    run.check_outputs(&[("0", &y)]);
    run.check_backward(&[("0", &y)])?;
    Ok(run.finish())
}

fn gelu_erf(bundle: &Bundle) -> Result<Report> {
    unary(bundle, Tensor::gelu_erf)
}

fn gelu_tanh(bundle: &Bundle) -> Result<Report> {
    unary(bundle, Tensor::gelu)
}

/// `nn.MultiheadAttention` (batch first, self-attention) from candle ops. The
/// fused `in_proj_weight` is split into Q, K and V by a weight map, and the
/// weights are built through the strict loader so a naming slip is reported.
fn multihead_attention(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let heads = bundle.metadata().config["num_heads"].as_u64().unwrap_or(1) as usize;
    let map = WeightMap::new()
        .rename(r"^attn\.", "")
        .split(r"^in_proj_(weight|bias)$", 0, &["q.$1", "k.$1", "v.$1"]);
    let weights = map.apply(run.params().clone(), bundle.origin())?;
    let attention = weights.build(DType::F32, &candle_core::Device::Cpu, |vb| {
        SelfAttention::new(vb, heads)
    })?;
    let (out, probs) = attention.forward(&run.input("0")?)?;
    run.check_outputs(&[("0", &out), ("1", &probs)]);
    run.check_backward(&[("0", &out), ("1", &probs)])?;
    Ok(run.finish())
}

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, heads: usize) -> candle_core::Result<Self> {
        let dim = vb.get_unchecked("out_proj.weight")?.dim(0)?;
        let projection = |name: &str| candle_nn::linear(dim, dim, vb.pp(name));
        Ok(Self {
            q: projection("q")?,
            k: projection("k")?,
            v: projection("v")?,
            out: projection("out_proj")?,
            heads,
        })
    }

    /// Returns the output and the per-head attention probabilities.
    fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (batch, len, dim) = x.dims3()?;
        let head_dim = dim / self.heads;
        let split_heads = |t: Tensor| {
            t.reshape((batch, len, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split_heads(self.q.forward(x)?)?;
        let k = split_heads(self.k.forward(x)?)?;
        let v = split_heads(self.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let mixed = probs.matmul(&v)?.transpose(1, 2)?.reshape((batch, len, dim))?;
        Ok((self.out.forward(&mixed)?, probs))
    }
}

/// Linear -> GELU -> Linear, each step tapped under its `nn.Sequential` index,
/// so the trace lines up with the reference's forward hooks.
fn two_layer_mlp(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let fc1 = Linear::new(run.param("0.weight")?, Some(run.param("0.bias")?));
    let fc2 = Linear::new(run.param("2.weight")?, Some(run.param("2.bias")?));
    let x = run.input("0")?;
    let (y, recorded) = trace::record(|| -> candle_core::Result<Tensor> {
        let h = fc1.forward(&x)?;
        trace::tap("0", &h);
        let h = h.gelu_erf()?;
        trace::tap("1", &h);
        let y = fc2.forward(&h)?;
        trace::tap("2", &y);
        Ok(y)
    });
    let y = y?;
    let traced = compare_trace(&recorded, bundle, Tolerance::for_dtype(DType::F32));
    for row in traced.rows {
        if let Some(comparison) = row.comparison {
            run.report_mut()
                .push(format!("{}{}", Namespace::Activation, row.path), comparison);
        }
    }
    run.check_outputs(&[("0", &y)]);
    run.check_backward(&[("0", &y)])?;
    Ok(run.finish())
}
