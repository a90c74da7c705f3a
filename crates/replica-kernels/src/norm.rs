//! LayerNorm (Ba et al., arXiv 1607.06450) and RMSNorm (Zhang & Sennrich, arXiv
//! 1910.07467) over the last dimension, forward and backward (input, weight, bias).
//!
//! The variance is computed in two passes, `mean((x - mean)²)`, never as
//! `E[x²] - mean²`, which cancels catastrophically when `|mean| ≫ std`. Each row
//! stays in L1 across its passes; the backward recomputes the row statistics
//! rather than storing them, and sums the weight and bias gradients per task.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

use crate::cpu::{self, Route};
use crate::simd::{load_n, store_n, Simd};
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

impl Norm<'_> {
    /// The row's statistics: `x - mean = (x - pivot) - offset`, and `1 / sqrt(var + eps)`.
    /// For RMSNorm pivot and offset are 0 and the "variance" is the mean square.
    ///
    /// Always two passes: the first sums `d = x - pivot` (the pivot the row's first
    /// element, so that a large common offset costs no digits: `x - pivot` is exact for
    /// values near it) for `offset = mean(d)`; the second sums `c = d - offset` and `c²`,
    /// and `var = (Σc² - (Σc)²/n) / n`, the corrected two-pass formula (Chan, Golub &
    /// LeVeque): `Σc` is what the rounding of `offset` left over, and the correction
    /// removes its effect, so the variance is as accurate as f32 sums of `c²` allow.
    /// A one-pass `mean(d²) - mean(d)²` lost up to four bits before switching to
    /// this, enough to move a LayerNorm's output by several times PyTorch's own error.
    #[inline(always)]
    unsafe fn stats<S: Simd>(&self, x: &[f32]) -> Centre {
        let n = self.n;
        let p = x.as_ptr();
        let body = n - n % S::LANES;
        let inv_n = 1.0 / n as f32;
        if self.rms {
            let (mut q0, mut q1) = (S::splat(0.0), S::splat(0.0));
            let mut i = 0;
            while i + 2 * S::LANES <= n {
                let (v0, v1) = (S::load(p.add(i)), S::load(p.add(i + S::LANES)));
                q0 = S::fma(v0, v0, q0);
                q1 = S::fma(v1, v1, q1);
                i += 2 * S::LANES;
            }
            while i < n {
                let v = load_n::<S>(p.add(i), n - i, 0.0);
                q1 = S::fma(v, v, q1);
                i += S::LANES;
            }
            let sq = S::reduce_sum(S::add(q0, q1));
            return Centre {
                pivot: 0.0,
                offset: 0.0,
                rstd: 1.0 / (sq * inv_n + self.eps).sqrt(),
            };
        }
        let pivot = if n == 0 { 0.0 } else { x[0] };
        let k = S::splat(pivot);
        let l = S::LANES;
        // Four independent accumulators per sum: the passes are bound by the latency
        // of the additions, not by loads.
        // Pass 1: the mean, about the pivot.
        let zero = S::splat(0.0);
        let (mut s0, mut s1, mut s2, mut s3) = (zero, zero, zero, zero);
        let mut i = 0;
        while i + 4 * l <= n {
            s0 = S::add(s0, S::sub(S::load(p.add(i)), k));
            s1 = S::add(s1, S::sub(S::load(p.add(i + l)), k));
            s2 = S::add(s2, S::sub(S::load(p.add(i + 2 * l)), k));
            s3 = S::add(s3, S::sub(S::load(p.add(i + 3 * l)), k));
            i += 4 * l;
        }
        while i < body {
            s0 = S::add(s0, S::sub(S::load(p.add(i)), k));
            i += l;
        }
        if i < n {
            // Padding lanes load the pivot: d = 0.
            s1 = S::add(s1, S::sub(S::load_partial(p.add(i), n - i, pivot), k));
        }
        let offset = S::reduce_sum(S::add(S::add(s0, s1), S::add(s2, s3))) * inv_n;
        // Pass 2: Σc and Σc² about the mean.
        let o = S::splat(offset);
        let (mut c0, mut c1, mut a0, mut a1) = (zero, zero, zero, zero);
        let (mut c2, mut c3, mut a2, mut a3) = (zero, zero, zero, zero);
        let mut i = 0;
        while i + 4 * l <= n {
            let e0 = S::sub(S::sub(S::load(p.add(i)), k), o);
            let e1 = S::sub(S::sub(S::load(p.add(i + l)), k), o);
            let e2 = S::sub(S::sub(S::load(p.add(i + 2 * l)), k), o);
            let e3 = S::sub(S::sub(S::load(p.add(i + 3 * l)), k), o);
            c0 = S::add(c0, e0);
            c1 = S::add(c1, e1);
            c2 = S::add(c2, e2);
            c3 = S::add(c3, e3);
            a0 = S::fma(e0, e0, a0);
            a1 = S::fma(e1, e1, a1);
            a2 = S::fma(e2, e2, a2);
            a3 = S::fma(e3, e3, a3);
            i += 4 * l;
        }
        while i < body {
            let e0 = S::sub(S::sub(S::load(p.add(i)), k), o);
            c0 = S::add(c0, e0);
            a0 = S::fma(e0, e0, a0);
            i += l;
        }
        // The last partial vector, element by element (its padding must add nothing).
        let (mut rest, mut rest_sq) = (0.0f32, 0.0f32);
        for &v in &x[i..] {
            let e = (v - pivot) - offset;
            rest += e;
            rest_sq += e * e;
        }
        let (c0, c1) = (S::add(c0, c2), S::add(c1, c3));
        let (a0, a1) = (S::add(a0, a2), S::add(a1, a3));
        let sum_c = S::reduce_sum(S::add(c0, c1)) + rest;
        let sum_sq = S::reduce_sum(S::add(a0, a1)) + rest_sq;
        // sum_c² / n <= sum_sq exactly (Cauchy–Schwarz); clamp a rounding below 0,
        // keeping a NaN (from a NaN or infinite input) a NaN.
        let var = (sum_sq - sum_c * sum_c * inv_n) * inv_n;
        let var = if var < 0.0 { 0.0 } else { var };
        Centre {
            pivot,
            offset,
            rstd: 1.0 / (var + self.eps).sqrt(),
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
        S::mul(
            S::sub(S::sub(v, S::splat(self.pivot)), S::splat(self.offset)),
            S::splat(self.rstd),
        )
    }
}

