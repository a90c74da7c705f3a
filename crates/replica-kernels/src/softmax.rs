//! Softmax over the last dimension, with a fused scale and an optional causal or
//! additive mask: `softmax(scale · x + mask)`, forward and backward.
//!
//! Per row: one pass for the maximum, one for `exp(z - max)` and its sum, one to
//! normalise; the row stays in L1. A row whose every element is masked (or -inf)
//! gives zeros and a zero gradient, as PyTorch's `scaled_dot_product_attention`
//! does, where `torch.softmax` would give NaN.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

use crate::cpu::{self, Route};
use crate::simd::{self, load_partial, store_partial, Simd};
use crate::simd_dispatch;

/// Where the queries sit among the keys, and so which keys a causal mask hides.
/// With `q` query rows and `k` key columns (the last two dimensions), query `i`
/// sits at key position `i + offset` and sees key `j` when `j <= i + offset`;
/// ALiBi ([`crate::reference::alibi_bias`]) measures distances from the same place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Causal {
    /// `offset = k - q`: the last query sees every key, as with a KV cache (HF models,
    /// FlashAttention).
    #[default]
    BottomRight,
    /// `offset = 0`: query `i` sees keys `0..=i` (PyTorch's `is_causal=True`).
    TopLeft,
    /// This offset, e.g. the number of tokens before the queries when the keys
    /// are not exactly those tokens plus the queries.
    Offset(isize),
}

impl Causal {
    /// The diagonal offset for `q` queries and `k` keys.
    pub fn offset(self, q: usize, k: usize) -> isize {
        match self {
            Causal::BottomRight => k as isize - q as isize,
            Causal::TopLeft => 0,
            Causal::Offset(offset) => offset,
        }
    }
}

/// The mask added to the scaled scores before the softmax.
#[derive(Clone, Copy, Debug, Default)]
pub enum Mask<'a> {
    /// Nothing is added.
    #[default]
    None,
    /// Hide keys after each query (over the last two dimensions).
    Causal(Causal),
    /// Add this tensor (0 to keep, -inf to hide, or any bias), broadcast to the
    /// input's shape. Its gradient is computed when it is tracked.
    Additive(&'a Tensor),
}

/// `softmax(scale · x + mask)` over the last dimension of `x`.
///
/// f32 runs the kernel; f16 and bf16 run it in f32 and round once; f64, and any
/// device other than the CPU, run [`crate::reference::softmax_last_dim`].
pub fn softmax_last_dim(x: &Tensor, scale: f64, mask: Mask<'_>) -> Result<Tensor> {
    const OP: &str = "softmax_last_dim";
    let route = cpu::route(OP, x)?;
    if x.rank() == 0 {
        bail!("{OP}: the input must have at least one dimension")
    }
    if let Mask::Causal(_) = mask {
        if x.rank() < 2 {
            bail!(
                "{OP}: a causal mask needs [.., queries, keys], got shape {:?}",
                x.dims()
            )
        }
    }
    if let Mask::Additive(m) = mask {
        if m.broadcast_as(x.shape()).is_err() {
            bail!(
                "{OP}: the mask of shape {:?} does not broadcast to the input's {:?}",
                m.dims(),
                x.dims()
            )
        }
        if !m.dtype().is_float() {
            bail!("{OP}: the additive mask must be a float tensor, got {:?}", m.dtype())
        }
    }
    match route {
        Route::Composition => crate::reference::softmax_last_dim(x, scale, mask),
        Route::KernelViaF32 => {
            let dtype = x.dtype();
            let x = x.to_dtype(candle_core::DType::F32)?;
            let y = match mask {
                Mask::Additive(m) => kernel(&x, scale, Mask::Additive(&m.to_dtype(candle_core::DType::F32)?)),
                other => kernel(&x, scale, other),
            }?;
            y.to_dtype(dtype)
        }
        Route::Kernel => match mask {
            Mask::Additive(m) if m.dtype() != x.dtype() => kernel(x, scale, Mask::Additive(&m.to_dtype(x.dtype())?)),
            other => kernel(x, scale, other),
        },
    }
}

