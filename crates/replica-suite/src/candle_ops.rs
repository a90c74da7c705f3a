//! candle's own operations against the real PyTorch modules, forward and backward.
//!
//! Where candle has a fused op without a backward (`softmax_last_dim`,
//! `layer_norm`), its forward is checked, and the gradients are checked through
//! the plain composition of differentiable ops.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use replica_blocks::LinearConfig;
use replica_check::config_check::{all_positive, non_negative};
use replica_check::{
    sizeless_config, tap, tap_tuple, Bundle, Case, ConfigCheck, Footprint, Parity, Report, Result, Size, Unmatched,
    WeightMap, Workload,
};
use serde::Deserialize;

use crate::case;
use crate::reference::{yes, MultiheadArgs};

/// Every candle-op case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("linear",              "torch.nn.Linear",                   None, "linear",              linear),
        case("layer_norm",          "torch.nn.LayerNorm",                None, "layer_norm",          layer_norm),
        case("layer_norm_f16",      "torch.nn.LayerNorm",                None, "layer_norm_f16",      layer_norm_forward),
        case("layer_norm_bf16",     "torch.nn.LayerNorm",                None, "layer_norm_bf16",     layer_norm_forward),
        case("softmax",             "torch.nn.Softmax",                  None, "softmax",             softmax),
        case("gelu_erf",            "torch.nn.GELU",                     None, "gelu_erf",            gelu),
        case("gelu_tanh",           "torch.nn.GELU(approximate='tanh')", None, "gelu_tanh",           gelu),
        case("multihead_attention", "torch.nn.MultiheadAttention",       None, "multihead_attention", multihead_attention),
        case("two_layer_mlp",       "torch.nn.Sequential",               None, "two_layer_mlp",       two_layer_mlp),
    ]
}

/// That a config's size is the one the weights have (the case takes its sizes from them).
fn same_size(bundle: &Bundle, field: &str, config: usize, weights: usize, what: &str) -> Result<()> {
    if config != weights {
        return Err(bundle.config_error(field, format!("{what} is {weights}, got {config}")));
    }
    Ok(())
}

/// `torch.nn.Linear(in_features, out_features, bias)`.
fn linear(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        in_features: usize,
        out_features: usize,
        #[serde(default = "yes")]
        bias: bool,
    }
    impl Args {
        fn linear(&self) -> LinearConfig {
            LinearConfig {
                bias: self.bias,
                ..LinearConfig::new(self.in_features, self.out_features)
            }
        }
    }
    impl ConfigCheck for Args {
        fn validate(&self) -> std::result::Result<(), String> {
            self.linear().validate()
        }

        fn footprint(&self, work: &Workload) -> Footprint {
            self.linear().footprint(work)
        }
    }
    let args: Args = bundle.config()?;
    let mut run = Parity::new(bundle)?;
    let weight = run.param("weight")?;
    let (out_features, in_features) = weight.dims2()?;
    same_size(
        bundle,
        "in_features",
        args.in_features,
        in_features,
        "the weight's input width",
    )?;
    same_size(
        bundle,
        "out_features",
        args.out_features,
        out_features,
        "the weight's output width",
    )?;
    let bias = if args.bias { Some(run.param("bias")?) } else { None };
    let layer = Linear::new(weight, bias);
    let y = layer.forward(&run.input("0")?)?;
    run.check_outputs_and_gradients(&[("0", &y)])?;
    Ok(run.finish())
}

/// `torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)` over the last dimension.
#[derive(Deserialize)]
struct LayerNormArgs {
    normalized_shape: NormalizedShape,
    #[serde(default = "default_eps")]
    eps: f64,
    #[serde(default = "yes")]
    elementwise_affine: bool,
    #[serde(default = "yes")]
    bias: bool,
}

/// Torch takes an int or a list of ints.
#[derive(Deserialize)]
#[serde(untagged)]
enum NormalizedShape {
    One(usize),
    Many(Vec<usize>),
}

fn default_eps() -> f64 {
    1e-5
}

impl NormalizedShape {
    fn dims(&self) -> Vec<usize> {
        match self {
            NormalizedShape::One(n) => vec![*n],
            NormalizedShape::Many(dims) => dims.clone(),
        }
    }
}

impl ConfigCheck for LayerNormArgs {
    fn validate(&self) -> std::result::Result<(), String> {
        for (i, &n) in self.normalized_shape.dims().iter().enumerate() {
            all_positive(&[(&format!("normalized_shape.{i}"), n)])?;
        }
        non_negative("eps", self.eps)
    }

