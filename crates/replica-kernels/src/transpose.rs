//! Writing a block of a matrix transposed: attention's keys and values, once per
//! head, and the few-row linear product's output. Eight by eight tiles go through
//! registers ([`Simd::transpose8`]: on AVX one load per source row and one store
//! per column), so that neither side is touched one float at a time, which a
//! strided scalar copy does on one of its two sides; the edges are copied singly.

use crate::simd::Simd;
use crate::simd_dispatch;

/// A `rows × cols` block at `src`, rows `src_rs` floats apart, to be written
/// transposed (`cols × rows`) at `dst`, rows `dst_rs` apart.
#[derive(Clone, Copy)]
pub(crate) struct Transpose {
    pub src: *const f32,
    pub src_rs: usize,
    pub rows: usize,
    pub cols: usize,
    pub dst: *mut f32,
    pub dst_rs: usize,
}

impl Transpose {
    /// Writes `dst[j·dst_rs + i] = src[i·src_rs + j]` for `i < rows`, `j < cols`.
    ///
    /// # Safety
    /// `src` must be valid for reading `rows` rows of `cols` floats at its stride,
    /// `dst` for writing `cols` rows of `rows` floats at its, and they must not overlap.
    pub unsafe fn run(&self) {
        transpose_dispatch(self)
    }
}

simd_dispatch!(fn transpose_dispatch(t: &Transpose) => transpose);

#[inline(always)]
fn transpose<S: Simd>(t: &Transpose) {
    const TILE: usize = 8;
    let (rows8, cols8) = (t.rows - t.rows % TILE, t.cols - t.cols % TILE);
    // SAFETY: `Transpose::run`'s contract; every index is below rows × cols.
    unsafe {
        let copy = |i: usize, j: usize| *t.dst.add(j * t.dst_rs + i) = *t.src.add(i * t.src_rs + j);
        for i in (0..rows8).step_by(TILE) {
            for j in (0..cols8).step_by(TILE) {
                S::transpose8(
                    t.src.add(i * t.src_rs + j),
                    t.src_rs,
                    t.dst.add(j * t.dst_rs + i),
                    t.dst_rs,
                );
            }
            for i in i..i + TILE {
                (cols8..t.cols).for_each(|j| copy(i, j));
            }
        }
        for i in rows8..t.rows {
            (0..t.cols).for_each(|j| copy(i, j));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd;

    /// Every backend the machine has, at sizes with and without partial tiles and
    /// padded strides: each element lands where it belongs, and nothing is written
    /// outside the destination block.
    #[test]
    fn transposes_exactly_on_every_backend() {
        let _lock = crate::test_lock();
        for backend in simd::available_backends() {
            simd::force_backend(Some(backend)).expect("an available backend");
            for &(rows, cols) in &[
                (8, 8),
                (64, 128),
                (13, 21),
                (7, 5),
                (1, 9),
                (9, 1),
                (0, 4),
                (16, 3),
                (40, 17),
                (24, 24),
            ] {
                let (src_rs, dst_rs) = (cols + 3, rows + 5);
                let src: Vec<f32> = (0..rows * src_rs).map(|x| x as f32).collect();
                let mut dst = vec![-1f32; cols.max(1) * dst_rs];
                let t = Transpose {
                    src: src.as_ptr(),
                    src_rs,
                    rows,
                    cols,
                    dst: dst.as_mut_ptr(),
                    dst_rs,
                };
                unsafe { t.run() };
                for j in 0..cols.max(1) {
                    for i in 0..dst_rs {
                        let want = if i < rows && j < cols {
                            src[i * src_rs + j]
                        } else {
                            -1.0
                        };
                        assert_eq!(dst[j * dst_rs + i], want, "{backend:?} {rows}x{cols}: dst[{j}][{i}]");
                    }
                }
            }
        }
        simd::force_backend(None).expect("the default backend");
    }
}
