//! f32 vectors of a width each backend chooses: sixteen lanes with AVX-512F, eight
//! with AVX2+FMA (both checked at run time), eight in a portable array version
//! elsewhere; and the fast `exp`, `sigmoid` and Gaussian CDF built on them.
//!
//! Kernels are written once, generic over [`Simd`], marked `#[inline(always)]`,
//! and instantiated by [`simd_dispatch!`](crate::simd_dispatch) three times: inside a
//! `#[target_feature(enable = "avx512f,avx2,fma")]` function, inside an
//! `#[target_feature(enable = "avx2,fma")]` one (where every intrinsic inlines), and
//! for [`Portable`]. The lane count is [`Simd::LANES`]; a kernel steps by it and
//! hands its last, shorter vector to [`Simd::load_partial`] / [`Simd::store_partial`],
//! which AVX-512 does with masked loads and stores. Every backend evaluates the same
//! polynomials in the same order, so they agree to an ulp or two per element (the
//! portable path has no fused multiply-add; sums over a row are split over a
//! different number of lanes, so they round differently).

use std::sync::atomic::{AtomicU8, Ordering};

/// The most lanes of any backend (AVX-512's sixteen): the size of the buffers
/// through which the generic tails pass.
pub const MAX_LANES: usize = 16;

/// The operations kernels need, on vectors of [`Simd::LANES`] f32.
///
/// # Safety
/// `load`/`store` read and write `LANES` floats through raw pointers.
pub trait Simd: Copy {
    /// Lanes of a vector (at most [`MAX_LANES`]).
    const LANES: usize;
    /// A vector of [`Simd::LANES`] f32.
    type V: Copy;
    /// Every lane set to `x`.
    fn splat(x: f32) -> Self::V;
    /// # Safety
    /// `p` must be valid for reading `LANES` floats.
    unsafe fn load(p: *const f32) -> Self::V;
    /// # Safety
    /// `p` must be valid for writing `LANES` floats.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Loads `n < LANES` floats, filling the other lanes with `fill`.
    ///
    /// # Safety
    /// `p` must be valid for reading `n` floats.
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize, fill: f32) -> Self::V {
        let mut buf = [fill; MAX_LANES];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        Self::load(buf.as_ptr())
    }
    /// Stores the first `n < LANES` lanes.
    ///
    /// # Safety
    /// `p` must be valid for writing `n` floats.
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, n: usize, v: Self::V) {
        let mut buf = [0f32; MAX_LANES];
        Self::store(buf.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
    }
    /// Lane-wise `a + b`.
    fn add(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `a - b`.
    fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `a * b`.
    fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `a / b`.
    fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c` (fused on AVX2 and AVX-512).
    fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise maximum; a NaN in `b` is kept (like `_mm256_max_ps(a, b)`).
    fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise minimum; a NaN in `b` is kept.
    fn min(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `|a|`.
    fn abs(a: Self::V) -> Self::V;
    /// `x` with the sign bit of `s` (`copysign`).
    fn copysign(x: Self::V, s: Self::V) -> Self::V;
    /// Round to the nearest integer (ties to even), for `|x| < 2^22`.
    fn round(x: Self::V) -> Self::V;
    /// `2^n` for integral `n` in `[-127, 128]` (-127 gives 0, 128 gives +inf).
    fn pow2i(n: Self::V) -> Self::V;
    /// `if x < t { a } else { b }` lane-wise (false for NaN `x`).
    fn select_lt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// `if x > t { a } else { b }` lane-wise (false for NaN `x`).
    fn select_gt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// Swaps the lanes of each pair: `[a0, a1, a2, a3, ..] -> [a1, a0, a3, a2, ..]`.
    fn swap_pairs(a: Self::V) -> Self::V;
    /// The sum of the lanes.
    fn reduce_sum(a: Self::V) -> f32;
    /// The greatest lane.
    fn reduce_max(a: Self::V) -> f32;
    /// Writes the 8×8 block at `src` (rows `src_rs` floats apart) transposed at
    /// `dst` (rows `dst_rs` apart): `dst[j·dst_rs + i] = src[i·src_rs + j]`.
    ///
    /// # Safety
    /// `src` must be valid for reading, and `dst` for writing, 8 rows of 8 floats
    /// at their strides; the two must not overlap.
    #[inline(always)]
    unsafe fn transpose8(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
        for i in 0..8 {
            for j in 0..8 {
                *dst.add(j * dst_rs + i) = *src.add(i * src_rs + j);
            }
        }
    }
}

/// Loads `n < S::LANES` floats, filling the other lanes with `fill`.
///
/// # Safety
/// `p` must be valid for reading `n` floats.
#[inline(always)]
pub unsafe fn load_partial<S: Simd>(p: *const f32, n: usize, fill: f32) -> S::V {
    S::load_partial(p, n, fill)
}

/// Stores the first `n < S::LANES` lanes.
///
/// # Safety
/// `p` must be valid for writing `n` floats.
#[inline(always)]
pub unsafe fn store_partial<S: Simd>(p: *mut f32, n: usize, v: S::V) {
    S::store_partial(p, n, v)
}

/// Loads `min(len, S::LANES)` floats: a full vector when `len >= S::LANES`, else the
/// first `len` lanes with the rest `fill`.
///
/// # Safety
/// `p` must be valid for reading `min(len, S::LANES)` floats.
#[inline(always)]
pub unsafe fn load_n<S: Simd>(p: *const f32, len: usize, fill: f32) -> S::V {
    if len >= S::LANES {
        S::load(p)
    } else {
        S::load_partial(p, len, fill)
    }
}

/// Stores `min(len, S::LANES)` lanes.
///
/// # Safety
/// `p` must be valid for writing `min(len, S::LANES)` floats.
#[inline(always)]
pub unsafe fn store_n<S: Simd>(p: *mut f32, len: usize, v: S::V) {
    if len >= S::LANES {
        S::store(p, v)
    } else {
        S::store_partial(p, len, v)
    }
}

/// Lanes of the portable backend (as AVX2's, so that its tails are handled alike).
const PORTABLE_LANES: usize = 8;

/// The portable backend: `[f32; 8]` arrays, which the compiler vectorises for the
/// baseline instruction set (SSE2 on x86-64, NEON on aarch64).
#[derive(Clone, Copy, Debug)]
pub struct Portable;

#[inline(always)]
fn map1(a: [f32; PORTABLE_LANES], f: impl Fn(f32) -> f32) -> [f32; PORTABLE_LANES] {
    let mut out = [0f32; PORTABLE_LANES];
    for i in 0..PORTABLE_LANES {
        out[i] = f(a[i]);
    }
    out
}

#[inline(always)]
fn map2(a: [f32; PORTABLE_LANES], b: [f32; PORTABLE_LANES], f: impl Fn(f32, f32) -> f32) -> [f32; PORTABLE_LANES] {
    let mut out = [0f32; PORTABLE_LANES];
    for i in 0..PORTABLE_LANES {
        out[i] = f(a[i], b[i]);
    }
    out
}

impl Simd for Portable {
    const LANES: usize = PORTABLE_LANES;
    type V = [f32; PORTABLE_LANES];
    #[inline(always)]
    fn splat(x: f32) -> Self::V {
        [x; PORTABLE_LANES]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        std::ptr::read_unaligned(p as *const [f32; PORTABLE_LANES])
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        std::ptr::write_unaligned(p as *mut [f32; PORTABLE_LANES], v)
    }
    #[inline(always)]
    fn add(a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a * b)
    }
    #[inline(always)]
    fn div(a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| a / b)
    }
    #[inline(always)]
    fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        let mut out = [0f32; PORTABLE_LANES];
        for i in 0..PORTABLE_LANES {
            out[i] = a[i] * b[i] + c[i];
        }
        out
    }
    #[inline(always)]
    fn max(a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| if a > b { a } else { b })
    }
    #[inline(always)]
    fn min(a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |a, b| if a < b { a } else { b })
    }
    #[inline(always)]
    fn abs(a: Self::V) -> Self::V {
        map1(a, f32::abs)
    }
    #[inline(always)]
    fn copysign(x: Self::V, s: Self::V) -> Self::V {
        map2(x, s, f32::copysign)
    }
    #[inline(always)]
    fn round(x: Self::V) -> Self::V {
        // Adding and removing 1.5 * 2^23 rounds to nearest even in the default mode.
        const MAGIC: f32 = 12_582_912.0;
        map1(x, |x| (x + MAGIC) - MAGIC)
    }
    #[inline(always)]
    fn pow2i(n: Self::V) -> Self::V {
        map1(n, |n| f32::from_bits(((n as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    fn select_lt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V {
        let mut out = b;
        for i in 0..PORTABLE_LANES {
            if x[i] < t[i] {
                out[i] = a[i];
            }
        }
        out
    }
    #[inline(always)]
    fn select_gt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V {
        let mut out = b;
        for i in 0..PORTABLE_LANES {
            if x[i] > t[i] {
                out[i] = a[i];
            }
        }
        out
    }
    #[inline(always)]
    fn swap_pairs(a: Self::V) -> Self::V {
        let mut out = a;
        for i in (0..PORTABLE_LANES).step_by(2) {
            out.swap(i, i + 1);
        }
        out
    }
    #[inline(always)]
    fn reduce_sum(a: Self::V) -> f32 {
        // The same tree as the AVX2 reduction.
        let s4 = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
        let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
        s2[0] + s2[1]
    }
    #[inline(always)]
    fn reduce_max(a: Self::V) -> f32 {
        a.iter()
            .copied()
            .fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m })
    }
}

#[cfg(target_arch = "x86_64")]
pub use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// The AVX2+FMA backend. Its methods may only run on a CPU with both features;
    /// [`simd_dispatch!`](crate::simd_dispatch) checks before entering them.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2;

    impl Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;
        #[inline(always)]
        fn splat(x: f32) -> Self::V {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        fn add(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        fn div(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn max(a: Self::V, b: Self::V) -> Self::V {
            // maxps returns its second operand when either is NaN.
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        fn min(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        fn abs(a: Self::V) -> Self::V {
            unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
        }
        #[inline(always)]
        fn copysign(x: Self::V, s: Self::V) -> Self::V {
            unsafe {
                let sign = _mm256_set1_ps(-0.0);
                _mm256_or_ps(_mm256_andnot_ps(sign, x), _mm256_and_ps(sign, s))
            }
        }
        #[inline(always)]
        fn round(x: Self::V) -> Self::V {
            unsafe { _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC) }
        }
        #[inline(always)]
        fn pow2i(n: Self::V) -> Self::V {
            unsafe {
                let i = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
                _mm256_castsi256_ps(_mm256_slli_epi32(i, 23))
            }
        }
        #[inline(always)]
        fn select_lt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, t, _CMP_LT_OQ)) }
        }
        #[inline(always)]
        fn select_gt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, t, _CMP_GT_OQ)) }
        }
        #[inline(always)]
        fn swap_pairs(a: Self::V) -> Self::V {
            unsafe { _mm256_permute_ps(a, 0b10_11_00_01) }
        }
        #[inline(always)]
        fn reduce_sum(a: Self::V) -> f32 {
            unsafe {
                let s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
                _mm_cvtss_f32(s1)
            }
        }
        #[inline(always)]
        fn reduce_max(a: Self::V) -> f32 {
            unsafe {
                let m4 = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                let m1 = _mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1));
                _mm_cvtss_f32(m1)
            }
        }
        #[inline(always)]
        unsafe fn transpose8(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
            transpose8_avx(src, src_rs, dst, dst_rs)
        }
    }

    /// [`Simd::transpose8`] in 256-bit registers (AVX, which AVX-512 CPUs have too):
    /// pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped,
    /// so each row is one load and each column one store.
    ///
    /// # Safety
    /// As [`Simd::transpose8`], on a CPU with AVX.
    #[inline(always)]
    pub(super) unsafe fn transpose8_avx(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
        // Plain loops over arrays (no closures, which need not inherit the caller's
        // target features).
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, row) in r.iter_mut().enumerate() {
            *row = _mm256_loadu_ps(src.add(i * src_rs));
        }
        // Rows 2k and 2k+1 interleaved: t[2k] holds their columns 0, 1, 4, 5; t[2k+1]
        // columns 2, 3, 6, 7.
        let mut t = [_mm256_setzero_ps(); 8];
        for k in 0..4 {
            t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        // Four rows' column c in the low half and column c + 4 in the high half:
        // u[c] for rows 0-3, u[4 + c] for rows 4-7.
        let mut u = [_mm256_setzero_ps(); 8];
        for quad in [0, 4] {
            u[quad] = _mm256_shuffle_ps::<0b01_00_01_00>(t[quad], t[quad + 2]);
            u[quad + 1] = _mm256_shuffle_ps::<0b11_10_11_10>(t[quad], t[quad + 2]);
            u[quad + 2] = _mm256_shuffle_ps::<0b01_00_01_00>(t[quad + 1], t[quad + 3]);
            u[quad + 3] = _mm256_shuffle_ps::<0b11_10_11_10>(t[quad + 1], t[quad + 3]);
        }
        for c in 0..4 {
            _mm256_storeu_ps(dst.add(c * dst_rs), _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]));
            _mm256_storeu_ps(
                dst.add((c + 4) * dst_rs),
                _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]),
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use avx512::Avx512;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// The AVX-512F backend (sixteen lanes). Its methods may only run on a CPU with
    /// AVX-512F (which implies AVX2 and FMA); [`simd_dispatch!`](crate::simd_dispatch)
    /// checks before entering them.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx512;

    /// A mask of the first `n < 16` lanes.
    #[inline(always)]
    fn first_lanes(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// The upper eight lanes, as an AVX vector (`vextractf64x4` is AVX-512F; the
    /// f32 flavour would need AVX-512DQ).
    #[inline(always)]
    fn upper_half(a: __m512) -> __m256 {
        unsafe { _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a))) }
    }

    impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        #[inline(always)]
        fn splat(x: f32) -> Self::V {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn load_partial(p: *const f32, n: usize, fill: f32) -> Self::V {
            // Masked-off lanes are not read (no fault past the slice's end).
            _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_lanes(n), p)
        }
        #[inline(always)]
        unsafe fn store_partial(p: *mut f32, n: usize, v: Self::V) {
            _mm512_mask_storeu_ps(p, first_lanes(n), v)
        }
        #[inline(always)]
        fn add(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        fn div(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn max(a: Self::V, b: Self::V) -> Self::V {
            // As maxps on AVX2: the second operand when either is NaN.
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        fn min(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        fn abs(a: Self::V) -> Self::V {
            unsafe { _mm512_abs_ps(a) }
        }
        #[inline(always)]
        fn copysign(x: Self::V, s: Self::V) -> Self::V {
            unsafe {
                let sign = _mm512_set1_epi32(i32::MIN);
                let (x, s) = (_mm512_castps_si512(x), _mm512_castps_si512(s));
                _mm512_castsi512_ps(_mm512_or_si512(_mm512_andnot_si512(sign, x), _mm512_and_si512(sign, s)))
            }
        }
        #[inline(always)]
        fn round(x: Self::V) -> Self::V {
            unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x) }
        }
        #[inline(always)]
        fn pow2i(n: Self::V) -> Self::V {
            unsafe {
                let i = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
                _mm512_castsi512_ps(_mm512_slli_epi32::<23>(i))
            }
        }
        #[inline(always)]
        fn select_lt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, t), b, a) }
        }
        #[inline(always)]
        fn select_gt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, t), b, a) }
        }
        #[inline(always)]
        fn swap_pairs(a: Self::V) -> Self::V {
            unsafe { _mm512_permute_ps::<0b10_11_00_01>(a) }
        }
        #[inline(always)]
        fn reduce_sum(a: Self::V) -> f32 {
            // Halve to eight lanes, then the AVX2 tree.
            unsafe {
                let s8 = _mm256_add_ps(_mm512_castps512_ps256(a), upper_half(a));
                let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
                let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2));
                _mm_cvtss_f32(s1)
            }
        }
        #[inline(always)]
        fn reduce_max(a: Self::V) -> f32 {
            unsafe {
                let m8 = _mm256_max_ps(_mm512_castps512_ps256(a), upper_half(a));
                let m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps::<1>(m8));
                let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                let m1 = _mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2));
                _mm_cvtss_f32(m1)
            }
        }
        #[inline(always)]
        unsafe fn transpose8(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
            super::avx2::transpose8_avx(src, src_rs, dst, dst_rs)
        }
    }
}

/// A SIMD backend the kernels can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// [`Portable`]: plain arrays, any CPU.
    Portable,
    /// `Avx2`: AVX2 and FMA, eight lanes (x86-64).
    Avx2,
    /// `Avx512`: AVX-512F, sixteen lanes (x86-64).
    Avx512,
}

impl Backend {
    /// Every backend, from the narrowest to the widest.
    pub const ALL: [Backend; 3] = [Backend::Portable, Backend::Avx2, Backend::Avx512];

    /// Its name, as [`backend`] reports it and `REPLICA_SIMD` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Portable => "portable",
            Backend::Avx2 => "avx2+fma",
            Backend::Avx512 => "avx512f",
        }
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn code(self) -> u8 {
        match self {
            Backend::Portable => MODE_PORTABLE,
            Backend::Avx2 => MODE_AVX2,
            Backend::Avx512 => MODE_AVX512,
        }
    }
}

/// The backends this CPU can run, from the narrowest to the widest.
pub fn available_backends() -> Vec<Backend> {
    Backend::ALL.into_iter().filter(|b| b.supported()).collect()
}

/// Not yet decided: the first call reads `REPLICA_SIMD` and the CPU.
const MODE_UNSET: u8 = 0;
const MODE_PORTABLE: u8 = 1;
const MODE_AVX2: u8 = 2;
const MODE_AVX512: u8 = 3;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNSET);

/// The backend used when nothing is forced: the widest this CPU runs. On the AMD
/// EPYC (Zen 4) measured, which executes a 512-bit operation as two 256-bit halves,
/// AVX-512 was still 1.1 to 1.9 times as fast as AVX2 for softmax, the norms and
/// the activations, and within the noise of a shared machine elsewhere
/// (docs/kernels.md), so no CPU gets a narrower default.
fn default_backend() -> Backend {
    Backend::ALL
        .into_iter()
        .rev()
        .find(|b| b.supported())
        .unwrap_or(Backend::Portable)
}

/// The backend named by `REPLICA_SIMD` (`portable`, `avx2`/`avx2+fma`, `avx512`/`avx512f`),
/// if set, known and supported; otherwise the default. An unknown or unsupported name
/// is reported once on stderr and ignored.
fn initial_backend() -> Backend {
    let Ok(name) = std::env::var("REPLICA_SIMD") else {
        return default_backend();
    };
    let wanted = match name.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => return default_backend(),
        "portable" => Some(Backend::Portable),
        "avx2" | "avx2+fma" => Some(Backend::Avx2),
        "avx512" | "avx512f" => Some(Backend::Avx512),
        _ => None,
    };
    match wanted {
        Some(b) if b.supported() => b,
        Some(b) => {
            eprintln!(
                "REPLICA_SIMD={name}: this CPU lacks {}, using {}",
                b.name(),
                default_backend().name()
            );
            default_backend()
        }
        None => {
            eprintln!(
                "REPLICA_SIMD={name}: expected portable, avx2 or avx512; using {}",
                default_backend().name()
            );
            default_backend()
        }
    }
}

/// The backend kernels run on now.
#[inline]
pub fn current_backend() -> Backend {
    let mode = match MODE.load(Ordering::Relaxed) {
        MODE_UNSET => {
            let code = initial_backend().code();
            // Another thread may have decided (or forced) meanwhile: keep its choice.
            match MODE.compare_exchange(MODE_UNSET, code, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => code,
                Err(other) => other,
            }
        }
        m => m,
    };
    match mode {
        MODE_AVX512 => Backend::Avx512,
        MODE_AVX2 => Backend::Avx2,
        _ => Backend::Portable,
    }
}

/// Makes kernels run on `backend`, process-wide, or on the default again (`None`:
/// the widest this CPU runs, or `REPLICA_SIMD`'s choice). For tests and
/// benchmarks; kernels already running are unaffected.
///
/// Returns an error naming the backend when this CPU cannot run it.
pub fn force_backend(backend: Option<Backend>) -> Result<(), String> {
    let chosen = match backend {
        Some(b) if !b.supported() => return Err(format!("this CPU cannot run the {} backend", b.name())),
        Some(b) => b,
        None => initial_backend(),
    };
    MODE.store(chosen.code(), Ordering::Relaxed);
    Ok(())
}

/// Forces the portable backend (`true`) or goes back to the default (`false`),
/// process-wide. For tests and benchmarks of the fallback; kernels already running
/// are unaffected.
pub fn force_portable(portable: bool) {
    // The portable backend runs everywhere, and the default is always supported.
    let _ = force_backend(portable.then_some(Backend::Portable));
}

/// Whether kernels take the AVX2+FMA path now (not AVX-512, not the portable one).
#[inline]
pub fn avx2_enabled() -> bool {
    current_backend() == Backend::Avx2
}

/// Whether kernels take the AVX-512 path now.
#[inline]
pub fn avx512_enabled() -> bool {
    current_backend() == Backend::Avx512
}

/// The name of the backend kernels use now: `"avx512f"`, `"avx2+fma"` or `"portable"`.
pub fn backend() -> &'static str {
    current_backend().name()
}

/// Defines `fn $name(args) -> ret` that runs `$generic::<Avx512>` or `$generic::<Avx2>`
/// inside a function compiled with those features, as [`current_backend`] says,
/// else `$generic::<Portable>`.
/// `$generic` must be `#[inline(always)]` so that it is compiled with the features.
#[macro_export]
#[doc(hidden)]
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $generic:ident) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn with_avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic::<$crate::simd::Avx512>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn with_avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic::<$crate::simd::Avx2>($($arg),*)
                }
                match $crate::simd::current_backend() {
                    // SAFETY: a backend is current only where the CPU supports it
                    // (checked when it was chosen).
                    $crate::simd::Backend::Avx512 => return unsafe { with_avx512($($arg),*) },
                    $crate::simd::Backend::Avx2 => return unsafe { with_avx2($($arg),*) },
                    $crate::simd::Backend::Portable => {}
                }
            }
            $generic::<$crate::simd::Portable>($($arg),*)
        }
    };
}

