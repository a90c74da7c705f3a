//! LayerNorm (Ba et al., arXiv 1607.06450) and RMSNorm (Zhang & Sennrich, arXiv
//! 1910.07467) over the last dimension, forward and backward (input, weight, bias).
//!
//! The variance is computed in two passes, `mean((x - mean)²)`, never as
//! `E[x²] - mean²`, which cancels catastrophically when `|mean| ≫ std`. Each row
//! stays in L1 across its passes; the backward recomputes the row statistics
//! rather than storing them, and sums the weight and bias gradients per task.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

use crate::cpu::{self, Route};
use crate::simd::{load_partial, store_partial, Simd, LANES};
use crate::simd_dispatch;

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) · weight + bias`,
/// `var` the biased variance, as `torch.nn.LayerNorm`.
///
/// `weight` and `bias` are `[n]` for an input whose last dimension is `n`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let route = cpu::route(OP, x)?;
    check_param(OP, "weight", x, weight)?;
    if let Some(b) = bias {
        check_param(OP, "bias", x, b)?;
    }
    match route {
        Route::Composition => crate::reference::layer_norm(x, weight, bias, eps),
        Route::Kernel => layer_norm_f32(x, weight, bias, eps),
        Route::KernelViaF32 => {
            let f32 = |t: &Tensor| t.to_dtype(DType::F32);
            let bias = bias.map(f32).transpose()?;
            layer_norm_f32(&f32(x)?, &f32(weight)?, bias.as_ref(), eps)?.to_dtype(x.dtype())
        }
    }
}

fn layer_norm_f32(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => weight.zeros_like()?.detach(),
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias, LayerNormOp { eps: eps as f32 })
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) · weight`, as HF
/// `LlamaRMSNorm` (which computes in f32 for half inputs, as here).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    let route = cpu::route(OP, x)?;
    check_param(OP, "weight", x, weight)?;
    match route {
        Route::Composition => crate::reference::rms_norm(x, weight, eps),
        Route::Kernel => rms_norm_f32(x, weight, eps),
        Route::KernelViaF32 => {
            rms_norm_f32(&x.to_dtype(DType::F32)?, &weight.to_dtype(DType::F32)?, eps)?.to_dtype(x.dtype())
        }
    }
}

fn rms_norm_f32(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNormOp { eps: eps as f32 })
}

fn check_param(op: &str, name: &str, x: &Tensor, p: &Tensor) -> Result<()> {
    cpu::same_kind(op, x, &[(name, p)])?;
    let n = x
        .dim(D::Minus1)
        .map_err(|_| candle_core::Error::Msg(format!("{op}: the input is a scalar")))?;
    if p.dims() != [n] {
        bail!(
            "{op}: {name} must have shape [{n}] for an input of shape {:?}, got {:?}",
            x.dims(),
            p.dims()
        )
    }
    Ok(())
}

/// The inputs of one norm call.
struct Norm<'a> {
    x: &'a [f32],
    w: &'a [f32],
    b: Option<&'a [f32]>,
    n: usize,
    eps: f32,
    rms: bool,
}

/// Σ f(i) over vectors of a row, with two accumulators; `tail` gives the last partial vector.
#[inline(always)]
unsafe fn row_sum<S: Simd>(n: usize, f: impl Fn(usize) -> S::V, tail: impl Fn(usize) -> S::V) -> f32 {
    let body = n - n % LANES;
    let (mut a0, mut a1) = (S::splat(0.0), S::splat(0.0));
    let mut i = 0;
    while i + 2 * LANES <= body {
        a0 = S::add(a0, f(i));
        a1 = S::add(a1, f(i + LANES));
        i += 2 * LANES;
    }
    if i < body {
        a0 = S::add(a0, f(i));
        i += LANES;
    }
    if i < n {
        a1 = S::add(a1, tail(i));
    }
    S::reduce_sum(S::add(a0, a1))
}

impl Norm<'_> {
    /// The row's statistics: `x - mean = (x - pivot) - offset`, and `1 / sqrt(var + eps)`.
    /// For RMSNorm pivot and offset are 0 and the "variance" is the mean square.
    ///
    /// The pivot is the row's first element: when `|mean| ≫ std` the differences
    /// `x - pivot` are exact and small, so neither the sum nor the centred values
    /// lose the digits that a mean rounded to f32 (near 1e4, say) would take away.
    #[inline(always)]
    unsafe fn stats<S: Simd>(&self, x: &[f32]) -> Centre {
        let n = self.n;
        let body = n - n % LANES;
        let p = x.as_ptr();
        let (pivot, offset) = if self.rms || n == 0 {
            (0.0, 0.0)
        } else {
            let pivot = x[0];
            let k = S::splat(pivot);
            let sum = row_sum::<S>(
                n,
                |i| S::sub(S::load(p.add(i)), k),
                |i| S::sub(load_partial::<S>(p.add(i), n - i, pivot), k),
            );
            (pivot, sum / n as f32)
        };
        let (pv, ov) = (S::splat(pivot), S::splat(offset));
        let sq = |v: S::V| {
            let c = S::sub(S::sub(v, pv), ov);
            S::mul(c, c)
        };
        let mut var = row_sum::<S>(body, |i| sq(S::load(p.add(i))), |_| S::splat(0.0));
        for &v in &x[body..] {
            let c = (v - pivot) - offset;
            var += c * c;
        }
        Centre {
            pivot,
            offset,
            rstd: 1.0 / (var / n as f32 + self.eps).sqrt(),
        }
    }
}