fn kernel(x: &Tensor, scale: f64, mask: Mask<'_>) -> Result<Tensor> {
    let x = x.contiguous()?;
    let scale = scale as f32;
    match mask {
        Mask::None => x.apply_op1(SoftmaxOp { scale, causal: None }),
        Mask::Causal(c) => x.apply_op1(SoftmaxOp { scale, causal: Some(c) }),
        Mask::Additive(m) => {
            let mut m = m.broadcast_as(x.shape())?;
            if m.stride().last() != Some(&1) {
                m = m.contiguous()?;
            }
            x.apply_op2(&m, SoftmaxMaskedOp { scale })
        }
    }
}

/// What one call of the row kernel needs besides the rows themselves.
struct Rows<'a> {
    x: &'a [f32],
    n: usize,
    scale: f32,
    /// Rows in the second-to-last dimension (for the causal diagonal).
    q: usize,
    causal_offset: Option<isize>,
    mask: Option<(&'a [f32], Vec<usize>)>,
}

impl Rows<'_> {
    /// How many leading columns of row `r` are not hidden by the causal mask.
    fn visible(&self, r: usize) -> usize {
        match self.causal_offset {
            None => self.n,
            Some(offset) => ((r % self.q) as isize + offset + 1).clamp(0, self.n as isize) as usize,
        }
    }
}

#[inline(always)]
fn forward_chunk<S: Simd>(rows: &Rows<'_>, first: usize, out: &mut [f32]) {
    let n = rows.n;
    for (i, y) in out.chunks_exact_mut(n).enumerate() {
        let r = first + i;
        let visible = rows.visible(r);
        let x = &rows.x[r * n..r * n + visible];
        let mask = rows
            .mask
            .as_ref()
            .map(|(m, offsets)| &m[offsets[r]..offsets[r] + visible]);
        let (y, hidden) = y.split_at_mut(visible);
        hidden.fill(0.0);
        forward_row::<S>(x, mask, rows.scale, y);
    }
}

