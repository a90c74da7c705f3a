//! GELU (Hendrycks & Gimpel, arXiv 1606.08415) with erf or tanh, SiLU (Elfwing et
//! al., arXiv 1702.03118), and the gated units SwiGLU and GeGLU (Shazeer, arXiv
//! 2002.05202), forward and backward, elementwise and vectorised.
//!
//! Numerics: GELU-erf uses `x · Φ(x)` with `Φ` from a relative-accurate `erfc`, so
//! the negative tail keeps its relative precision; GELU-tanh uses the identity
//! `(1 + tanh(u)) / 2 = σ(2u)`, which avoids `1 + tanh(u)` cancelling for negative `x`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{self, Route};
use crate::simd::{self, load_partial, store_partial, Simd, LANES};
use crate::simd_dispatch;

/// Which GELU: the exact one with `erf` (`torch.nn.GELU()`), or the tanh
/// approximation (`GELU(approximate="tanh")`, HF `gelu_new` / `gelu_pytorch_tanh`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeluApprox {
    #[default]
    Erf,
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

/// `(f(x), f'(x))` of an activation; `want_d` skips the derivative in the forward.
#[inline(always)]
fn act_value_and_grad<S: Simd>(act: Act, x: S::V, want_d: bool) -> (S::V, S::V) {
    let one = S::splat(1.0);
    match act {
        Act::GeluErf => {
            let cdf = simd::normal_cdf::<S>(x);
            let y = S::mul(x, cdf);
            if !want_d {
                return (y, y);
            }
            // Φ(x) + x φ(x), φ(x) = e^{-x²/2} / √(2π)
            let pdf = S::mul(
                simd::exp::<S>(S::mul(S::mul(x, x), S::splat(-0.5))),
                S::splat(INV_SQRT_2PI),
            );
            (y, S::fma(x, pdf, cdf))
        }
        Act::GeluTanh => {
            // u = √(2/π) (x + c x³); (1 + tanh u) / 2 = σ(2u)
            let x2 = S::mul(x, x);
            let u = S::mul(
                S::mul(x, S::fma(x2, S::splat(GELU_TANH_C), one)),
                S::splat(SQRT_2_OVER_PI),
            );
            let s = simd::sigmoid::<S>(S::add(u, u));
            let y = S::mul(x, s);
            if !want_d {
                return (y, y);
            }
            // d/dx [x σ(2u)] = σ + x σ (1 - σ) 2 u',  u' = √(2/π) (1 + 3 c x²)
            let du = S::mul(
                S::fma(x2, S::splat(3.0 * GELU_TANH_C), one),
                S::splat(2.0 * SQRT_2_OVER_PI),
            );
            let ds = S::mul(S::mul(s, S::sub(one, s)), du);
            (y, S::fma(x, ds, s))
        }
        Act::Silu => {
            let s = simd::sigmoid::<S>(x);
            let y = S::mul(x, s);
            if !want_d {
                return (y, y);
            }
            // σ (1 + x (1 - σ))
            (y, S::mul(s, S::fma(x, S::sub(one, s), one)))
        }
    }
}

/// Applies `f` to `LANES`-wide slices of `n` elements: full vectors, then one padded tail.
#[inline(always)]
unsafe fn for_vectors<S: Simd>(n: usize, mut f: impl FnMut(usize, usize)) {
    let body = n - n % LANES;
    let mut i = 0;
    while i < body {
        f(i, LANES);
        i += LANES;
    }
    if i < n {
        f(i, n - i);
    }
}

#[inline(always)]
unsafe fn load_n<S: Simd>(p: *const f32, len: usize) -> S::V {
    if len == LANES {
        S::load(p)
    } else {
        load_partial::<S>(p, len, 0.0)
    }
}

#[inline(always)]
unsafe fn store_n<S: Simd>(p: *mut f32, len: usize, v: S::V) {
    if len == LANES {
        S::store(p, v)
    } else {
        store_partial::<S>(p, len, v)
    }
}

