//! A linear layer, `x Wᵀ + b` (the Transformer's projections, arXiv 1706.03762),
//! with its weight in PyTorch's `[out, in]` layout: `torch.nn.functional.linear`.
//!
//! The bias is written into the output first and the product accumulated onto
//! it, as PyTorch's `addmm` does, instead of a second pass that adds it (a read
//! and a write of the whole output, on candle's element-wise thread pool).
//!
//! With few rows the product is turned around. candle hands `x · W.t()` to the
//! `gemm` crate as it is, and gemm, which wants its left operand in column panels,
//! then repacks all of `W` (read across its rows) on every call. With few rows
//! that repacking is a large part of the call: at 128 rows, 1 thread, on an Intel
//! Xeon, 768 -> 3072 took 6.0 ms and 3072 -> 768 8.2 ms. Asking gemm for `W xᵀ`
//! instead lets it read `W` where it lies and pack only `x`: 4.2 and 4.8 ms. The
//! result comes out `[out, rows]` and is transposed into place, a pass over the
//! output. From about 512 rows the packing is spread over enough rows that the
//! direct order is as fast or faster, so those keep it.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};

use rayon::prelude::*;

use crate::cpu::{self, Route, SyncPtr};
use crate::transpose::Transpose;

/// Rows (the product of `x`'s leading dimensions) up to which the product is
/// computed as `(W xᵀ)ᵀ`; measured faster on every GPT-2 and BERT shape at 256
/// rows and below (1.13-2.45x), mixed at 512, slower at 1024.
pub const TRANSPOSED_PRODUCT_MAX_ROWS: usize = 256;

/// `x Wᵀ + b` for `x` `[..., in]`, `weight` `[out, in]` and `bias` `[out]`, giving
/// `[..., out]`, as `torch.nn.functional.linear`. f32 on the CPU with a contiguous
/// weight runs the kernel (the bias first, the product's sums accumulated onto
/// it); every other case is candle's composition,
/// [`reference::linear`](crate::reference::linear). Differentiable in all three.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (out_features, in_features) = match weight.dims() {
        &[o, i] => (o, i),
        dims => bail!("linear: the weight must be [out, in], got shape {dims:?}"),
    };
    let dim = x.dim(D::Minus1)?;
    if dim != in_features {
        bail!("linear: the input has {dim} features in its last dimension, the weight [{out_features}, {in_features}] expects {in_features}")
    }
    cpu::same_kind("linear", x, &[("the weight", weight)])?;
    if let Some(bias) = bias {
        if bias.dims() != [out_features] {
            bail!(
                "linear: the bias must be [{out_features}] for a weight [{out_features}, {in_features}], got shape {:?}",
                bias.dims()
            )
        }
        cpu::same_kind("linear", x, &[("the bias", bias)])?;
    }
    let rows = x.elem_count() / in_features.max(1);
    // Empty products (no rows, inputs or outputs) are candle's: nothing to speed up.
    let kernel = cpu::route("linear", x)? == Route::Kernel
        && weight.is_contiguous()
        && rows > 0
        && in_features > 0
        && out_features > 0;
    if !kernel {
        return crate::reference::linear(x, weight, bias);
    }
    // The op takes x with all its leading dimensions: reshapes around it would be
    // two more graph nodes, each a zero-filled gradient and an add in the backward.
    let x = x.contiguous()?;
    match bias {
        Some(bias) => x.apply_op3(weight, &bias.contiguous()?, Product),
        None => x.apply_op2(weight, Product),
    }
}

/// The custom op's name, in its errors and candle's graph.
const NAME: &str = "replica-linear";

struct Product;

