//! Rotary position embedding (Su et al., RoFormer, arXiv 2104.09864), forward and
//! backward, in both feature pairings:
//! - [`RopeStyle::HalfSplit`]: feature `i` pairs with `i + r/2` (HF LLaMA `rotate_half`, GPT-NeoX);
//! - [`RopeStyle::Interleaved`]: feature `2i` pairs with `2i + 1` (the paper, GPT-J).
//!
//! The backward of a rotation is the rotation by the opposite angle, so it is the
//! same kernel with `sin` negated. The cosine and sine tables are treated as
//! constants: no gradient flows to them.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::cpu::{self, Route};
use crate::simd::{load_n, store_n, Simd};
use crate::simd_dispatch;

/// How features are paired for rotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RopeStyle {
    /// `(x[i], x[i + r/2])`: HF LLaMA, GPT-NeoX (candle's `rope`).
    #[default]
    HalfSplit,
    /// `(x[2i], x[2i + 1])`: the paper, GPT-J (candle's `rope_i`).
    Interleaved,
}

/// Rotates `x` `[batch, heads, seq, head_dim]` by the angles whose cosines and
/// sines are `cos`, `sin` `[seq, r/2]` (row `t` for the token at `x[.., t, ..]`;
/// narrow the tables to the positions first when there is a cache offset). The
/// first `r <= head_dim` features rotate, the rest pass through (partial rotary).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    const OP: &str = "rope";
    let route = cpu::route(OP, x)?;
    let (_, _, t, d) = x.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{OP}: x must be [batch, heads, seq, head_dim], got {:?}",
            x.dims()
        ))
    })?;
    for (name, table) in [("cos", cos), ("sin", sin)] {
        let ok = matches!(table.dims(), &[tt, half] if tt == t && half > 0 && 2 * half <= d);
        if !ok {
            bail!(
                "{OP}: {name} must be [seq = {t}, r/2] with 0 < r <= head_dim = {d}, got {:?}",
                table.dims()
            )
        }
        if !table.dtype().is_float() || !table.device().same_device(x.device()) {
            bail!("{OP}: {name} must be a float tensor on the input's device")
        }
    }
    if cos.dims() != sin.dims() {
        bail!("{OP}: cos {:?} and sin {:?} differ in shape", cos.dims(), sin.dims())
    }
    match route {
        Route::Composition => crate::reference::rope(x, cos, sin, style),
        Route::Kernel => apply(x, cos, sin, style),
        Route::KernelViaF32 => apply(&x.to_dtype(DType::F32)?, cos, sin, style)?.to_dtype(x.dtype()),
    }
}

fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let f32c = |t: &Tensor| -> Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    x.contiguous()?.apply_op3(&f32c(cos)?, &f32c(sin)?, RopeOp { style })
}

/// The tables laid out for the kernel, one row of `r` floats per position:
/// half-split: `c = [cos | cos]`, `s = [-sin | sin]`; interleaved:
/// `c = [c0, c0, c1, c1, ..]`, `s = [-s0, s0, -s1, s1, ..]`, so that
/// `y = x·c + partner(x)·s` with `partner` the other feature of each pair.
fn expand_tables(cos: &[f32], sin: &[f32], half: usize, style: RopeStyle, inverse: bool) -> (Vec<f32>, Vec<f32>) {
    let t = cos.len() / half.max(1);
    let sign = if inverse { -1.0 } else { 1.0 };
    let (mut c, mut s) = (Vec::with_capacity(2 * cos.len()), Vec::with_capacity(2 * cos.len()));
    for p in 0..t {
        let (cr, sr) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        match style {
            RopeStyle::HalfSplit => {
                c.extend_from_slice(cr);
                c.extend_from_slice(cr);
                s.extend(sr.iter().map(|v| -sign * v));
                s.extend(sr.iter().map(|v| sign * v));
            }
            RopeStyle::Interleaved => {
                for i in 0..half {
                    c.extend([cr[i], cr[i]]);
                    s.extend([-sign * sr[i], sign * sr[i]]);
                }
            }
        }
    }
    (c, s)
}

struct Rotation<'a> {
    x: &'a [f32],
    c: &'a [f32],
    s: &'a [f32],
    /// Positions (rows of the tables).
    t: usize,
    d: usize,
    /// Rotated features per row.
    r: usize,
    style: RopeStyle,
}