// ---------------------------------------------------------------------------------------
// Transcendentals. Accuracy is measured by the tests at the end of this file and stated
// in docs/kernels.md.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two: `LN2_HI` has trailing zero bits so that `n * LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Arguments are clamped to `[EXP_LO, EXP_HI]`: at `EXP_LO` the exponent `n` is -127,
/// whose `2^n` assembles to exactly 0, so `exp(-inf) = 0`; at `EXP_HI` it is 128, which
/// assembles to +inf.
pub const EXP_LO: f32 = -88.0;
/// See [`EXP_LO`].
pub const EXP_HI: f32 = 89.0;

/// `e^x`: Cody–Waite range reduction `x = n ln2 + r`, `|r| <= ln2 / 2`, and the
/// Cephes degree-6 polynomial for `e^r`; `2^n` assembled in the exponent bits.
/// Results below `2^-126` (x below about -87.7) flush to 0, so `exp(-inf) = 0`;
/// results above `2^127.5` (x above about 88.4) are +inf; NaN stays NaN.
/// Measured: within 1 ulp of the exact value over `[-87.3, 88.3]` (0.99 ulp at worst,
/// with and without FMA).
#[inline(always)]
pub fn exp<S: Simd>(x: S::V) -> S::V {
    // Clamp with x as the second operand so that a NaN passes through.
    let xc = S::max(S::splat(EXP_LO), S::min(S::splat(EXP_HI), x));
    let n = S::round(S::mul(xc, S::splat(LOG2E)));
    let r = S::fma(n, S::splat(-LN2_HI), xc);
    let r = S::fma(n, S::splat(-LN2_LO), r);
    // e^r = 1 + r + r² p(r), p evaluated by Estrin's scheme (a shorter dependency
    // chain than Horner's, which is what bounds these kernels).
    let r2 = S::mul(r, r);
    let r4 = S::mul(r2, r2);
    let p01 = S::fma(S::splat(1.666_666_5e-1), r, S::splat(0.5));
    let p23 = S::fma(S::splat(8.333_452e-3), r, S::splat(4.166_579_6e-2));
    let p45 = S::fma(S::splat(1.987_569_1e-4), r, S::splat(1.398_199_9e-3));
    let p = S::fma(p45, r4, S::fma(p23, r2, p01));
    let y = S::add(S::fma(p, r2, r), S::splat(1.0));
    S::mul(y, S::pow2i(n))
}

