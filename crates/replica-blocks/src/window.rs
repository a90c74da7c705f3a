//! Windows over a channels-last feature map, for the shifted-window attention of
//! Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
//! Windows", arXiv 2103.14030 (registry: [`crate::papers::SWIN`]), as timm's
//! `window_partition`, `window_reverse`, `get_relative_position_index` and
//! `SwinTransformerBlock.get_attn_mask`.
//!
//! A map `[B, H, W, C]` is cut into non-overlapping `wh x ww` windows, each a
//! sequence of `wh·ww` tokens in row-major order, windows ordered row-major over
//! the map and batch-major over the images (§3.2). After a cyclic shift of the
//! map, a window can hold tokens that were not neighbours before the shift; the
//! shifted-window mask (§3.2, "efficient batch computation for shifted
//! configuration") keeps them apart with -100 (timm's value, not -inf) added to
//! their scores.

use candle_core::{DType, Device, Result, Tensor};

use crate::Size2;

/// The score timm adds between tokens of different regions of a shifted window.
pub const SHIFTED_WINDOW_MASK: f32 = -100.0;

/// `[B, H, W, C]` to windows `[B·nW, wh·ww, C]`, `nW = (H/wh)·(W/ww)`. `H` and `W`
/// must be multiples of the window (pad first).
pub fn window_partition(x: &Tensor, window: Size2) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let Size2 { height: wh, width: ww } = window;
    if wh == 0 || ww == 0 || h % wh != 0 || w % ww != 0 {
        candle_core::bail!("window_partition: a {h}x{w} map does not split into {wh}x{ww} windows")
    }
    x.reshape((b, h / wh, wh, w / ww, ww, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b * (h / wh) * (w / ww), wh * ww, c))
}

/// Windows `[B·nW, wh·ww, C]` (or `[B·nW, wh, ww, C]`) back to the map `[B, H, W, C]`.
pub fn window_reverse(windows: &Tensor, window: Size2, height: usize, width: usize) -> Result<Tensor> {
    let Size2 { height: wh, width: ww } = window;
    let c = windows.dim(candle_core::D::Minus1)?;
    if wh == 0 || ww == 0 || !height.is_multiple_of(wh) || !width.is_multiple_of(ww) {
        candle_core::bail!("window_reverse: a {height}x{width} map does not split into {wh}x{ww} windows")
    }
    let per_image = (height / wh) * (width / ww);
    let count = windows.elem_count() / (wh * ww * c).max(1);
    if !count.is_multiple_of(per_image) {
        candle_core::bail!("window_reverse: {count} windows are not a whole number of {height}x{width} maps")
    }
    windows
        .reshape((count / per_image, height / wh, width / ww, wh, ww, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((count / per_image, height, width, c))
}

/// For each pair of tokens `(i, j)` of a `wh x ww` window (row-major), the row of
/// the relative position bias table their offset reads: `(dy + wh - 1)·(2ww - 1) +
/// (dx + ww - 1)` with `(dy, dx)` = position of `i` minus position of `j`. A
/// `[wh·ww, wh·ww]` u32 tensor (timm's `relative_position_index` buffer).
pub fn relative_position_index(window: Size2, device: &Device) -> Result<Tensor> {
    let Size2 { height: wh, width: ww } = window;
    let n = wh * ww;
    let mut index = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let dy = (i / ww) as i64 - (j / ww) as i64 + wh as i64 - 1;
            let dx = (i % ww) as i64 - (j % ww) as i64 + ww as i64 - 1;
            index.push((dy * (2 * ww as i64 - 1) + dx) as u32);
        }
    }
    Tensor::from_vec(index, (n, n), device)
}

/// The range Python's `a[start:stop]` selects of a length-`len` axis (negative
/// bounds count from the end; a bound is clamped to the axis).
fn python_slice(start: isize, stop: Option<isize>, len: usize) -> std::ops::Range<usize> {
    let len = len as isize;
    let resolve = |i: isize| if i < 0 { (len + i).max(0) } else { i.min(len) };
    let (start, stop) = (resolve(start), stop.map_or(len, resolve));
    start as usize..stop.max(start) as usize
}

/// The shifted-window attention mask of a `height x width` map (already padded to
/// whole windows) shifted by `shift`: `[nW, wh·ww, wh·ww]`, 0 between tokens of the
/// same region and [`SHIFTED_WINDOW_MASK`] between tokens of different regions.
/// The regions are timm's nine slices per axis, `[0, -w)`, `[-w, -s)`, `[-s, end)`,
/// with Python's slicing: a zero shift makes the last slice the whole axis, so an
/// axis that is not shifted has one region.
pub fn shifted_window_mask(
    height: usize,
    width: usize,
    window: Size2,
    shift: Size2,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let Size2 { height: wh, width: ww } = window;
    if wh == 0 || ww == 0 || !height.is_multiple_of(wh) || !width.is_multiple_of(ww) {
        candle_core::bail!("shifted_window_mask: a {height}x{width} map does not split into {wh}x{ww} windows")
    }
    let slices = |w: usize, s: usize, len: usize| {
        let (w, s) = (w as isize, s as isize);
        [
            python_slice(0, Some(-w), len),
            python_slice(-w, Some(-s), len),
            python_slice(-s, None, len),
        ]
    };
    // Each position's region number, later slices overwriting earlier ones as timm's loop does.
    let mut region = vec![0f32; height * width];
    let mut count = 0f32;
    for rows in slices(wh, shift.height, height) {
        for cols in slices(ww, shift.width, width) {
            for r in rows.clone() {
                for c in cols.clone() {
                    region[r * width + c] = count;
                }
            }
            count += 1.0;
        }
    }
    let n = wh * ww;
    let (rows, cols) = (height / wh, width / ww);
    let mut mask = Vec::with_capacity(rows * cols * n * n);
    for window_row in 0..rows {
        for window_col in 0..cols {
            let at = |t: usize| region[(window_row * wh + t / ww) * width + window_col * ww + t % ww];
            for i in 0..n {
                for j in 0..n {
                    mask.push(if at(i) == at(j) { 0.0 } else { SHIFTED_WINDOW_MASK });
                }
            }
        }
    }
    Tensor::from_vec(mask, (rows * cols, n, n), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_slices() {
        assert_eq!(python_slice(0, Some(-3), 6), 0..3);
        assert_eq!(python_slice(-3, Some(-1), 6), 3..5);
        assert_eq!(python_slice(-1, None, 6), 5..6);
        // A zero shift: `[-w:-0]` is empty, `[-0:]` the whole axis.
        assert_eq!(python_slice(-3, Some(0), 6), 3..3);
        assert_eq!(python_slice(0, None, 6), 0..6);
        assert_eq!(python_slice(-8, Some(-2), 3), 0..1);
    }
}