#[inline(always)]
fn rotate_chunk<S: Simd>(a: &Rotation<'_>, first: usize, out: &mut [f32]) {
    let (d, r) = (a.d, a.r);
    let half = r / 2;
    for (i, y) in out.chunks_exact_mut(d).enumerate() {
        let row = first + i;
        let p = row % a.t;
        let x = &a.x[row * d..(row + 1) * d];
        let (c, s) = (&a.c[p * r..(p + 1) * r], &a.s[p * r..(p + 1) * r]);
        let (xp, yp, cp, sp) = (x.as_ptr(), y.as_mut_ptr(), c.as_ptr(), s.as_ptr());
        unsafe {
            match a.style {
                RopeStyle::HalfSplit => {
                    // y[i] = x[i] c[i] - x[i+h] s'[i], y[i+h] = x[i+h] c[i] + x[i] s'[i]
                    let mut j = 0;
                    while j < half {
                        let len = half - j;
                        let (lo, hi) = (
                            load_n::<S>(xp.add(j), len, 0.0),
                            load_n::<S>(xp.add(j + half), len, 0.0),
                        );
                        let cv = load_n::<S>(cp.add(j), len, 0.0);
                        let (s_lo, s_hi) = (
                            load_n::<S>(sp.add(j), len, 0.0),
                            load_n::<S>(sp.add(j + half), len, 0.0),
                        );
                        store_n::<S>(yp.add(j), len, S::fma(hi, s_lo, S::mul(lo, cv)));
                        store_n::<S>(yp.add(j + half), len, S::fma(lo, s_hi, S::mul(hi, cv)));
                        j += S::LANES;
                    }
                }
                RopeStyle::Interleaved => {
                    // Pairs never straddle a vector: r is even and vectors start at multiples of the (even) lane count.
                    let mut j = 0;
                    while j < r {
                        let len = r - j;
                        let xv = load_n::<S>(xp.add(j), len, 0.0);
                        let (cv, sv) = (load_n::<S>(cp.add(j), len, 0.0), load_n::<S>(sp.add(j), len, 0.0));
                        store_n::<S>(yp.add(j), len, S::fma(S::swap_pairs(xv), sv, S::mul(xv, cv)));
                        j += S::LANES;
                    }
                }
            }
        }
        y[r..].copy_from_slice(&x[r..]);
    }
}

simd_dispatch!(fn rotate_chunk_dispatch(a: &Rotation<'_>, first: usize, out: &mut [f32]) => rotate_chunk);

/// Rotates the f32 rows of `x` (`[.., t, d]` flattened) by the tables; `inverse` rotates back.
#[allow(clippy::too_many_arguments)]
fn rotate(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    t: usize,
    d: usize,
    half: usize,
    style: RopeStyle,
    inverse: bool,
) -> Vec<f32> {
    let (c, s) = expand_tables(cos, sin, half, style, inverse);
    let a = Rotation {
        x,
        c: &c,
        s: &s,
        t,
        d,
        r: 2 * half,
        style,
    };
    let mut y = cpu::output_buffer(x.len());
    cpu::for_row_chunks(&mut y, d, 2 * d, |first, out| rotate_chunk_dispatch(&a, first, out));
    y
}

struct RopeOp {
    style: RopeStyle,
}

impl CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "replica-rope"
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
        let x = cpu::f32_slice(self.name(), s1, l1)?;
        let cos = cpu::f32_slice(self.name(), s2, l2)?;
        let sin = cpu::f32_slice(self.name(), s3, l3)?;
        let (_, _, t, d) = l1.shape().dims4()?;
        let (_, half) = l2.shape().dims2()?;
        let y = rotate(x, cos, sin, t, d, half, self.style, false);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        const OP: &str = "rope backward";
        let (_, _, t, d) = g.dims4()?;
        let (_, half) = cos.dims2()?;
        let dx = cpu::with_f32(OP, g, |gs| {
            cpu::with_f32(OP, cos, |cs| {
                cpu::with_f32(OP, sin, |ss| {
                    cpu::from_vec(rotate(gs, cs, ss, t, d, half, self.style, true), g.shape())
                })
            })
        })?;
        Ok((Some(dx), None, None))
    }
}
