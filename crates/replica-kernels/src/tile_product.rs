//! The attention kernel's matrix products: small tiles (64 to 128 rows and
//! columns, an inner dimension of a head's width or a key tile), where a general
//! matrix library spends much of its time packing operands and choosing blocks.
//!
//! Here the right operand `B` must have unit column stride (its rows contiguous),
//! which the attention kernel arranges once per head (it keeps `Kᵀ` and `Vᵀ`
//! beside `K` and `V`), so nothing is packed per tile. The left operand `A` may
//! have any strides (a transposed tile is read in place). The micro-kernel holds a
//! block of `C` of `ROWS` rows by two vectors in registers and, for each step of
//! the inner dimension, loads one row of `B` and broadcasts one element of `A` per
//! row: eight rows by 32 columns with AVX-512 (16 of its 32 registers), six by 16
//! with AVX2 (12 of 16). Each element of `C` is a sum in order over the inner
//! dimension, in f32 with fused multiply-adds where the backend has them.

use crate::simd::{load_n, store_n, Simd};
use crate::simd_dispatch;

/// `C (m×n) = beta · A (m×k) · B (k×n)`, plus `C` when `accumulate`.
///
/// `A[i, p]` is at `a + i·a_rs + p·a_cs`, `B[p, j]` at `b + p·b_rs + j`, `C[i, j]`
/// at `c + i·c_rs + j`. With `k = 0` the product is zero.
#[derive(Clone, Copy)]
pub(crate) struct TileProduct {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: *const f32,
    pub a_rs: usize,
    pub a_cs: usize,
    pub b: *const f32,
    pub b_rs: usize,
    pub c: *mut f32,
    pub c_rs: usize,
    pub beta: f32,
    pub accumulate: bool,
}

impl TileProduct {
    /// Computes the product.
    ///
    /// # Safety
    /// The pointers must be valid for every element the strides address, and `C`
    /// must not overlap `A` or `B`.
    pub unsafe fn run(&self) {
        if self.m > 0 && self.n > 0 {
            product_dispatch(self);
        }
    }
}

simd_dispatch!(fn product_dispatch(t: &TileProduct) => product);

#[inline(always)]
fn product<S: Simd>(t: &TileProduct) {
    // SAFETY: `TileProduct::run`'s contract.
    unsafe {
        if S::LANES >= 16 {
            blocks::<S, 8>(t)
        } else {
            blocks::<S, 6>(t)
        }
    }
}

/// Calls the micro-kernel on each block of `ROWS` rows by two vectors of columns,
/// and on the rows left over with as many rows as there are.
#[inline(always)]
unsafe fn blocks<S: Simd, const ROWS: usize>(t: &TileProduct) {
    let width = 2 * S::LANES;
    let mut j = 0;
    while j < t.n {
        let cols = width.min(t.n - j);
        let mut i = 0;
        while i + ROWS <= t.m {
            block::<S, ROWS>(t, i, j, cols);
            i += ROWS;
        }
        match t.m - i {
            0 => {}
            1 => block::<S, 1>(t, i, j, cols),
            2 => block::<S, 2>(t, i, j, cols),
            3 => block::<S, 3>(t, i, j, cols),
            4 => block::<S, 4>(t, i, j, cols),
            5 => block::<S, 5>(t, i, j, cols),
            6 => block::<S, 6>(t, i, j, cols),
            _ => block::<S, 7>(t, i, j, cols),
        }
        j += width;
    }
}