/// `1 / (1 + e^-x)`: relative error of [`exp`] plus one rounding of the division.
#[inline(always)]
pub fn sigmoid<S: Simd>(x: S::V) -> S::V {
    let one = S::splat(1.0);
    S::div(one, S::add(one, exp::<S>(S::sub(S::splat(0.0), x))))
}

/// `erf(x)`: the rational approximation `x P(x²) / Q(x²)` (odd degree 13 over even
/// degree 8) on `x` clamped to `[-4, 4]`, beyond which `erf` rounds to ±1 in f32;
/// the coefficients are Eigen's `generic_fast_erf_float` (also TensorFlow's and
/// XLA's). No `exp`: 11 FMAs and a division.
/// Exactly ±1 beyond ±3.92 (so `gelu(x)` is exactly 0 and x far out).
/// Measured: absolute error below 5e-7 everywhere (relative error grows where
/// `1 + erf` cancels, for x below about -2, as in PyTorch's own vectorised `erf`).
#[inline(always)]
pub fn erf<S: Simd>(x: S::V) -> S::V {
    // x as the second operand: a NaN passes through.
    let x = S::max(S::splat(-4.0), S::min(S::splat(4.0), x));
    let x2 = S::mul(x, x);
    let mut p = S::splat(-2.726_142_3e-10);
    p = S::fma(p, x2, S::splat(2.770_681_4e-8));
    p = S::fma(p, x2, S::splat(-2.101_024e-6));
    p = S::fma(p, x2, S::splat(-5.692_506_4e-5));
    p = S::fma(p, x2, S::splat(-7.349_906_3e-4));
    p = S::fma(p, x2, S::splat(-2.954_600_2e-3));
    p = S::fma(p, x2, S::splat(-1.609_603_3e-2));
    let mut q = S::splat(-1.456_607_2e-5);
    q = S::fma(q, x2, S::splat(-2.133_740_6e-4));
    q = S::fma(q, x2, S::splat(-1.682_827e-3));
    q = S::fma(q, x2, S::splat(-7.373_329e-3));
    q = S::fma(q, x2, S::splat(-1.426_473_9e-2));
    let e = S::div(S::mul(x, p), q);
    // erf(x) rounds to ±1 in f32 beyond 3.92; the rational stops an ulp short.
    S::select_gt(S::abs(x), S::splat(3.92), S::copysign(S::splat(1.0), x), e)
}