/// The element-wise kernels, on `out.len()` elements starting at `first`:
/// forward (`g`, `up` absent / `up` for a GLU) or backward (`g` present).
struct Elementwise<'a> {
    act: Act,
    x: &'a [f32],
    up: Option<&'a [f32]>,
    g: Option<&'a [f32]>,
}

#[inline(always)]
fn forward_chunk<S: Simd>(e: &Elementwise<'_>, first: usize, out: &mut [f32]) {
    let x = &e.x[first..first + out.len()];
    let up = e.up.map(|u| &u[first..first + out.len()]);
    let yp = out.as_mut_ptr();
    unsafe {
        for_vectors::<S>(out.len(), |i, len| {
            let (y, _) = act_value_and_grad::<S>(e.act, load_n::<S>(x.as_ptr().add(i), len), false);
            let y = match up {
                Some(u) => S::mul(y, load_n::<S>(u.as_ptr().add(i), len)),
                None => y,
            };
            store_n::<S>(yp.add(i), len, y);
        });
    }
}

simd_dispatch!(fn forward_chunk_dispatch(e: &Elementwise<'_>, first: usize, out: &mut [f32]) => forward_chunk);

/// Backward of a plain activation: `dx = g · f'(x)`.
#[inline(always)]
fn backward_chunk<S: Simd>(e: &Elementwise<'_>, first: usize, out: &mut [f32]) {
    let n = out.len();
    let x = &e.x[first..first + n];
    let g = &e.g.expect("backward has an upstream gradient")[first..first + n];
    let dp = out.as_mut_ptr();
    unsafe {
        for_vectors::<S>(n, |i, len| {
            let (_, d) = act_value_and_grad::<S>(e.act, load_n::<S>(x.as_ptr().add(i), len), true);
            store_n::<S>(dp.add(i), len, S::mul(d, load_n::<S>(g.as_ptr().add(i), len)));
        });
    }
}

simd_dispatch!(fn backward_chunk_dispatch(e: &Elementwise<'_>, first: usize, out: &mut [f32]) => backward_chunk);

/// Backward of a GLU: `dgate = g · up · f'(gate)`, `dup = g · f(gate)`.
#[inline(always)]
fn glu_backward_chunk<S: Simd>(e: &Elementwise<'_>, first: usize, dgate: &mut [f32], dup: &mut [f32]) {
    let n = dgate.len();
    let x = &e.x[first..first + n];
    let up = &e.up.expect("a GLU has an up projection")[first..first + n];
    let g = &e.g.expect("backward has an upstream gradient")[first..first + n];
    let (dgp, dup_p) = (dgate.as_mut_ptr(), dup.as_mut_ptr());
    unsafe {
        for_vectors::<S>(n, |i, len| {
            let (y, d) = act_value_and_grad::<S>(e.act, load_n::<S>(x.as_ptr().add(i), len), true);
            let gv = load_n::<S>(g.as_ptr().add(i), len);
            let uv = load_n::<S>(up.as_ptr().add(i), len);
            store_n::<S>(dgp.add(i), len, S::mul(S::mul(gv, uv), d));
            store_n::<S>(dup_p.add(i), len, S::mul(gv, y));
        });
    }
}

simd_dispatch!(fn glu_backward_chunk_dispatch(e: &Elementwise<'_>, first: usize, dgate: &mut [f32], dup: &mut [f32]) => glu_backward_chunk);

/// Rough cost of one element, in units of a load-store (for the parallel threshold).
const ELEMENT_COST: usize = 8;

fn run_forward(e: &Elementwise<'_>, shape: &Shape) -> Result<(CpuStorage, Shape)> {
    let mut y = vec![0f32; e.x.len()];
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
            let mut dx = vec![0f32; xs.len()];
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
                let (mut dgate, mut dup) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
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
