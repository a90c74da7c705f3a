//! GELU (Hendrycks & Gimpel, arXiv 1606.08415) with erf or tanh, SiLU (Elfwing et
//! al., arXiv 1702.03118), and the gated units SwiGLU and GeGLU (Shazeer, arXiv
//! 2002.05202), forward and backward, elementwise and vectorised.
//!
//! Numerics: GELU-erf is `x · Φ(x)` with `Φ` from a rational `erf` (absolute error
//! below 4e-7, as PyTorch's vectorised `erf`); GELU-tanh uses the identity
//! `(1 + tanh(u)) / 2 = σ(2u)`, which avoids `1 + tanh(u)` cancelling for negative `x`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{self, Route};
use crate::simd::{self, load_n, store_n, Simd};
use crate::simd_dispatch;

/// Which GELU: the exact one with `erf` (`torch.nn.GELU()`), or the tanh
/// approximation (`GELU(approximate="tanh")`, HF `gelu_new` / `gelu_pytorch_tanh`).
/// Which GELU: the exact one or the tanh approximation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeluApprox {
    /// `x * Φ(x)` with the error function (PyTorch's default, HF `gelu`).
    #[default]
    Erf,
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` (HF `gelu_new`, `gelu_pytorch_tanh`).
    Tanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    GeluErf,
    GeluTanh,
    Silu,
}

impl Act {
    fn gelu(approx: GeluApprox) -> Self {
        match approx {
            GeluApprox::Erf => Act::GeluErf,
            GeluApprox::Tanh => Act::GeluTanh,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Act::GeluErf => "gelu_erf",
            Act::GeluTanh => "gelu_tanh",
            Act::Silu => "silu",
        }
    }

    fn reference(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Act::GeluErf => crate::reference::gelu_erf(x),
            Act::GeluTanh => crate::reference::gelu_tanh(x),
            Act::Silu => crate::reference::silu(x),
        }
    }
}

/// GELU with `erf`: `x · Φ(x)`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    unary(Act::GeluErf, x)
}

/// GELU, tanh approximation: `x · (1 + tanh(√(2/π) (x + 0.044715 x³))) / 2`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    unary(Act::GeluTanh, x)
}

/// GELU of either kind.
pub fn gelu(x: &Tensor, approx: GeluApprox) -> Result<Tensor> {
    unary(Act::gelu(approx), x)
}

/// SiLU (swish): `x · σ(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary(Act::Silu, x)
}

/// SwiGLU gating: `silu(gate) · up` (LLaMA's MLP, timm `SwiGLU`), for two tensors of one shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    glu(Act::Silu, gate, up)
}

/// GeGLU gating: `gelu(gate) · up`, for two tensors of one shape.
pub fn geglu(gate: &Tensor, up: &Tensor, approx: GeluApprox) -> Result<Tensor> {
    glu(Act::gelu(approx), gate, up)
}

fn unary(act: Act, x: &Tensor) -> Result<Tensor> {
    match cpu::route(act.name(), x)? {
        Route::Composition => act.reference(x),
        Route::Kernel => x.contiguous()?.apply_op1(UnaryOp { act }),
        Route::KernelViaF32 => x.to_dtype(DType::F32)?.apply_op1(UnaryOp { act })?.to_dtype(x.dtype()),
    }
}