/// The standard normal CDF `Φ(x) = (1 + erf(x/√2)) / 2`, from [`erf`]:
/// absolute error below 3e-7.
#[inline(always)]
pub fn normal_cdf<S: Simd>(x: S::V) -> S::V {
    let e = erf::<S>(S::mul(x, S::splat(std::f32::consts::FRAC_1_SQRT_2)));
    S::fma(e, S::splat(0.5), S::splat(0.5))
}

/// `tanh(x) = 1 - 2 / (e^{2|x|} + 1)` (sign restored) for `|x| >= 0.4`, and the odd
/// Taylor series to x^13 below, where that difference would cancel.
#[inline(always)]
pub fn tanh<S: Simd>(x: S::V) -> S::V {
    let ax = S::abs(x);
    let one = S::splat(1.0);
    let e = exp::<S>(S::mul(ax, S::splat(2.0)));
    let big = S::copysign(S::sub(one, S::div(S::splat(2.0), S::add(e, one))), x);
    // x + x^3 Q(x^2): truncation error below 4e-9 relative for |x| < 0.4.
    let x2 = S::mul(x, x);
    let mut q = S::splat(3.592_128e-3);
    q = S::fma(q, x2, S::splat(-8.863_236e-3));
    q = S::fma(q, x2, S::splat(2.186_948_8e-2));
    q = S::fma(q, x2, S::splat(-5.396_825_4e-2));
    q = S::fma(q, x2, S::splat(1.333_333_3e-1));
    q = S::fma(q, x2, S::splat(-3.333_333_4e-1));
    let small = S::fma(S::mul(q, x2), x, x);
    S::select_lt(ax, S::splat(0.4), small, big)
}