/// `x̂ = ((x - pivot) - offset) · rstd`.
#[derive(Clone, Copy)]
struct Centre {
    pivot: f32,
    offset: f32,
    rstd: f32,
}

impl Centre {
    #[inline(always)]
    fn normalise<S: Simd>(&self, v: S::V) -> S::V {
        S::mul(S::sub(S::sub(v, S::splat(self.pivot)), S::splat(self.offset)), S::splat(self.rstd))
    }
}

#[inline(always)]
fn forward_chunk<S: Simd>(a: &Norm<'_>, first: usize, out: &mut [f32]) {
    let n = a.n;
    for (i, y) in out.chunks_exact_mut(n).enumerate() {
        let x = &a.x[(first + i) * n..(first + i + 1) * n];
        unsafe {
            let centre = a.stats::<S>(x);
            let (xp, wp, yp) = (x.as_ptr(), a.w.as_ptr(), y.as_mut_ptr());
            let step = |i: usize, xv: S::V, wv: S::V| -> S::V {
                let h = centre.normalise::<S>(xv);
                match a.b {
                    Some(b) => {
                        let bv = if i + LANES <= n {
                            S::load(b.as_ptr().add(i))
                        } else {
                            load_partial::<S>(b.as_ptr().add(i), n - i, 0.0)
                        };
                        S::fma(h, wv, bv)
                    }
                    None => S::mul(h, wv),
                }
            };
            let body = n - n % LANES;
            let mut j = 0;
            while j < body {
                S::store(yp.add(j), step(j, S::load(xp.add(j)), S::load(wp.add(j))));
                j += LANES;
            }
            if j < n {
                let v = step(
                    j,
                    load_partial::<S>(xp.add(j), n - j, 0.0),
                    load_partial::<S>(wp.add(j), n - j, 0.0),
                );
                store_partial::<S>(yp.add(j), n - j, v);
            }
        }
    }
}