    /// The weight and bias over the normalised shape, and a few copies of the input
    /// (the composed norm for the gradients).
    fn footprint(&self, work: &Workload) -> Footprint {
        let dims = self.normalized_shape.dims();
        let features: Size = dims
            .iter()
            .enumerate()
            .map(|(i, &n)| Size::field(&format!("normalized_shape.{i}"), n))
            .fold(Size::count(1), |product, n| product * n);
        Footprint {
            params: work.bytes(features * 2),
            activations: work.bytes(work.elements() * 6),
        }
    }
}

/// The epsilon, after refusing what the case does not compute: a norm over more than
/// the last dimension, or one without its weight and bias.
fn layer_norm_eps(bundle: &Bundle, x: &Tensor) -> Result<f64> {
    let args: LayerNormArgs = bundle.config()?;
    let shape = args.normalized_shape.dims();
    let last = x.dim(D::Minus1)?;
    if shape != [last] {
        return Err(bundle.config_error(
            "normalized_shape",
            format!("this case normalises the last dimension: expected [{last}], got {shape:?}"),
        ));
    }
    for (field, set) in [("elementwise_affine", args.elementwise_affine), ("bias", args.bias)] {
        if !set {
            return Err(bundle.config_error(field, "this case applies a weight and a bias: expected true, got false"));
        }
    }
    Ok(args.eps)
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
    let eps = layer_norm_eps(bundle, &x)?;
    let fused = candle_nn::ops::layer_norm(&x, &w, &b, eps as f32)?;
    run.check_outputs_of("fused candle_nn::ops::layer_norm", &[("0", &fused)]);
    let composed = composed_layer_norm(&x, &w, &b, eps)?;
    run.check_outputs_and_gradients(&[("0", &composed)])?;
    Ok(run.finish())
}

/// Half-precision LayerNorm: candle's fused op in the bundle's dtype, against
/// torch's module run in that dtype.
fn layer_norm_forward(bundle: &Bundle) -> Result<Report> {
    let mut run = Parity::new(bundle)?;
    let (x, w, b) = (run.input("0")?, run.param("weight")?, run.param("bias")?);
    let y = candle_nn::ops::layer_norm(&x, &w, &b, layer_norm_eps(bundle, &x)? as f32)?;
    run.check_outputs_and_gradients(&[("0", &y)])?;
    Ok(run.finish())
}

/// `torch.nn.Softmax(dim)`; candle's fused op is over the last dimension, which the case checks.
fn softmax(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        dim: i64,
    }
    impl ConfigCheck for Args {
        /// The fused and the composed softmax, and the gradient.
        fn footprint(&self, work: &Workload) -> Footprint {
            Footprint::activations(work.bytes(work.elements() * 6))
        }
    }
    let args: Args = bundle.config()?;
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    let rank = x.rank() as i64;
    if args.dim != -1 && args.dim != rank - 1 {
        return Err(bundle.config_error(
            "dim",
            format!(
                "this case checks softmax over the last dimension: expected -1 or {}, got {}",
                rank - 1,
                args.dim
            ),
        ));
    }
    let fused = candle_nn::ops::softmax_last_dim(&x)?;
    run.check_outputs_of("fused candle_nn::ops::softmax_last_dim", &[("0", &fused)]);
    let composed = candle_nn::ops::softmax(&x, D::Minus1)?;
    run.check_outputs_and_gradients(&[("0", &composed)])?;
    Ok(run.finish())
}

/// `torch.nn.GELU(approximate)`: candle's `gelu_erf` for `"none"`, `gelu` (tanh) for `"tanh"`.
fn gelu(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        #[serde(default = "exact")]
        approximate: String,
    }
    fn exact() -> String {
        "none".into()
    }
    impl ConfigCheck for Args {
        fn footprint(&self, work: &Workload) -> Footprint {
            Footprint::activations(work.bytes(work.elements() * 4))
        }
    }
    let args: Args = bundle.config()?;
    let op = match args.approximate.as_str() {
        "none" => Tensor::gelu_erf,
        "tanh" => Tensor::gelu,
        other => {
            return Err(bundle.config_error("approximate", format!("expected \"none\" or \"tanh\", got {other:?}")))
        }
    };
    let mut run = Parity::new(bundle)?;
    let y = op(&run.input("0")?)?;
    run.check_outputs_and_gradients(&[("0", &y)])?;
    Ok(run.finish())
}