/// `y = x̂ · w (+ b)` for one row: full vectors, then one partial one.
#[inline(always)]
unsafe fn normalise_row<S: Simd, const BIAS: bool>(centre: Centre, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let n = x.len();
    let body = n - n % S::LANES;
    let (xp, wp, bp, yp) = (x.as_ptr(), w.as_ptr(), b.as_ptr(), y.as_mut_ptr());
    // x̂ · w = (x - pivot - offset) · rstd · w, with rstd folded into the weight.
    let (k, o, r) = (S::splat(centre.pivot), S::splat(centre.offset), S::splat(centre.rstd));
    let step = |xv: S::V, wv: S::V, bv: S::V| -> S::V {
        let c = S::sub(S::sub(xv, k), o);
        if BIAS {
            S::fma(c, S::mul(wv, r), bv)
        } else {
            S::mul(c, S::mul(wv, r))
        }
    };
    let mut j = 0;
    while j < body {
        let bv = if BIAS { S::load(bp.add(j)) } else { S::splat(0.0) };
        S::store(yp.add(j), step(S::load(xp.add(j)), S::load(wp.add(j)), bv));
        j += S::LANES;
    }
    if j < n {
        let len = n - j;
        let bv = if BIAS {
            load_n::<S>(bp.add(j), len, 0.0)
        } else {
            S::splat(0.0)
        };
        store_n::<S>(
            yp.add(j),
            len,
            step(load_n::<S>(xp.add(j), len, 0.0), load_n::<S>(wp.add(j), len, 0.0), bv),
        );
    }
}

#[inline(always)]
fn forward_chunk<S: Simd>(a: &Norm<'_>, first: usize, out: &mut [f32]) {
    let n = a.n;
    for (i, y) in out.chunks_exact_mut(n).enumerate() {
        let x = &a.x[(first + i) * n..(first + i + 1) * n];
        unsafe {
            let centre = a.stats::<S>(x);
            match a.b {
                Some(b) => normalise_row::<S, true>(centre, x, a.w, b, y),
                None => normalise_row::<S, false>(centre, x, a.w, &[], y),
            }
        }
    }
}