fn glu(act: Act, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let op = match act {
        Act::Silu => "swiglu",
        _ => "geglu",
    };
    cpu::same_kind(op, gate, &[("up", up)])?;
    if gate.shape() != up.shape() {
        candle_core::bail!(
            "{op}: gate {:?} and up {:?} must have the same shape",
            gate.dims(),
            up.dims()
        )
    }
    match cpu::route(op, gate)? {
        Route::Composition => act.reference(gate)? * up,
        Route::Kernel => gate.contiguous()?.apply_op2(&up.contiguous()?, GluOp { act }),
        Route::KernelViaF32 => gate
            .to_dtype(DType::F32)?
            .apply_op2(&up.to_dtype(DType::F32)?, GluOp { act })?
            .to_dtype(gate.dtype()),
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_TANH_C: f32 = 0.044_715;
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// An activation's value and derivative on a vector, chosen at compile time so
/// that the element loops carry no branch.
trait Activation {
    fn value<S: Simd>(x: S::V) -> S::V;
    fn value_and_grad<S: Simd>(x: S::V) -> (S::V, S::V);
}

struct GeluErf;
struct GeluTanh;
struct Silu;

impl Activation for GeluErf {
    #[inline(always)]
    fn value<S: Simd>(x: S::V) -> S::V {
        S::mul(x, simd::normal_cdf::<S>(x))
    }
    #[inline(always)]
    fn value_and_grad<S: Simd>(x: S::V) -> (S::V, S::V) {
        let cdf = simd::normal_cdf::<S>(x);
        // Φ(x) + x φ(x), φ(x) = e^{-x²/2} / √(2π)
        let pdf = S::mul(
            simd::exp::<S>(S::mul(S::mul(x, x), S::splat(-0.5))),
            S::splat(INV_SQRT_2PI),
        );
        (S::mul(x, cdf), S::fma(x, pdf, cdf))
    }
}

impl GeluTanh {
    /// `(x², σ(2u))` with `u = √(2/π) (x + c x³)`: `(1 + tanh u) / 2 = σ(2u)`.
    #[inline(always)]
    fn gate<S: Simd>(x: S::V) -> (S::V, S::V) {
        let x2 = S::mul(x, x);
        let u2 = S::mul(
            S::mul(x, S::fma(x2, S::splat(GELU_TANH_C), S::splat(1.0))),
            S::splat(2.0 * SQRT_2_OVER_PI),
        );
        (x2, simd::sigmoid::<S>(u2))
    }
}

impl Activation for GeluTanh {
    #[inline(always)]
    fn value<S: Simd>(x: S::V) -> S::V {
        S::mul(x, Self::gate::<S>(x).1)
    }
    #[inline(always)]
    fn value_and_grad<S: Simd>(x: S::V) -> (S::V, S::V) {
        let one = S::splat(1.0);
        let (x2, s) = Self::gate::<S>(x);
        // d/dx [x σ(2u)] = σ + x σ (1 - σ) 2 u',  u' = √(2/π) (1 + 3 c x²)
        let du = S::mul(
            S::fma(x2, S::splat(3.0 * GELU_TANH_C), one),
            S::splat(2.0 * SQRT_2_OVER_PI),
        );
        let ds = S::mul(S::mul(s, S::sub(one, s)), du);
        (S::mul(x, s), S::fma(x, ds, s))
    }
}

impl Activation for Silu {
    #[inline(always)]
    fn value<S: Simd>(x: S::V) -> S::V {
        S::mul(x, simd::sigmoid::<S>(x))
    }
    #[inline(always)]
    fn value_and_grad<S: Simd>(x: S::V) -> (S::V, S::V) {
        let one = S::splat(1.0);
        let s = simd::sigmoid::<S>(x);
        // σ (1 + x (1 - σ))
        (S::mul(x, s), S::mul(s, S::fma(x, S::sub(one, s), one)))
    }
}

/// The element-wise kernels, on `out.len()` elements starting at `first`:
/// forward (`g` absent; `up` for a GLU) or backward (`g` present).
struct Elementwise<'a> {
    act: Act,
    x: &'a [f32],
    up: Option<&'a [f32]>,
    g: Option<&'a [f32]>,
}

/// Runs `$body(i, len)` over the vectors of `$n` elements, four full vectors per
/// iteration (independent dependency chains: the latency of exp and its
/// polynomials, not the FMA throughput, bounds a single chain), then the rest
/// one (possibly partial) vector at a time.
macro_rules! vector_loop {
    ($n:expr, |$i:ident, $len:ident| $body:block) => {{
        let n = $n;
        let mut start = 0;
        while start + 4 * S::LANES <= n {
            for k in 0..4 {
                let ($i, $len) = (start + k * S::LANES, S::LANES);
                $body
            }
            start += 4 * S::LANES;
        }
        while start < n {
            let ($i, $len) = (start, n - start);
            $body
            start += S::LANES;
        }
    }};
}

#[inline(always)]
fn forward_loop<S: Simd, A: Activation>(x: &[f32], up: Option<&[f32]>, out: &mut [f32]) {
    let (xp, yp) = (x.as_ptr(), out.as_mut_ptr());
    unsafe {
        match up {
            None => vector_loop!(out.len(), |i, len| {
                store_n::<S>(yp.add(i), len, A::value::<S>(load_n::<S>(xp.add(i), len, 0.0)));
            }),
            Some(u) => {
                let up = u.as_ptr();
                vector_loop!(out.len(), |i, len| {
                    let y = A::value::<S>(load_n::<S>(xp.add(i), len, 0.0));
                    store_n::<S>(yp.add(i), len, S::mul(y, load_n::<S>(up.add(i), len, 0.0)));
                })
            }
        }
    }
}

#[inline(always)]
fn forward_chunk<S: Simd>(e: &Elementwise<'_>, first: usize, out: &mut [f32]) {
    let x = &e.x[first..first + out.len()];
    let up = e.up.map(|u| &u[first..first + out.len()]);
    match e.act {
        Act::GeluErf => forward_loop::<S, GeluErf>(x, up, out),
        Act::GeluTanh => forward_loop::<S, GeluTanh>(x, up, out),
        Act::Silu => forward_loop::<S, Silu>(x, up, out),
    }
}

simd_dispatch!(fn forward_chunk_dispatch(e: &Elementwise<'_>, first: usize, out: &mut [f32]) => forward_chunk);

/// `dx = g · f'(x)`.
#[inline(always)]
fn backward_loop<S: Simd, A: Activation>(x: &[f32], g: &[f32], out: &mut [f32]) {
    let (xp, gp, dp) = (x.as_ptr(), g.as_ptr(), out.as_mut_ptr());
    unsafe {
        vector_loop!(out.len(), |i, len| {
            let (_, d) = A::value_and_grad::<S>(load_n::<S>(xp.add(i), len, 0.0));
            store_n::<S>(dp.add(i), len, S::mul(d, load_n::<S>(gp.add(i), len, 0.0)));
        })
    }
}

/// Backward of a plain activation.
#[inline(always)]
fn backward_chunk<S: Simd>(e: &Elementwise<'_>, first: usize, out: &mut [f32]) {
    let n = out.len();
    let x = &e.x[first..first + n];
    let g = &e.g.expect("backward has an upstream gradient")[first..first + n];
    match e.act {
        Act::GeluErf => backward_loop::<S, GeluErf>(x, g, out),
        Act::GeluTanh => backward_loop::<S, GeluTanh>(x, g, out),
        Act::Silu => backward_loop::<S, Silu>(x, g, out),
    }
}

simd_dispatch!(fn backward_chunk_dispatch(e: &Elementwise<'_>, first: usize, out: &mut [f32]) => backward_chunk);

/// `dgate = g · up · f'(gate)`, `dup = g · f(gate)`.
#[inline(always)]
fn glu_backward_loop<S: Simd, A: Activation>(x: &[f32], up: &[f32], g: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    let (xp, upp, gp) = (x.as_ptr(), up.as_ptr(), g.as_ptr());
    let (dgp, dup_p) = (dgate.as_mut_ptr(), dup.as_mut_ptr());
    unsafe {
        vector_loop!(dgate.len(), |i, len| {
            let (y, d) = A::value_and_grad::<S>(load_n::<S>(xp.add(i), len, 0.0));
            let gv = load_n::<S>(gp.add(i), len, 0.0);
            let uv = load_n::<S>(upp.add(i), len, 0.0);
            store_n::<S>(dgp.add(i), len, S::mul(S::mul(gv, uv), d));
            store_n::<S>(dup_p.add(i), len, S::mul(gv, y));
        })
    }
}

/// Backward of a GLU.
#[inline(always)]
fn glu_backward_chunk<S: Simd>(e: &Elementwise<'_>, first: usize, dgate: &mut [f32], dup: &mut [f32]) {
    let n = dgate.len();
    let x = &e.x[first..first + n];
    let up = &e.up.expect("a GLU has an up projection")[first..first + n];
    let g = &e.g.expect("backward has an upstream gradient")[first..first + n];
    match e.act {
        Act::GeluErf => glu_backward_loop::<S, GeluErf>(x, up, g, dgate, dup),
        Act::GeluTanh => glu_backward_loop::<S, GeluTanh>(x, up, g, dgate, dup),
        Act::Silu => glu_backward_loop::<S, Silu>(x, up, g, dgate, dup),
    }
}

simd_dispatch!(fn glu_backward_chunk_dispatch(e: &Elementwise<'_>, first: usize, dgate: &mut [f32], dup: &mut [f32]) => glu_backward_chunk);

/// Rough cost of one element, in units of a load-store (for the parallel threshold).
const ELEMENT_COST: usize = 8;

fn run_forward(e: &Elementwise<'_>, shape: &Shape) -> Result<(CpuStorage, Shape)> {
    let mut y = cpu::output_buffer(e.x.len());
    cpu::for_row_chunks(&mut y, 1, ELEMENT_COST, |first, out| {
        forward_chunk_dispatch(e, first, out)
    });
    Ok((CpuStorage::F32(y), shape.clone()))
}

fn unary_backward(act: Act, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let op = act.name();
    cpu::with_f32(op, x, |xs| {
        cpu::with_f32(op, g, |gs| {
            let e = Elementwise {
                act,
                x: xs,
                up: None,
                g: Some(gs),
            };
            let mut dx = cpu::output_buffer(xs.len());
            cpu::for_row_chunks(&mut dx, 1, ELEMENT_COST, |first, out| {
                backward_chunk_dispatch(&e, first, out)
            });
            cpu::from_vec(dx, x.shape())
        })
    })
}

fn glu_backward(act: Act, gate: &Tensor, up: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = act.name();
    cpu::with_f32(op, gate, |xs| {
        cpu::with_f32(op, up, |us| {
            cpu::with_f32(op, g, |gs| {
                let e = Elementwise {
                    act,
                    x: xs,
                    up: Some(us),
                    g: Some(gs),
                };
                let (mut dgate, mut dup) = (cpu::output_buffer(xs.len()), cpu::output_buffer(xs.len()));
                let tasks = cpu::tasks_for(xs.len(), ELEMENT_COST);
                if tasks == 1 {
                    glu_backward_chunk_dispatch(&e, 0, &mut dgate, &mut dup);
                } else {
                    let chunk = xs.len().div_ceil(tasks);
                    dgate
                        .par_chunks_mut(chunk)
                        .zip(dup.par_chunks_mut(chunk))
                        .enumerate()
                        .for_each(|(i, (dg, du))| glu_backward_chunk_dispatch(&e, i * chunk, dg, du));
                }
                Ok((cpu::from_vec(dgate, gate.shape())?, cpu::from_vec(dup, up.shape())?))
            })
        })
    })
}

struct UnaryOp {
    act: Act,
}

impl CustomOp1 for UnaryOp {
    fn name(&self) -> &'static str {
        self.act.name()
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let e = Elementwise {
            act: self.act,
            x: cpu::f32_slice(self.name(), storage, layout)?,
            up: None,
            g: None,
        };
        run_forward(&e, layout.shape())
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(unary_backward(self.act, x, g)?))
    }
}

struct GluOp {
    act: Act,
}

impl CustomOp2 for GluOp {
    fn name(&self) -> &'static str {
        match self.act {
            Act::Silu => "swiglu",
            _ => "geglu",
        }
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let e = Elementwise {
            act: self.act,
            x: cpu::f32_slice(self.name(), s1, l1)?,
            up: Some(cpu::f32_slice(self.name(), s2, l2)?),
            g: None,
        };
        run_forward(&e, l1.shape())
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dgate, dup) = glu_backward(self.act, gate, up, g)?;
        Ok((Some(dgate), Some(dup)))
    }
}