impl Product {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (xs, ws) = (cpu::f32_slice(NAME, x.0, x.1)?, cpu::f32_slice(NAME, w.0, w.1)?);
        let bias = bias.map(|(s, l)| cpu::f32_slice(NAME, s, l)).transpose()?;
        let (Some((&k, leading)), &[n, _]) = (x.1.dims().split_last(), w.1.dims()) else {
            bail!(
                "{NAME}: expected x [..., in] and a 2-D weight, got {:?} and {:?}",
                x.1.dims(),
                w.1.dims()
            )
        };
        let rows = leading.iter().product();
        let y = if rows <= TRANSPOSED_PRODUCT_MAX_ROWS {
            transposed_product(xs, ws, bias, rows, k, n)
        } else {
            direct_product(xs, ws, bias, rows, k, n)
        };
        Ok((CpuStorage::F32(y), Shape::from([leading, &[n]].concat())))
    }

    /// y = x Wᵀ + b: dx = g W, dW = gᵀ x, db = 1ᵀ g (one product, not candle's
    /// strided sum over rows), on x and g seen as `[rows, features]`.
    fn backward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: &Tensor) -> Result<[Option<Tensor>; 3]> {
        let rows = |t: &Tensor| {
            let features = t.dim(D::Minus1)?;
            t.contiguous()?.reshape((t.elem_count() / features, features))
        };
        let (x2, g2) = (rows(x)?, rows(g)?);
        let dx = x.track_op().then(|| g2.matmul(w)?.reshape(x.dims())).transpose()?;
        let dw = w.track_op().then(|| g2.t()?.matmul(&x2)).transpose()?;
        let db = match bias {
            Some(b) if b.track_op() => {
                let ones = Tensor::ones((1, g2.dim(0)?), g.dtype(), g.device())?;
                Some(ones.matmul(&g2)?.reshape(b.dims())?)
            }
            _ => None,
        };
        Ok([dx, dw, db])
    }
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward((xs, xl), (ws, wl), None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] = Self::backward(x, w, None, g)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Product {
    fn name(&self) -> &'static str {
        NAME
    }

    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((xs, xl), (ws, wl), Some((bs, bl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = Self::backward(x, w, Some(b), g)?;
        Ok((dx, dw, db))
    }
}

/// `x [rows, k] · Wᵀ + b` into a new `[rows, n]` buffer, gemm reading `W` `[n, k]`
/// through strides, its own threads splitting the output.
fn direct_product(x: &[f32], w: &[f32], bias: Option<&[f32]>, rows: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = cpu::output_buffer(rows * n);
    if let Some(bias) = bias {
        cpu::for_row_chunks(&mut y, n, n, |_, chunk| {
            chunk.chunks_mut(n).for_each(|row| row.copy_from_slice(bias))
        });
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: y holds rows × n floats, written row-major (row stride n).
    unsafe { x_times_wt(rows, n, k, y.as_mut_ptr(), (1, n), bias.is_some(), x, w, parallelism) };
    y
}

/// Rows of `x` a task of the transposed product takes at least.
const MIN_TASK_ROWS: usize = 32;

/// As [`direct_product`], computed as `W xᵀ`, in tasks that each take a chunk of
/// `x`'s rows and a band of the weight's rows (output features): the task's
/// product goes to the thread's scratch, `[features, rows]`, and is transposed into
/// its block of the output while in cache. No sum is split, and gemm's sums do not
/// depend on the block's size, so any thread count gives the same bits.
///
/// gemm's own threading splits few rows poorly. Chunks of rows come first: each
/// task's gemm packs the rows of `x` it multiplies, so bands of features alone
/// would pack all of `x` once per thread (at 2 threads all-MiniLM-L6-v2's b1 forward
/// was faster with row chunks in nine of ten alternated runs on an Intel Xeon). Bands
/// split the features too once there are more threads than chunks of
/// [`MIN_TASK_ROWS`].
fn transposed_product(x: &[f32], w: &[f32], bias: Option<&[f32]>, rows: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = cpu::output_buffer(rows * n);
    let threads = if cpu::tasks_for(n, rows * k) > 1 {
        rayon::current_num_threads()
    } else {
        1
    };
    let chunks = threads.min(rows.div_ceil(MIN_TASK_ROWS)).max(1);
    let (per_chunk, per_band) = (rows.div_ceil(chunks), n.div_ceil(threads.div_ceil(chunks)));
    let bands = n.div_ceil(per_band);
    y.par_chunks_mut(per_chunk * n).enumerate().for_each(|(c, block)| {
        let (first_row, chunk_rows) = (c * per_chunk, block.len() / n);
        let x = &x[first_row * k..(first_row + chunk_rows) * k];
        let out = SyncPtr(block.as_mut_ptr());
        (0..bands).into_par_iter().for_each(|band| {
            let first = band * per_band;
            let features = per_band.min(n - first);
            cpu::with_scratch(features * chunk_rows, |wx| {
                if let Some(bias) = bias {
                    for (row, &b) in wx.chunks_mut(chunk_rows).zip(&bias[first..]) {
                        row.fill(b);
                    }
                }
                // SAFETY: wx holds features × chunk_rows floats, written as [features,
                // chunk_rows] row-major; rows first.. of w are within w. The transpose
                // writes columns first..first + features of the block's rows, this
                // task's alone.
                unsafe {
                    let wt = &w[first * k..];
                    x_times_wt(
                        chunk_rows,
                        features,
                        k,
                        wx.as_mut_ptr(),
                        (chunk_rows, 1),
                        bias.is_some(),
                        x,
                        wt,
                        gemm::Parallelism::None,
                    );
                    let back = Transpose {
                        src: wx.as_ptr(),
                        src_rs: chunk_rows,
                        rows: features,
                        cols: chunk_rows,
                        dst: out.get().add(first),
                        dst_rs: n,
                    };
                    back.run();
                }
            });
        });
    });
    y
}

/// `dst (rows × features) = x (rows × k) · Wᵀ`, plus `dst` when `accumulate`, with
/// `W` the first `features` rows of `w` (`[.., k]`, row-major) read through strides,
/// and `dst`'s element `(i, j)` at `i · strides.1 + j · strides.0`.
///
/// # Safety
/// `dst` must be valid for every element the strides address; `x` must hold
/// `rows × k` floats and `w` `features × k`.
#[allow(clippy::too_many_arguments)]
unsafe fn x_times_wt(
    rows: usize,
    features: usize,
    k: usize,
    dst: *mut f32,
    (dst_cs, dst_rs): (usize, usize),
    accumulate: bool,
    x: &[f32],
    w: &[f32],
    parallelism: gemm::Parallelism,
) {
    debug_assert!(x.len() >= rows * k && w.len() >= features * k);
    gemm::gemm(
        rows,
        features,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        x.as_ptr(),
        1,
        k as isize,
        w.as_ptr(),
        k as isize,
        1,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    )
}
