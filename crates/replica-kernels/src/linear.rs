//! The product `x Wᵀ` of a linear layer (the Transformer's projections, arXiv
//! 1706.03762) with its weight in PyTorch's `[out, in]` layout, for few rows.
//!
//! candle hands `x · W.t()` to the `gemm` crate as it is, and gemm, which wants
//! its left operand in column panels, then repacks all of `W` (read across its
//! rows) on every call. With few rows that repacking is a large part of the call:
//! at 128 rows, 1 thread, on an Intel Xeon, 768 -> 3072 took 6.0 ms and 3072 -> 768
//! 8.2 ms. Asking gemm for `W xᵀ` instead lets it read `W` where it lies and pack
//! only `x`: 4.2 and 4.8 ms. The result comes out `[out, rows]` and is transposed
//! into place, a pass over the output. From about 512 rows the packing is spread
//! over enough rows that candle's order is as fast or faster, so it keeps those.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};

use rayon::prelude::*;

use crate::cpu::{self, Route};
use crate::transpose::Transpose;

/// Rows (the product of `x`'s leading dimensions) up to which the product is
/// computed as `(W xᵀ)ᵀ`; measured faster on every GPT-2 and BERT shape at 256
/// rows and below (1.13-2.45x), mixed at 512, slower at 1024.
pub const TRANSPOSED_PRODUCT_MAX_ROWS: usize = 256;

/// `x Wᵀ` for `x` `[..., in]` and `weight` `[out, in]`, giving `[..., out]`: a
/// linear layer without its bias. f32 on the CPU with a contiguous weight and at
/// most [`TRANSPOSED_PRODUCT_MAX_ROWS`] rows runs the transposed product (the
/// same sums, in another order of the output's elements); every other case is
/// candle's own product, [`reference::linear`](crate::reference::linear).
/// Differentiable in both arguments.
pub fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (out_features, in_features) = match weight.dims() {
        &[o, i] => (o, i),
        dims => bail!("linear: the weight must be [out, in], got shape {dims:?}"),
    };
    let dim = x.dim(D::Minus1)?;
    if dim != in_features {
        bail!("linear: the input has {dim} features in its last dimension, the weight [{out_features}, {in_features}] expects {in_features}")
    }
    cpu::same_kind("linear", x, &[("the weight", weight)])?;
    let rows = x.elem_count() / in_features.max(1);
    let transposed = cpu::route("linear", x)? == Route::Kernel
        && weight.is_contiguous()
        && (1..=TRANSPOSED_PRODUCT_MAX_ROWS).contains(&rows)
        && in_features > 0;
    if !transposed {
        return crate::reference::linear(x, weight);
    }
    let mut out_dims = x.dims().to_vec();
    *out_dims.last_mut().expect("rank >= 1") = out_features;
    x.contiguous()?
        .reshape((rows, in_features))?
        .apply_op2(weight, TransposedProduct)?
        .reshape(out_dims)
}

struct TransposedProduct;

impl CustomOp2 for TransposedProduct {
    fn name(&self) -> &'static str {
        "replica-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            cpu::f32_slice(self.name(), xs, xl)?,
            cpu::f32_slice(self.name(), ws, wl)?,
        );
        let (&[rows, k], &[n, _]) = (xl.dims(), wl.dims()) else {
            bail!(
                "{}: expected 2-D operands, got {:?} and {:?}",
                self.name(),
                xl.dims(),
                wl.dims()
            )
        };
        let mut y = cpu::output_buffer(rows * n);
        cpu::with_scratch(rows * n, |wx| {
            // Each thread multiplies x by its own band of the weight's rows (output
            // features): no sum is split, so any thread count gives the same bits.
            // gemm's own threading splits few rows poorly; one band per thread, as
            // each band's gemm packs all of x again.
            let bands = if cpu::tasks_for(n, rows * k) > 1 {
                rayon::current_num_threads()
            } else {
                1
            };
            let per_band = n.div_ceil(bands);
            wx.par_chunks_mut(per_band * rows).enumerate().for_each(|(i, band)| {
                let (first, features) = (i * per_band, band.len() / rows);
                // SAFETY: gemm reads x [rows, k] and rows first..first + features of
                // w [n, k] (row-major, within their slices) and writes band as
                // [features, rows] row-major, its whole length.
                unsafe {
                    gemm::gemm(
                        rows,
                        features,
                        k,
                        band.as_mut_ptr(),
                        rows as isize,
                        1,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        w[first * k..].as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            });
            transpose_into(wx, n, rows, &mut y);
        });
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // y = x Wᵀ: dx = g W, dW = gᵀ x.
        let dx = x.track_op().then(|| g.matmul(w)).transpose()?;
        let dw = w.track_op().then(|| g.t()?.matmul(x)).transpose()?;
        Ok((dx, dw))
    }
}

/// Writes `src` (`rows × cols`, row-major) transposed into `dst` (`cols × rows`),
/// the destination's rows split over threads.
fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert_eq!(
        (src.len(), dst.len()),
        (rows * cols, rows * cols),
        "transpose_into: sizes"
    );
    cpu::for_row_chunks(dst, rows, rows, |first, chunk| {
        let block = Transpose {
            src: src[first..].as_ptr(),
            src_rs: cols,
            rows,
            cols: chunk.len() / rows,
            dst: chunk.as_mut_ptr(),
            dst_rs: rows,
        };
        // SAFETY: columns first.. of src's rows and the chunk's own rows of dst, all
        // within the two slices (sizes checked above).
        unsafe { block.run() }
    });
}