simd_dispatch!(fn forward_chunk_dispatch(rows: &Rows<'_>, first: usize, out: &mut [f32]) => forward_chunk);

/// `y = softmax(scale · x + mask)` for one row.
#[inline(always)]
fn forward_row<S: Simd>(x: &[f32], mask: Option<&[f32]>, scale: f32, y: &mut [f32]) {
    let n = x.len();
    let body = n - n % S::LANES;
    let neg_inf = f32::NEG_INFINITY;
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let sv = S::splat(scale);
    // Without a mask and with a positive scale, max(scale·x) = scale·max(x): the
    // scores need not be stored. Otherwise they are written to y first.
    let direct = mask.is_none() && scale > 0.0;
    let max = unsafe {
        let (mut m0, mut m1) = (S::splat(neg_inf), S::splat(neg_inf));
        let mut i = 0;
        if direct {
            while i + 2 * S::LANES <= n {
                m0 = S::max(m0, S::load(xp.add(i)));
                m1 = S::max(m1, S::load(xp.add(i + S::LANES)));
                i += 2 * S::LANES;
            }
            while i < body {
                m0 = S::max(m0, S::load(xp.add(i)));
                i += S::LANES;
            }
            if i < n {
                m1 = S::max(m1, load_partial::<S>(xp.add(i), n - i, neg_inf));
            }
            S::reduce_max(S::max(m0, m1)) * scale
        } else {
            while i < body {
                let s = S::mul(S::load(xp.add(i)), sv);
                let z = match mask {
                    Some(m) => S::add(s, S::load(m.as_ptr().add(i))),
                    None => s,
                };
                S::store(yp.add(i), z);
                m0 = S::max(m0, z);
                i += S::LANES;
            }
            if i < n {
                let rest = n - i;
                let mut z = S::mul(load_partial::<S>(xp.add(i), rest, 0.0), sv);
                if let Some(m) = mask {
                    z = S::add(z, load_partial::<S>(m.as_ptr().add(i), rest, 0.0));
                }
                store_partial::<S>(yp.add(i), rest, z);
                m1 = S::max(m1, load_partial::<S>(yp.add(i), rest, neg_inf));
            }
            S::reduce_max(S::max(m0, m1))
        }
    };
    if max == neg_inf || n == 0 {
        // Every key is hidden: no probability mass anywhere.
        y.fill(0.0);
        return;
    }
    let sum = unsafe {
        let mv = S::splat(-max);
        let (mut s0, mut s1) = (S::splat(0.0), S::splat(0.0));
        let mut i = 0;
        // exp(scale·x - max), from x directly or from the stored scores; four
        // independent exps per iteration hide the latency of each.
        let (src, mul) = if direct {
            (xp, sv)
        } else {
            (yp as *const f32, S::splat(1.0))
        };
        while i + 4 * S::LANES <= n {
            let e0 = simd::exp::<S>(S::fma(S::load(src.add(i)), mul, mv));
            let e1 = simd::exp::<S>(S::fma(S::load(src.add(i + S::LANES)), mul, mv));
            let e2 = simd::exp::<S>(S::fma(S::load(src.add(i + 2 * S::LANES)), mul, mv));
            let e3 = simd::exp::<S>(S::fma(S::load(src.add(i + 3 * S::LANES)), mul, mv));
            S::store(yp.add(i), e0);
            S::store(yp.add(i + S::LANES), e1);
            S::store(yp.add(i + 2 * S::LANES), e2);
            S::store(yp.add(i + 3 * S::LANES), e3);
            s0 = S::add(s0, S::add(e0, e1));
            s1 = S::add(s1, S::add(e2, e3));
            i += 4 * S::LANES;
        }
        while i < body {
            let e = simd::exp::<S>(S::fma(S::load(src.add(i)), mul, mv));
            S::store(yp.add(i), e);
            s0 = S::add(s0, e);
            i += S::LANES;
        }
        if i < n {
            let rest = n - i;
            let e = simd::exp::<S>(S::fma(load_partial::<S>(src.add(i), rest, neg_inf), mul, mv));
            store_partial::<S>(yp.add(i), rest, e);
            s1 = S::add(s1, e);
        }
        S::reduce_sum(S::add(s0, s1))
    };
    let inv = S::splat(1.0 / sum);
    unsafe {
        let mut i = 0;
        while i < body {
            S::store(yp.add(i), S::mul(S::load(yp.add(i)), inv));
            i += S::LANES;
        }
        if i < n {
            let v = S::mul(load_partial::<S>(yp.add(i), n - i, 0.0), inv);
            store_partial::<S>(yp.add(i), n - i, v);
        }
    }
}

/// `dz = y ⊙ (g - Σ g ⊙ y) · factor` for one row (`factor` is the scale for dx, 1 for dmask).
#[inline(always)]
fn backward_row<S: Simd>(y: &[f32], g: &[f32], factor: f32, dz: &mut [f32]) {
    let n = y.len();
    let body = n - n % S::LANES;
    let (yp, gp, dp) = (y.as_ptr(), g.as_ptr(), dz.as_mut_ptr());
    unsafe {
        let (mut a0, mut a1) = (S::splat(0.0), S::splat(0.0));
        let mut i = 0;
        while i + 2 * S::LANES <= n {
            a0 = S::fma(S::load(yp.add(i)), S::load(gp.add(i)), a0);
            a1 = S::fma(S::load(yp.add(i + S::LANES)), S::load(gp.add(i + S::LANES)), a1);
            i += 2 * S::LANES;
        }
        while i < body {
            a0 = S::fma(S::load(yp.add(i)), S::load(gp.add(i)), a0);
            i += S::LANES;
        }
        if i < n {
            a1 = S::fma(
                load_partial::<S>(yp.add(i), n - i, 0.0),
                load_partial::<S>(gp.add(i), n - i, 0.0),
                a1,
            );
        }
        let dot = S::splat(S::reduce_sum(S::add(a0, a1)));
        let f = S::splat(factor);
        let mut i = 0;
        while i < body {
            let (y, g) = (S::load(yp.add(i)), S::load(gp.add(i)));
            S::store(dp.add(i), S::mul(S::mul(y, S::sub(g, dot)), f));
            i += S::LANES;
        }
        if i < n {
            let (y, g) = (
                load_partial::<S>(yp.add(i), n - i, 0.0),
                load_partial::<S>(gp.add(i), n - i, 0.0),
            );
            store_partial::<S>(dp.add(i), n - i, S::mul(S::mul(y, S::sub(g, dot)), f));
        }
    }
}

#[inline(always)]
fn backward_chunk<S: Simd>(y: &[f32], g: &[f32], n: usize, factor: f32, first: usize, out: &mut [f32]) {
    for (i, dz) in out.chunks_exact_mut(n).enumerate() {
        let r = (first + i) * n;
        backward_row::<S>(&y[r..r + n], &g[r..r + n], factor, dz);
    }
}

simd_dispatch!(fn backward_chunk_dispatch(y: &[f32], g: &[f32], n: usize, factor: f32, first: usize, out: &mut [f32]) => backward_chunk);

/// The softmax backward on f32 CPU tensors: `factor · y ⊙ (g - rowsum(g ⊙ y))`.
pub(crate) fn backward(y: &Tensor, g: &Tensor, factor: f32) -> Result<Tensor> {
    const OP: &str = "softmax_last_dim backward";
    let n = y.dim(D::Minus1)?;
    let shape = y.shape().clone();
    cpu::with_f32(OP, y, |y| {
        cpu::with_f32(OP, g, |g| {
            let mut dz = cpu::output_buffer(y.len());
            cpu::for_row_chunks(&mut dz, n, 2 * n, |first, out| {
                backward_chunk_dispatch(y, g, n, factor, first, out)
            });
            cpu::from_vec(dz, &shape)
        })
    })
}

fn forward(rows: Rows<'_>, shape: &Shape) -> Result<(CpuStorage, Shape)> {
    let mut y = cpu::output_buffer(rows.x.len());
    let n = rows.n;
    cpu::for_row_chunks(&mut y, n, 4 * n, |first, out| forward_chunk_dispatch(&rows, first, out));
    Ok((CpuStorage::F32(y), shape.clone()))
}

fn last_two(shape: &Shape) -> (usize, usize) {
    let dims = shape.dims();
    let n = dims.last().copied().unwrap_or(1);
    let q = if dims.len() >= 2 { dims[dims.len() - 2] } else { 1 };
    (q, n)
}

struct SoftmaxOp {
    scale: f32,
    causal: Option<Causal>,
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "replica-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu::f32_slice(self.name(), storage, layout)?;
        let (q, n) = last_two(layout.shape());
        let rows = Rows {
            x,
            n,
            scale: self.scale,
            q,
            causal_offset: self.causal.map(|c| c.offset(q, n)),
            mask: None,
        };
        forward(rows, layout.shape())
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(backward(y, g, self.scale)?))
    }
}

