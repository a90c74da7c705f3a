//! Eight-lane f32 vectors: AVX2+FMA where the CPU has them (checked at run time),
//! a portable array version elsewhere; and the fast `exp`, `sigmoid` and Gaussian
//! CDF built on them.
//!
//! Kernels are written once, generic over [`Simd`], marked `#[inline(always)]`,
//! and instantiated twice by [`simd_dispatch!`]: inside a `#[target_feature(enable =
//! "avx2,fma")]` function (where every intrinsic inlines), and for [`Portable`].
//! Both backends evaluate the same polynomials in the same order, so they agree to
//! an ulp or two (the portable path has no fused multiply-add).

use std::sync::atomic::{AtomicU8, Ordering};

/// Lanes of every backend (the portable one mirrors AVX2 so tails are handled alike).
pub const LANES: usize = 8;

/// The operations kernels need, on vectors of [`LANES`] f32.
///
/// # Safety
/// `load`/`store` read and write `LANES` floats through raw pointers.
pub trait Simd: Copy {
    type V: Copy;
    fn splat(x: f32) -> Self::V;
    /// # Safety
    /// `p` must be valid for reading `LANES` floats.
    unsafe fn load(p: *const f32) -> Self::V;
    /// # Safety
    /// `p` must be valid for writing `LANES` floats.
    unsafe fn store(p: *mut f32, v: Self::V);
    fn add(a: Self::V, b: Self::V) -> Self::V;
    fn sub(a: Self::V, b: Self::V) -> Self::V;
    fn mul(a: Self::V, b: Self::V) -> Self::V;
    fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c` (fused on AVX2).
    fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise maximum; a NaN in `b` is kept (like `_mm256_max_ps(a, b)`).
    fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise minimum; a NaN in `b` is kept.
    fn min(a: Self::V, b: Self::V) -> Self::V;
    fn abs(a: Self::V) -> Self::V;
    /// `x` with the sign bit of `s` (`copysign`).
    fn copysign(x: Self::V, s: Self::V) -> Self::V;
    /// Round to the nearest integer (ties to even), for `|x| < 2^22`.
    fn round(x: Self::V) -> Self::V;
    /// `2^n` for integral `n` in `[-126, 127]`.
    fn pow2i(n: Self::V) -> Self::V;
    /// `if x < t { a } else { b }` lane-wise (false for NaN `x`).
    fn select_lt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// `if x > t { a } else { b }` lane-wise (false for NaN `x`).
    fn select_gt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// Swaps the lanes of each pair: `[a0, a1, a2, a3, ..] -> [a1, a0, a3, a2, ..]`.
    fn swap_pairs(a: Self::V) -> Self::V;
    fn reduce_sum(a: Self::V) -> f32;
    fn reduce_max(a: Self::V) -> f32;
}

/// Loads `n < LANES` floats, filling the other lanes with `fill`.
///
/// # Safety
/// `p` must be valid for reading `n` floats.
#[inline(always)]
pub unsafe fn load_partial<S: Simd>(p: *const f32, n: usize, fill: f32) -> S::V {
    let mut buf = [fill; LANES];
    std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
    S::load(buf.as_ptr())
}

/// Stores the first `n < LANES` lanes.
///
/// # Safety
/// `p` must be valid for writing `n` floats.
#[inline(always)]
pub unsafe fn store_partial<S: Simd>(p: *mut f32, n: usize, v: S::V) {
    let mut buf = [0f32; LANES];
    S::store(buf.as_mut_ptr(), v);
    std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
}

/// The portable backend: `[f32; 8]` arrays, which the compiler vectorises for the
/// baseline instruction set (SSE2 on x86-64, NEON on aarch64).
#[derive(Clone, Copy, Debug)]
pub struct Portable;

#[inline(always)]
fn map1(a: [f32; LANES], f: impl Fn(f32) -> f32) -> [f32; LANES] {
    let mut out = [0f32; LANES];
    for i in 0..LANES {
        out[i] = f(a[i]);
    }
    out
}

#[inline(always)]
fn map2(a: [f32; LANES], b: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> [f32; LANES] {
    let mut out = [0f32; LANES];
    for i in 0..LANES {
        out[i] = f(a[i], b[i]);
    }
    out
}

impl Simd for Portable {
    type V = [f32; LANES];
    #[inline(always)]
    fn splat(x: f32) -> Self::V {
        [x; LANES]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        std::ptr::read_unaligned(p as *const [f32; LANES])
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        std::ptr::write_unaligned(p as *mut [f32; LANES], v)
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
        let mut out = [0f32; LANES];
        for i in 0..LANES {
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
        for i in 0..LANES {
            if x[i] < t[i] {
                out[i] = a[i];
            }
        }
        out
    }
    #[inline(always)]
    fn select_gt(x: Self::V, t: Self::V, a: Self::V, b: Self::V) -> Self::V {
        let mut out = b;
        for i in 0..LANES {
            if x[i] > t[i] {
                out[i] = a[i];
            }
        }
        out
    }
    #[inline(always)]
    fn swap_pairs(a: Self::V) -> Self::V {
        let mut out = a;
        for i in (0..LANES).step_by(2) {
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
    }
}

const MODE_AUTO: u8 = 0;
const MODE_PORTABLE: u8 = 1;
static MODE: AtomicU8 = AtomicU8::new(MODE_AUTO);

/// Forces the portable backend (`true`) or lets the CPU decide (`false`), process-wide.
/// For tests and benchmarks of the fallback; kernels already running are unaffected.
pub fn force_portable(portable: bool) {
    MODE.store(if portable { MODE_PORTABLE } else { MODE_AUTO }, Ordering::Relaxed);
}

/// Whether kernels take the AVX2+FMA path on this CPU (and it is not switched off).
#[inline]
pub fn avx2_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        MODE.load(Ordering::Relaxed) == MODE_AUTO
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The name of the backend kernels use now: `"avx2+fma"` or `"portable"`.
pub fn backend() -> &'static str {
    if avx2_enabled() {
        "avx2+fma"
    } else {
        "portable"
    }
}

/// Defines `fn $name(args) -> ret` that runs `$generic::<Avx2>` inside an
/// AVX2+FMA function when the CPU has them, else `$generic::<Portable>`.
/// `$generic` must be `#[inline(always)]` so that it is compiled with the features.
#[macro_export]
#[doc(hidden)]
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $generic:ident) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn with_avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic::<$crate::simd::Avx2>($($arg),*)
                }
                if $crate::simd::avx2_enabled() {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { with_avx2($($arg),*) };
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
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, `exp` is 0 (the true value is subnormal or below; the kernels flush it).
pub const EXP_LO: f32 = -87.336_55;
/// Above this, `exp` is +inf.
pub const EXP_HI: f32 = 88.722_83;

/// `e^x`: Cody–Waite range reduction `x = n ln2 + r`, `|r| <= ln2 / 2`, and the
/// Cephes degree-6 polynomial for `e^r`; `2^n` assembled in the exponent bits.
/// Exactly 0 below [`EXP_LO`] (so `exp(-inf) = 0`), +inf above [`EXP_HI`], NaN for NaN;
/// between 88.376 and [`EXP_HI`] it saturates at `e^88.376` (no kernel reaches there).
/// Measured: at most 2 ulp from the correctly rounded value over `[-87.3, 88.3]`.
#[inline(always)]
pub fn exp<S: Simd>(x: S::V) -> S::V {
    // Clamp with x as the second operand so that a NaN passes through.
    let xc = S::max(S::splat(EXP_LO), S::min(S::splat(88.376_26), x));
    let n = S::round(S::mul(xc, S::splat(LOG2E)));
    let r = S::fma(n, S::splat(-LN2_HI), xc);
    let r = S::fma(n, S::splat(-LN2_LO), r);
    let mut p = S::splat(1.987_569_1e-4);
    p = S::fma(p, r, S::splat(1.398_199_9e-3));
    p = S::fma(p, r, S::splat(8.333_452e-3));
    p = S::fma(p, r, S::splat(4.166_579_6e-2));
    p = S::fma(p, r, S::splat(1.666_666_5e-1));
    p = S::fma(p, r, S::splat(5.000_000_1e-1));
    let r2 = S::mul(r, r);
    let y = S::add(S::fma(p, r2, r), S::splat(1.0));
    let y = S::mul(y, S::pow2i(n));
    let y = S::select_lt(x, S::splat(EXP_LO), S::splat(0.0), y);
    S::select_gt(x, S::splat(EXP_HI), S::splat(f32::INFINITY), y)
}

/// `1 / (1 + e^-x)`: relative error of [`exp`] plus one rounding of the division.
#[inline(always)]
pub fn sigmoid<S: Simd>(x: S::V) -> S::V {
    let one = S::splat(1.0);
    S::div(one, S::add(one, exp::<S>(S::sub(S::splat(0.0), x))))
}

/// `erfc(z)` for `z >= 0`: the Chebyshev fit of Numerical Recipes (`erfcc`,
/// fractional error below 1.2e-7 in exact arithmetic), `t e^(-z^2 + P(t))` with
/// `t = 1 / (1 + z/2)`. Being relative, it stays accurate in the far tail, where
/// `1 - erf` would cancel.
#[inline(always)]
pub fn erfc_nonneg<S: Simd>(z: S::V) -> S::V {
    let one = S::splat(1.0);
    let t = S::div(one, S::fma(z, S::splat(0.5), one));
    let mut p = S::splat(0.170_872_77);
    p = S::fma(p, t, S::splat(-0.822_152_23));
    p = S::fma(p, t, S::splat(1.488_515_87));
    p = S::fma(p, t, S::splat(-1.135_203_98));
    p = S::fma(p, t, S::splat(0.278_868_07));
    p = S::fma(p, t, S::splat(-0.186_288_06));
    p = S::fma(p, t, S::splat(0.096_784_18));
    p = S::fma(p, t, S::splat(0.374_091_96));
    p = S::fma(p, t, S::splat(1.000_023_68));
    p = S::fma(p, t, S::splat(-1.265_512_23));
    // -z^2 + p with the product fused, so z^2 is not rounded before the sum.
    let arg = S::fma(S::sub(S::splat(0.0), z), z, p);
    S::mul(t, exp::<S>(arg))
}

/// The standard normal CDF `Φ(x) = erfc(-x/√2) / 2`, relative-accurate in both tails.
#[inline(always)]
pub fn normal_cdf<S: Simd>(x: S::V) -> S::V {
    let z = S::mul(S::abs(x), S::splat(std::f32::consts::FRAC_1_SQRT_2));
    let half_erfc = S::mul(S::splat(0.5), erfc_nonneg::<S>(z));
    // Φ(x) = 1 - erfc(z)/2 for x >= 0, erfc(z)/2 for x < 0.
    S::select_lt(x, S::splat(0.0), half_erfc, S::sub(S::splat(1.0), half_erfc))
}

/// `erf(x)`, from [`erfc_nonneg`]: absolute error near 1e-7 (relative error grows
/// near 0, where `erf(x) ≈ 1.128 x`; the kernels use [`normal_cdf`] instead).
#[inline(always)]
pub fn erf<S: Simd>(x: S::V) -> S::V {
    let e = S::sub(S::splat(1.0), erfc_nonneg::<S>(S::abs(x)));
    S::copysign(e, x)
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
    q = S::fma(q, x2, S::splat(-8.863_235_5e-3));
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
    let body = n - n % LANES;
    let mut i = 0;
    while i < body {
        // SAFETY: i + LANES <= n for both slices.
        unsafe { S::store(y.as_mut_ptr().add(i), f(S::load(x.as_ptr().add(i)))) };
        i += LANES;
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

    fn both_backends(x: &[f32], f: fn(&[f32], &mut [f32])) -> [Vec<f32>; 2] {
        let _lock = crate::test_lock();
        let mut fast = vec![0f32; x.len()];
        f(x, &mut fast);
        force_portable(true);
        let mut portable = vec![0f32; x.len()];
        f(x, &mut portable);
        force_portable(false);
        [fast, portable]
    }

    #[test]
    fn exp_within_two_ulp() {
        let x = grid(-87.3, 88.3, 200_001);
        for y in both_backends(&x, exp_slice) {
            let worst = x
                .iter()
                .zip(&y)
                .map(|(&x, &y)| ulps(y, (x as f64).exp()))
                .fold(0.0, f64::max);
            assert!(worst <= 2.0, "exp: {worst} ulp");
        }
    }

    #[test]
    fn exp_edges() {
        let x = [
            f32::NEG_INFINITY,
            -1000.0,
            -87.4,
            0.0,
            89.0,
            f32::INFINITY,
            f32::NAN,
            -0.0,
            1e-30,
        ];
        for y in both_backends(&x, exp_slice) {
            assert_eq!(&y[..3], &[0.0, 0.0, 0.0]);
            assert_eq!(y[3], 1.0);
            assert_eq!(&y[4..6], &[f32::INFINITY, f32::INFINITY]);
            assert!(y[6].is_nan());
            assert_eq!(&y[7..], &[1.0, 1.0]);
        }
    }

    /// Worst relative error of Φ over `[lo, hi]` (both backends).
    fn normal_cdf_worst(lo: f32, hi: f32) -> f64 {
        let x = grid(lo, hi, 100_001);
        both_backends(&x, normal_cdf_slice)
            .iter()
            .flat_map(|y| {
                x.iter().zip(y).map(|(&x, &y)| {
                    let exact = 0.5 * candle_core::cpu::erf::erfc_f64(-(x as f64) / std::f64::consts::SQRT_2);
                    ((y as f64) - exact).abs() / exact
                })
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn normal_cdf_relative_error() {
        // Relative, so the negative tail counts as much as the middle. In the far tail
        // the f32 rounding of the argument of exp (-x²/2, near -72 at x = -12) dominates.
        let centre = normal_cdf_worst(-2.0, 12.0);
        let middle = normal_cdf_worst(-5.0, 12.0);
        let tail = normal_cdf_worst(-12.0, -5.0);
        println!("normal cdf: relative error {centre:.2e} on [-2, 12], {middle:.2e} on [-5, 12], {tail:.2e} on [-12, -5]");
        assert!(centre < 6e-7, "normal cdf: relative error {centre:e} on [-2, 12]");
        assert!(middle < 3e-6, "normal cdf: relative error {middle:e} on [-5, 12]");
        assert!(tail < 2e-5, "normal cdf: relative error {tail:e} on [-12, -5]");
    }

    #[test]
    fn erf_absolute_error() {
        let x = grid(-6.0, 6.0, 100_001);
        for y in both_backends(&x, erf_slice) {
            let worst = x
                .iter()
                .zip(&y)
                .map(|(&x, &y)| ((y as f64) - candle_core::cpu::erf::erf_f64(x as f64)).abs())
                .fold(0.0, f64::max);
            assert!(worst < 3e-7, "erf: absolute error {worst:e}");
        }
    }

    #[test]
    fn tanh_relative_error() {
        let x = grid(-20.0, 20.0, 200_001);
        for y in both_backends(&x, tanh_slice) {
            let worst = x
                .iter()
                .zip(&y)
                .filter(|(&x, _)| x != 0.0)
                .map(|(&x, &y)| {
                    let exact = (x as f64).tanh();
                    ((y as f64) - exact).abs() / exact.abs()
                })
                .fold(0.0, f64::max);
            assert!(worst < 5e-7, "tanh: relative error {worst:e}");
        }
    }
}