/// Applies a vector function to a slice (the tail through a padded vector).
#[inline(always)]
pub fn map_slice<S: Simd>(x: &[f32], y: &mut [f32], f: impl Fn(S::V) -> S::V) {
    let n = x.len().min(y.len());
    let body = n - n % S::LANES;
    let mut i = 0;
    while i < body {
        // SAFETY: i + LANES <= n for both slices.
        unsafe { S::store(y.as_mut_ptr().add(i), f(S::load(x.as_ptr().add(i)))) };
        i += S::LANES;
    }
    if i < n {
        // SAFETY: n - i < LANES floats remain in both slices.
        unsafe {
            let v = load_partial::<S>(x.as_ptr().add(i), n - i, 0.0);
            store_partial::<S>(y.as_mut_ptr().add(i), n - i, f(v));
        }
    }
}

#[inline(always)]
fn exp_slice_generic<S: Simd>(x: &[f32], y: &mut [f32]) {
    map_slice::<S>(x, y, exp::<S>)
}
#[inline(always)]
fn erf_slice_generic<S: Simd>(x: &[f32], y: &mut [f32]) {
    map_slice::<S>(x, y, erf::<S>)
}
#[inline(always)]
fn tanh_slice_generic<S: Simd>(x: &[f32], y: &mut [f32]) {
    map_slice::<S>(x, y, tanh::<S>)
}
#[inline(always)]
fn sigmoid_slice_generic<S: Simd>(x: &[f32], y: &mut [f32]) {
    map_slice::<S>(x, y, sigmoid::<S>)
}
#[inline(always)]
fn normal_cdf_slice_generic<S: Simd>(x: &[f32], y: &mut [f32]) {
    map_slice::<S>(x, y, normal_cdf::<S>)
}