simd_dispatch!(fn forward_chunk_dispatch(a: &Norm<'_>, first: usize, out: &mut [f32]) => forward_chunk);

/// Rows whose parameter-gradient terms are summed in f32 before they join the f64 sums.
const GRAD_BLOCK_ROWS: usize = 16;

/// dx for a group of rows, accumulating dweight (and dbias) into `dw`, `db`.
///
/// With `x̂ = (x - mean) · rstd` and `ĝ = g · w`:
/// `dx = rstd · (ĝ - mean(ĝ) - x̂ · mean(ĝ · x̂))` (LayerNorm; RMSNorm drops `mean(ĝ)`),
/// `dw = Σ_rows g · x̂`, `db = Σ_rows g`. The row sums are blocked: each block of
/// [`GRAD_BLOCK_ROWS`] rows is summed in f32 and added to f64 sums, so their rounding
/// error does not grow with the number of rows (a sum over many rows whose terms
/// cancel, a norm weight's gradient, would otherwise lose its digits).
#[inline(always)]
fn backward_chunk<S: Simd>(a: &Norm<'_>, g: &[f32], first: usize, dx: &mut [f32], dw64: &mut [f64], db64: &mut [f64]) {
    let n = a.n;
    let (mut block_dw, mut block_db) = (vec![0f32; n], vec![0f32; n]);
    let rows = dx.len() / n.max(1);
    let (dw, db) = (&mut block_dw[..], &mut block_db[..]);
    for (i, dxr) in dx.chunks_exact_mut(n).enumerate() {
        let r = first + i;
        let (x, g) = (&a.x[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
        unsafe {
            let centre = a.stats::<S>(x);
            let (xp, gp, wp) = (x.as_ptr(), g.as_ptr(), a.w.as_ptr());
            let (dwp, dbp, dxp) = (dw.as_mut_ptr(), db.as_mut_ptr(), dxr.as_mut_ptr());
            // Pass 1: Σ ĝ and Σ ĝ·x̂, and the parameter gradients. Padding lanes
            // have g = 0 and w = 0, so they add nothing.
            let (mut s_g, mut s_gx) = (S::splat(0.0), S::splat(0.0));
            let mut j = 0;
            while j < n {
                let len = n - j;
                let xh = centre.normalise::<S>(load_n::<S>(xp.add(j), len, centre.pivot));
                let gv = load_n::<S>(gp.add(j), len, 0.0);
                let gh = S::mul(gv, load_n::<S>(wp.add(j), len, 0.0));
                s_g = S::add(s_g, gh);
                s_gx = S::fma(gh, xh, s_gx);
                store_n::<S>(dwp.add(j), len, S::fma(gv, xh, load_n::<S>(dwp.add(j), len, 0.0)));
                if !a.rms {
                    store_n::<S>(dbp.add(j), len, S::add(gv, load_n::<S>(dbp.add(j), len, 0.0)));
                }
                j += S::LANES;
            }
            let inv_n = 1.0 / n as f32;
            let c_g = S::splat(if a.rms { 0.0 } else { S::reduce_sum(s_g) * inv_n });
            let c_gx = S::splat(S::reduce_sum(s_gx) * inv_n);
            let rs = S::splat(centre.rstd);
            // Pass 2: dx.
            let mut j = 0;
            while j < n {
                let len = n - j;
                let xh = centre.normalise::<S>(load_n::<S>(xp.add(j), len, centre.pivot));
                let gh = S::mul(load_n::<S>(gp.add(j), len, 0.0), load_n::<S>(wp.add(j), len, 0.0));
                store_n::<S>(dxp.add(j), len, S::mul(rs, S::sub(S::sub(gh, c_g), S::mul(xh, c_gx))));
                j += S::LANES;
            }
        }
        if (i + 1) % GRAD_BLOCK_ROWS == 0 || i + 1 == rows {
            for (sum, block) in dw64.iter_mut().zip(dw.iter_mut()) {
                *sum += f64::from(std::mem::take(block));
            }
            for (sum, block) in db64.iter_mut().zip(db.iter_mut()) {
                *sum += f64::from(std::mem::take(block));
            }
        }
    }
}

simd_dispatch!(fn backward_chunk_dispatch(a: &Norm<'_>, g: &[f32], first: usize, dx: &mut [f32], dw: &mut [f64], db: &mut [f64]) => backward_chunk);

fn forward(a: Norm<'_>, shape: &Shape) -> Result<(CpuStorage, Shape)> {
    let mut y = cpu::output_buffer(a.x.len());
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
                let mut dx = cpu::output_buffer(xs.len());
                let partials = cpu::map_row_chunks(&mut dx, n, 5 * n, |first, out| {
                    let (mut dw, mut db) = (vec![0f64; n], vec![0f64; n]);
                    backward_chunk_dispatch(&a, gs, first, out, &mut dw, &mut db);
                    (dw, db)
                });
                let (mut dw64, mut db64) = (vec![0f64; n], vec![0f64; n]);
                for (pw, pb) in partials {
                    dw64.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
                    db64.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
                }
                let dw: Vec<f32> = dw64.into_iter().map(|v| v as f32).collect();
                let db: Vec<f32> = db64.into_iter().map(|v| v as f32).collect();
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