simd_dispatch!(fn forward_chunk_dispatch(a: &Norm<'_>, first: usize, out: &mut [f32]) => forward_chunk);

/// dx for a group of rows, accumulating dweight (and dbias) into `dw`, `db`.
///
/// With `x̂ = (x - mean) · rstd` and `ĝ = g · w`:
/// `dx = rstd · (ĝ - mean(ĝ) - x̂ · mean(ĝ · x̂))` (LayerNorm; RMSNorm drops `mean(ĝ)`),
/// `dw = Σ_rows g · x̂`, `db = Σ_rows g`.
#[inline(always)]
fn backward_chunk<S: Simd>(a: &Norm<'_>, g: &[f32], first: usize, dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) {
    let n = a.n;
    let body = n - n % LANES;
    for (i, dxr) in dx.chunks_exact_mut(n).enumerate() {
        let r = first + i;
        let (x, g) = (&a.x[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
        unsafe {
            let centre = a.stats::<S>(x);
            let rs = S::splat(centre.rstd);
            let (xp, gp, wp) = (x.as_ptr(), g.as_ptr(), a.w.as_ptr());
            let (dwp, dbp, dxp) = (dw.as_mut_ptr(), db.as_mut_ptr(), dxr.as_mut_ptr());
            // Pass 1: Σ ĝ and Σ ĝ·x̂, and the parameter gradients.
            let (mut s_g, mut s_gx) = (S::splat(0.0), S::splat(0.0));
            let mut accumulate = |xv: S::V, gv: S::V, wv: S::V, j: usize, full: bool| {
                let xh = centre.normalise::<S>(xv);
                let gh = S::mul(gv, wv);
                s_g = S::add(s_g, gh);
                s_gx = S::fma(gh, xh, s_gx);
                let rest = n - j;
                if full {
                    S::store(dwp.add(j), S::fma(gv, xh, S::load(dwp.add(j))));
                    if !a.rms {
                        S::store(dbp.add(j), S::add(gv, S::load(dbp.add(j))));
                    }
                } else {
                    store_partial::<S>(
                        dwp.add(j),
                        rest,
                        S::fma(gv, xh, load_partial::<S>(dwp.add(j), rest, 0.0)),
                    );
                    if !a.rms {
                        store_partial::<S>(dbp.add(j), rest, S::add(gv, load_partial::<S>(dbp.add(j), rest, 0.0)));
                    }
                }
            };
            let mut j = 0;
            while j < body {
                accumulate(S::load(xp.add(j)), S::load(gp.add(j)), S::load(wp.add(j)), j, true);
                j += LANES;
            }
            if j < n {
                // Padding: g = 0 and w = 0, so nothing is added.
                let xv = load_partial::<S>(xp.add(j), n - j, centre.pivot);
                accumulate(
                    xv,
                    load_partial::<S>(gp.add(j), n - j, 0.0),
                    load_partial::<S>(wp.add(j), n - j, 0.0),
                    j,
                    false,
                );
            }
            let inv_n = 1.0 / n as f32;
            let c_g = S::splat(if a.rms { 0.0 } else { S::reduce_sum(s_g) * inv_n });
            let c_gx = S::splat(S::reduce_sum(s_gx) * inv_n);
            // Pass 2: dx.
            let step = |xv: S::V, gv: S::V, wv: S::V| -> S::V {
                let xh = centre.normalise::<S>(xv);
                let gh = S::mul(gv, wv);
                S::mul(rs, S::sub(S::sub(gh, c_g), S::mul(xh, c_gx)))
            };
            let mut j = 0;
            while j < body {
                S::store(
                    dxp.add(j),
                    step(S::load(xp.add(j)), S::load(gp.add(j)), S::load(wp.add(j))),
                );
                j += LANES;
            }
            if j < n {
                let rest = n - j;
                let v = step(
                    load_partial::<S>(xp.add(j), rest, 0.0),
                    load_partial::<S>(gp.add(j), rest, 0.0),
                    load_partial::<S>(wp.add(j), rest, 0.0),
                );
                store_partial::<S>(dxp.add(j), rest, v);
            }
        }
    }
}

simd_dispatch!(fn backward_chunk_dispatch(a: &Norm<'_>, g: &[f32], first: usize, dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) => backward_chunk);

fn forward(a: Norm<'_>, shape: &Shape) -> Result<(CpuStorage, Shape)> {
    let mut y = vec![0f32; a.x.len()];
    let n = a.n;
    cpu::for_row_chunks(&mut y, n, 3 * n, |first, out| forward_chunk_dispatch(&a, first, out));
    Ok((CpuStorage::F32(y), shape.clone()))
}

/// `(dx, dweight, dbias)`; dbias is zeros for RMSNorm.
fn backward(x: &Tensor, w: &Tensor, g: &Tensor, eps: f32, rms: bool) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "norm backward";
    let n = x.dim(D::Minus1)?;
    cpu::with_f32(OP, x, |xs| {
        cpu::with_f32(OP, w, |ws| {
            cpu::with_f32(OP, g, |gs| {
                let a = Norm {
                    x: xs,
                    w: ws,
                    b: None,
                    n,
                    eps,
                    rms,
                };
                let mut dx = vec![0f32; xs.len()];
                let partials = cpu::map_row_chunks(&mut dx, n, 5 * n, |first, out| {
                    let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                    backward_chunk_dispatch(&a, gs, first, out, &mut dw, &mut db);
                    (dw, db)
                });
                let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                for (pw, pb) in partials {
                    dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
                    db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
                }
                Ok((
                    cpu::from_vec(dx, x.shape())?,
                    cpu::from_vec(dw, w.shape())?,
                    cpu::from_vec(db, w.shape())?,
                ))
            })
        })
    })
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "replica-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = Norm {
            x: cpu::f32_slice(self.name(), s1, l1)?,
            w: cpu::f32_slice(self.name(), s2, l2)?,
            b: Some(cpu::f32_slice(self.name(), s3, l3)?),
            n: l1.dims().last().copied().unwrap_or(1),
            eps: self.eps,
            rms: false,
        };
        forward(a, l1.shape())
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = backward(x, w, g, self.eps, false)?;
        Ok((Some(dx), w.track_op().then_some(dw), b.track_op().then_some(db)))
    }
}

struct RmsNormOp {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "replica-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let a = Norm {
            x: cpu::f32_slice(self.name(), s1, l1)?,
            w: cpu::f32_slice(self.name(), s2, l2)?,
            b: None,
            n: l1.dims().last().copied().unwrap_or(1),
            eps: self.eps,
            rms: true,
        };
        forward(a, l1.shape())
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(x, w, g, self.eps, true)?;
        Ok((Some(dx), w.track_op().then_some(dw)))
    }
}