simd_dispatch!(
    /// `y[i] = exp(x[i])` with the fast [`exp`] (see its accuracy).
    pub fn exp_slice(x: &[f32], y: &mut [f32]) => exp_slice_generic
);
simd_dispatch!(
    /// `y[i] = erf(x[i])` with the fast [`erf`].
    pub fn erf_slice(x: &[f32], y: &mut [f32]) => erf_slice_generic
);
simd_dispatch!(
    /// `y[i] = tanh(x[i])` with the fast [`tanh`].
    pub fn tanh_slice(x: &[f32], y: &mut [f32]) => tanh_slice_generic
);
simd_dispatch!(
    /// `y[i] = σ(x[i])` with the fast [`sigmoid`].
    pub fn sigmoid_slice(x: &[f32], y: &mut [f32]) => sigmoid_slice_generic
);
simd_dispatch!(
    /// `y[i] = Φ(x[i])`, the standard normal CDF, with the fast [`normal_cdf`].
    pub fn normal_cdf_slice(x: &[f32], y: &mut [f32]) => normal_cdf_slice_generic
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        if a == b32 {
            return 0.0;
        }
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        ((a as f64) - b).abs() / ulp
    }

    fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..n).map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32).collect()
    }

    /// `f(x)` on every backend this CPU runs, with the backend's name.
    fn all_backends(x: &[f32], f: fn(&[f32], &mut [f32])) -> Vec<(Vec<f32>, &'static str)> {
        let _lock = crate::test_lock();
        let results = available_backends()
            .into_iter()
            .map(|b| {
                force_backend(Some(b)).expect("an available backend");
                let mut y = vec![0f32; x.len()];
                f(x, &mut y);
                (y, b.name())
            })
            .collect();
        force_backend(None).expect("the default backend");
        results
    }

    /// The FMA backends evaluate the same operations in the same order lane by lane,
    /// so element-wise functions agree bit for bit at every length (every tail).
    #[test]
    fn fma_backends_agree_bit_for_bit_at_every_length() {
        type SliceFn = fn(&[f32], &mut [f32]);
        let fns: [(&str, SliceFn); 5] = [
            ("exp", exp_slice),
            ("erf", erf_slice),
            ("tanh", tanh_slice),
            ("sigmoid", sigmoid_slice),
            ("normal_cdf", normal_cdf_slice),
        ];
        let x = grid(-9.0, 9.0, 53);
        for len in 0..=x.len() {
            for (name, f) in fns {
                let results: Vec<_> = all_backends(&x[..len], f)
                    .into_iter()
                    .filter(|(_, b)| *b != Backend::Portable.name())
                    .collect();
                for pair in results.windows(2) {
                    let ((a, an), (b, bn)) = (&pair[0], &pair[1]);
                    let same = a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{name}, length {len}: {an} {a:?} vs {bn} {b:?}");
                }
            }
        }
    }

    #[test]
    fn exp_within_one_ulp() {
        let x = grid(-87.3, 88.3, 200_001);
        for (y, backend) in all_backends(&x, exp_slice) {
            let worst = x
                .iter()
                .zip(y.iter())
                .map(|(&x, &y)| ulps(y, (x as f64).exp()))
                .fold(0.0, f64::max);
            println!("exp ({backend}): {worst:.3} ulp on [-87.3, 88.3]");
            assert!(worst <= 1.0, "exp: {worst} ulp");
        }
    }

    #[test]
    fn exp_edges() {
        let x = [
            f32::NEG_INFINITY,
            -1000.0,
            -88.0,
            0.0,
            89.0,
            f32::INFINITY,
            f32::NAN,
            -0.0,
            1e-30,
        ];
        for (y, _) in all_backends(&x, exp_slice) {
            assert_eq!(&y[..3], &[0.0, 0.0, 0.0]);
            assert_eq!(y[3], 1.0);
            assert_eq!(&y[4..6], &[f32::INFINITY, f32::INFINITY]);
            assert!(y[6].is_nan());
            assert_eq!(&y[7..], &[1.0, 1.0]);
        }
        // Just above the flush threshold the result is still a normal number.
        for (y, _) in all_backends(&[-87.3], exp_slice) {
            assert!((y[0] as f64 / (-87.3f32 as f64).exp() - 1.0).abs() < 1e-6, "{}", y[0]);
        }
    }

    #[test]
    fn normal_cdf_absolute_error() {
        let x = grid(-12.0, 12.0, 100_001);
        for (y, backend) in all_backends(&x, normal_cdf_slice) {
            let worst = x
                .iter()
                .zip(y.iter())
                .map(|(&x, &y)| {
                    let exact = 0.5 * candle_core::cpu::erf::erfc_f64(-(x as f64) / std::f64::consts::SQRT_2);
                    ((y as f64) - exact).abs()
                })
                .fold(0.0, f64::max);
            println!("normal cdf ({backend}): absolute error {worst:.2e} on [-12, 12]");
            assert!(worst < 3e-7, "normal cdf: absolute error {worst:e}");
        }
    }

    #[test]
    fn sigmoid_relative_error() {
        let x = grid(-80.0, 80.0, 200_001);
        for (y, backend) in all_backends(&x, sigmoid_slice) {
            let worst = x
                .iter()
                .zip(y.iter())
                .map(|(&x, &y)| {
                    let exact = 1.0 / (1.0 + (-(x as f64)).exp());
                    ((y as f64) - exact).abs() / exact
                })
                .fold(0.0, f64::max);
            println!("sigmoid ({backend}): relative error {worst:.2e} on [-80, 80]");
            assert!(worst < 3e-7, "sigmoid: relative error {worst:e}");
        }
    }

    #[test]
    fn erf_absolute_error() {
        let x = grid(-6.0, 6.0, 100_001);
        for (y, backend) in all_backends(&x, erf_slice) {
            let worst = x
                .iter()
                .zip(y.iter())
                .map(|(&x, &y)| ((y as f64) - candle_core::cpu::erf::erf_f64(x as f64)).abs())
                .fold(0.0, f64::max);
            println!("erf ({backend}): absolute error {worst:.2e} on [-6, 6]");
            assert!(worst < 5e-7, "erf: absolute error {worst:e}");
        }
    }

    #[test]
    fn tanh_relative_error() {
        let x = grid(-20.0, 20.0, 200_001);
        for (y, backend) in all_backends(&x, tanh_slice) {
            let worst = x
                .iter()
                .zip(y.iter())
                .filter(|(&x, _)| x != 0.0)
                .map(|(&x, &y)| {
                    let exact = (x as f64).tanh();
                    ((y as f64) - exact).abs() / exact.abs()
                })
                .fold(0.0, f64::max);
            println!("tanh ({backend}): relative error {worst:.2e} on [-20, 20]");
            assert!(worst < 5e-7, "tanh: relative error {worst:e}");
        }
    }
}