/// `ROWS` rows from `i` and `cols <= 2·LANES` columns from `j` of `C`.
#[inline(always)]
unsafe fn block<S: Simd, const ROWS: usize>(t: &TileProduct, i: usize, j: usize, cols: usize) {
    let mut acc = [[S::splat(0.0); 2]; ROWS];
    let mut a = t.a.add(i * t.a_rs);
    let mut b = t.b.add(j);
    if cols == 2 * S::LANES {
        for _ in 0..t.k {
            let (b0, b1) = (S::load(b), S::load(b.add(S::LANES)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = S::splat(*a.add(r * t.a_rs));
                acc[0] = S::fma(x, b0, acc[0]);
                acc[1] = S::fma(x, b1, acc[1]);
            }
            a = a.add(t.a_cs);
            b = b.add(t.b_rs);
        }
    } else {
        // The last columns: partial loads (masked on AVX-512), the missing lanes zero.
        let rest = cols.saturating_sub(S::LANES);
        for _ in 0..t.k {
            let b0 = load_n::<S>(b, cols, 0.0);
            let b1 = if rest > 0 {
                load_n::<S>(b.add(S::LANES), rest, 0.0)
            } else {
                S::splat(0.0)
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = S::splat(*a.add(r * t.a_rs));
                acc[0] = S::fma(x, b0, acc[0]);
                acc[1] = S::fma(x, b1, acc[1]);
            }
            a = a.add(t.a_cs);
            b = b.add(t.b_rs);
        }
    }
    let beta = S::splat(t.beta);
    for (r, acc) in acc.iter().enumerate() {
        let row = t.c.add((i + r) * t.c_rs + j);
        for (half, v) in acc.iter().enumerate() {
            let len = cols.saturating_sub(half * S::LANES);
            if len == 0 {
                break;
            }
            let dst = row.add(half * S::LANES);
            let y = if t.accumulate {
                S::fma(*v, beta, load_n::<S>(dst, len, 0.0))
            } else {
                S::mul(*v, beta)
            };
            store_n::<S>(dst, len, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd;

    /// The product in f64 from the same strided operands.
    fn reference(t: &TileProduct, c0: &[f32]) -> Vec<f64> {
        let mut c = vec![0f64; t.m * t.c_rs];
        for i in 0..t.m {
            for j in 0..t.n {
                let mut s = 0f64;
                for p in 0..t.k {
                    unsafe {
                        s += *t.a.add(i * t.a_rs + p * t.a_cs) as f64 * *t.b.add(p * t.b_rs + j) as f64;
                    }
                }
                let prior = if t.accumulate { c0[i * t.c_rs + j] as f64 } else { 0.0 };
                c[i * t.c_rs + j] = t.beta as f64 * s + prior;
            }
        }
        c
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Every backend the machine has, over shapes with and without partial row
    /// blocks and column vectors, transposed and plain `A`, accumulating or not:
    /// within a few f32 roundings of the f64 product, and `C` untouched outside
    /// `m × n`.
    #[test]
    fn tile_products_match_f64_on_every_backend() {
        let _lock = crate::test_lock();
        for backend in simd::available_backends() {
            simd::force_backend(Some(backend)).expect("an available backend");
            for &(m, n, k) in &[
                (64, 128, 64),
                (7, 33, 5),
                (13, 17, 0),
                (1, 1, 1),
                (9, 70, 130),
                (128, 64, 64),
            ] {
                for transposed in [false, true] {
                    for accumulate in [false, true] {
                        let (a_rs, a_cs) = if transposed { (1, m + 3) } else { (k + 2, 1) };
                        let a = values((m + 3) * (k + 2), 1);
                        let b_rs = n + 5;
                        let b = values(k.max(1) * b_rs, 2);
                        let c_rs = n + 4;
                        let c0 = values(m * c_rs, 3);
                        let mut c = c0.clone();
                        let t = TileProduct {
                            m,
                            n,
                            k,
                            a: a.as_ptr(),
                            a_rs,
                            a_cs,
                            b: b.as_ptr(),
                            b_rs,
                            c: c.as_mut_ptr(),
                            c_rs,
                            beta: 0.375,
                            accumulate,
                        };
                        unsafe { t.run() };
                        let want = reference(&t, &c0);
                        for i in 0..m {
                            for j in 0..c_rs {
                                let at = i * c_rs + j;
                                if j >= n {
                                    assert_eq!(c[at], c0[at], "{backend:?} wrote outside C at ({i}, {j})");
                                    continue;
                                }
                                let bound = 1e-6 * (k as f64 + 2.0);
                                assert!(
                                    (c[at] as f64 - want[at]).abs() <= bound,
                                    "{backend:?} m{m} n{n} k{k} transposed {transposed} accumulate {accumulate}: \
                                     ({i}, {j}) = {} against {}",
                                    c[at],
                                    want[at]
                                );
                            }
                        }
                    }
                }
            }
        }
        simd::force_backend(None).expect("the default backend");
    }
}