struct SoftmaxMaskedOp {
    scale: f32,
}

impl CustomOp2 for SoftmaxMaskedOp {
    fn name(&self) -> &'static str {
        "replica-softmax-last-dim-masked"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu::f32_slice(self.name(), s1, l1)?;
        let CpuStorage::F32(mask) = s2 else {
            bail!("{}: the mask must be f32, got {:?}", self.name(), s2.dtype())
        };
        if l2.shape() != l1.shape() || l2.stride().last().is_some_and(|&s| s != 1) {
            bail!(
                "{}: the mask must be broadcast to the input with a contiguous last dimension",
                self.name()
            )
        }
        let (q, n) = last_two(l1.shape());
        let rows = Rows {
            x,
            n,
            scale: self.scale,
            q,
            causal_offset: None,
            mask: Some((mask.as_slice(), cpu::row_offsets(l2))),
        };
        forward(rows, l1.shape())
    }

    fn bwd(&self, _x: &Tensor, mask: &Tensor, y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if mask.track_op() {
            // dmask = dz, dx = scale · dz; the broadcast's own backward sums dmask back.
            let dz = backward(y, g, 1.0)?;
            Ok((Some(dz.affine(self.scale as f64, 0.0)?), Some(dz)))
        } else {
            Ok((Some(backward(y, g, self.scale)?), None))
        }
    }
}