/// `nn.MultiheadAttention` (batch first, self-attention) from candle ops. The
/// fused `in_proj_weight` is split into Q, K and V by a weight map, and the
/// weights are built through the strict loader so a naming slip is reported.
fn multihead_attention(bundle: &Bundle) -> Result<Report> {
    /// The call: `attn(x, x, x, need_weights, average_attn_weights)`.
    #[derive(Deserialize)]
    struct Call {
        query_key_value: String,
        #[serde(default = "yes")]
        need_weights: bool,
        #[serde(default = "yes")]
        average_attn_weights: bool,
    }
    sizeless_config!(Call);
    let (module, call): (MultiheadArgs, Call) = bundle.config_parts(&[])?;
    module.check(bundle)?;
    if module.kdim.is_some_and(|kdim| kdim != module.embed_dim) {
        return Err(bundle.config_error("kdim", "this case is self-attention: kdim must be null or embed_dim"));
    }
    if !module.bias {
        return Err(bundle.config_error("bias", "the projections have biases: expected true, got false"));
    }
    if call.query_key_value != "same input" {
        return Err(bundle.config_error(
            "query_key_value",
            format!(
                "this case is self-attention: expected \"same input\", got {:?}",
                call.query_key_value
            ),
        ));
    }
    if !call.need_weights || call.average_attn_weights {
        let field = if call.need_weights {
            "average_attn_weights"
        } else {
            "need_weights"
        };
        return Err(bundle.config_error(
            field,
            "the case checks the per-head weights (need_weights true, average_attn_weights false)",
        ));
    }
    let mut run = Parity::new(bundle)?;
    let heads = module.num_heads;
    let map = WeightMap::new()
        .rename(r"^attn\.", "")
        .split(r"^in_proj_(weight|bias)$", 0, &["q.$1", "k.$1", "v.$1"]);
    let weights = map.apply(run.params().clone(), bundle.origin())?;
    let attention = weights.build(DType::F32, &candle_core::Device::Cpu, |vb| {
        SelfAttention::new(vb, heads)
    })?;
    same_size(bundle, "embed_dim", module.embed_dim, attention.dim, "out_proj's width")?;
    if heads == 0 || module.embed_dim % heads != 0 {
        return Err(bundle.config_error(
            "num_heads",
            format!("must divide embed_dim {}, got {heads}", module.embed_dim),
        ));
    }
    let x = run.input("0")?;
    // The fixture's wrapper calls its `attn` submodule, whose hook records the pair.
    let ((out, probs), _) = run.traced(Unmatched::NONE, || {
        let (out, probs) = attention.forward(&x)?;
        tap_tuple("attn", &[&out, &probs]);
        Ok((out, probs))
    })?;
    run.check_outputs_and_gradients(&[("0", &out), ("1", &probs)])?;
    Ok(run.finish())
}

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    dim: usize,
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
            dim,
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
    #[derive(Deserialize)]
    struct Args {
        activation: String,
        sizes: Vec<usize>,
    }
    impl Args {
        fn widths(&self) -> Vec<Size> {
            let field = |i: usize, n: usize| Size::field(&format!("sizes.{i}"), n);
            self.sizes.iter().enumerate().map(|(i, &n)| field(i, n)).collect()
        }
    }
    impl ConfigCheck for Args {
        fn validate(&self) -> std::result::Result<(), String> {
            if self.sizes.len() != 3 {
                return Err(format!(
                    "`sizes` must be the three widths [in, hidden, out], got {} numbers",
                    self.sizes.len()
                ));
            }
            for (i, &n) in self.sizes.iter().enumerate() {
                all_positive(&[(&format!("sizes.{i}"), n)])?;
            }
            Ok(())
        }

        /// Two layers with biases; per row every width, twice.
        fn footprint(&self, work: &Workload) -> Footprint {
            let [a, b, c] =
                <[Size; 3]>::try_from(self.widths()).unwrap_or_else(|_| std::array::from_fn(|_| Size::ZERO));
            Footprint {
                params: work.bytes(a.clone() * b.clone() + b.clone() * c.clone() + b.clone() + c.clone()),
                activations: work.bytes(work.rows() * (a + b + c) * 2),
            }
        }
    }
    let args: Args = bundle.config()?;
    if args.activation != "gelu" {
        return Err(bundle.config_error(
            "activation",
            format!(
                "the case applies exact GELU: expected \"gelu\", got {:?}",
                args.activation
            ),
        ));
    }
    let mut run = Parity::new(bundle)?;
    let (w1, w2) = (run.param("0.weight")?, run.param("2.weight")?);
    let sizes = vec![w1.dim(1)?, w1.dim(0)?, w2.dim(0)?];
    if args.sizes != sizes {
        return Err(bundle.config_error(
            "sizes",
            format!("the weights' widths are {sizes:?}, got {:?}", args.sizes),
        ));
    }
    let fc1 = Linear::new(w1, Some(run.param("0.bias")?));
    let fc2 = Linear::new(w2, Some(run.param("2.bias")?));
    let x = run.input("0")?;
    let (y, _) = run.traced(Unmatched::NONE, || {
        let h = fc1.forward(&x)?;
        tap("0", &h);
        let h = h.gelu_erf()?;
        tap("1", &h);
        let y = fc2.forward(&h)?;
        tap("2", &y);
        Ok(y)
    })?;
    run.check_outputs_and_gradients(&[("0", &y)])?;
    Ok(run.finish())
}
