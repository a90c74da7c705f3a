//! Fused scaled dot-product attention in the manner of FlashAttention (Dao et al.,
//! arXiv 2205.14135; the backward as in FlashAttention-2, arXiv 2307.08691), on the CPU.
//!
//! The scores are never materialised whole. For a tile of queries, key/value
//! tiles stream past: `S = Q Kᵀ` and `O += P V` are tile products
//! ([`TileProduct`], on each head's keys transposed once per task, in cache), and the softmax is computed online (a running row maximum `m` and sum
//! `l`, the accumulator rescaled when the maximum grows). Tiles wholly hidden by
//! the causal mask are skipped. The forward also returns each row's log-sum-exp
//! `L = m + ln l`, so the backward recomputes `P = exp(S - L)` tile by tile:
//! one pass accumulates `dQ`, `dK` and `dV` (the latter two summed over the query
//! heads that share a key/value head).
//!
//! Supported: a scale, causal masks aligned either way ([`Causal`]), a sliding
//! window on top of the causal mask (Mistral, arXiv 2310.06825: key tiles wholly
//! before every query's window are skipped too), an additive
//! mask broadcast to `[batch, heads, q, k]` (padding), grouped-query attention (any
//! number of query heads per key/value head), ALiBi slopes, and dropout on the
//! probabilities (the row sums take every probability, the values only the kept
//! ones; the mask is recomputed in the backward). A query that sees no key gets
//! zeros, as PyTorch's `scaled_dot_product_attention`. [`attention_packed`] takes
//! self-attention's fused projection whole.
//!
//! `q`, `k`, `v` are read with their strides (rows contiguous); the output is a
//! `[b, h, s, dv]` view of a `[b, s, h, dv]` buffer, the layout a model takes next.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D};
use rayon::prelude::*;

use crate::cpu::{self, Route, SyncPtr};
use crate::dropout::MaskDraw;
use crate::simd::{self, load_partial, store_partial, Simd};
use crate::tile_product::TileProduct;
use crate::transpose::Transpose;
use crate::{simd_dispatch, Causal};

/// Options of [`attention`]; the default is unmasked attention scaled by `1/√d`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionOptions<'a> {
    /// The factor on `q·kᵀ`; `1/√head_dim` when `None`.
    pub scale: Option<f64>,
    /// Hide keys after each query, aligned as given.
    pub causal: Option<Causal>,
    /// With `causal`: also hide keys `window` or more positions before each query,
    /// so a query sees itself and the `window - 1` keys before it (HF's
    /// `sliding_window`: key `j` is visible to query `i` when `j > i - window`).
    pub window: Option<usize>,
    /// An additive mask (0 keeps, -inf hides) broadcast to `[batch, heads, q, k]`:
    /// padding is `[batch, 1, 1, k]`. No gradient flows to it.
    pub mask: Option<&'a Tensor>,
    /// ALiBi (Press et al., arXiv 2108.12409) slopes, one per query head: the score
    /// of query `i`, key `j` gains `-slope · (i + k_len - q_len - j)`.
    pub alibi_slopes: Option<&'a [f32]>,
    /// Dropout on the probabilities (`scaled_dot_product_attention`'s `dropout_p`,
    /// while training).
    pub dropout: Option<AttentionDropout>,
}

/// Dropout on the attention probabilities: the mask is [`dropout`](crate::dropout)'s
/// for the `[batch, heads, q_len, k_len]` probabilities under `seed`, so the fused
/// kernel drops the elements that `dropout(softmax(scores), p, seed)` drops, without
/// the probabilities ever being materialised (the backward recomputes the mask).
#[derive(Clone, Copy, Debug)]
pub struct AttentionDropout {
    /// The drop probability, in `[0, 1)`.
    pub p: f64,
    /// Draws the mask; a new seed per call, as a new mask per step.
    pub seed: u64,
}

/// Scaled dot-product attention, `softmax(scale · q kᵀ + bias) v`, fused.
///
/// `q` is `[batch, heads, q_len, head_dim]`, `k` `[batch, kv_heads, k_len, head_dim]`,
/// `v` `[batch, kv_heads, k_len, v_dim]`, with `heads` a multiple of `kv_heads`
/// (GQA / MQA); the result is `[batch, heads, q_len, v_dim]`. Differentiable in
/// `q`, `k`, `v`. On the fused path the inputs may be strided views (a transposed
/// projection is not copied) and the result is a view of a `[batch, q_len, heads,
/// v_dim]` buffer: `.transpose(1, 2)` of it is contiguous.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, options: &AttentionOptions<'_>) -> Result<Tensor> {
    const OP: &str = "attention";
    let route = cpu::route(OP, q)?;
    cpu::same_kind(OP, q, &[("k", k), ("v", v)])?;
    let dims4 = |name: &str, t: &Tensor| {
        t.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "{OP}: {name} must be 4-d [batch, heads, seq, dim], got {:?}",
                t.dims()
            ))
        })
    };
    let (b, h, sq, d) = dims4("q", q)?;
    let (bk, hk, sk, dk) = dims4("k", k)?;
    let (bv, hv, skv, _) = dims4("v", v)?;
    if bk != b || bv != b || hv != hk || skv != sk || dk != d {
        bail!(
            "{OP}: shapes do not agree: q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    check_options(OP, options, [b, h, hk, sq, sk])?;
    match route {
        Route::Composition => crate::reference::attention(q, k, v, options),
        Route::Kernel => fused(q, k, v, options),
        Route::KernelViaF32 => {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            fused(&f(q)?, &f(k)?, &f(v)?, options)?.to_dtype(q.dtype())
        }
    }
}

/// The checks of `options` for `[b, h, sq, _]` queries and `[b, hk, sk, _]` keys.
fn check_options(op: &str, options: &AttentionOptions<'_>, [b, h, hk, sq, sk]: [usize; 5]) -> Result<()> {
    if hk == 0 || h % hk != 0 {
        bail!("{op}: {h} query heads are not a multiple of {hk} key/value heads")
    }
    match options.window {
        Some(0) => bail!("{op}: the sliding window must be at least 1 token, got 0"),
        Some(_) if options.causal.is_none() => bail!("{op}: a sliding window needs the causal mask"),
        _ => {}
    }
    if let Some(slopes) = options.alibi_slopes {
        if slopes.len() != h {
            bail!("{op}: {} ALiBi slopes for {h} heads", slopes.len())
        }
    }
    if let Some(AttentionDropout { p, .. }) = options.dropout {
        if !(0.0..1.0).contains(&p) {
            bail!("{op}: the dropout probability must be in [0, 1), got {p}")
        }
    }
    if let Some(mask) = options.mask {
        if !mask.dtype().is_float() || mask.broadcast_as((b, h, sq, sk)).is_err() {
            bail!(
                "{op}: the mask must be a float tensor broadcastable to [{b}, {h}, {sq}, {sk}], got {:?} {:?}",
                mask.dtype(),
                mask.dims()
            )
        }
    }
    Ok(())
}

fn fused(q: &Tensor, k: &Tensor, v: &Tensor, options: &AttentionOptions<'_>) -> Result<Tensor> {
    let (b, h, sq, d) = q.dims4()?;
    let op = AttentionOp::new(options, [b, h, sq, v.dim(2)?, d])?;
    // q, k, v are read with their strides (a `[b, s, h, d]` projection transposed to
    // heads needs no copy). The op's output is laid out `[b, sq, h, dv]`, so that the
    // usual next step, back to `[b, sq, h·dv]`, needs none either.
    let out = unit_last(q)?.apply_op3(&unit_last(k)?, &unit_last(v)?, op)?;
    out.transpose(1, 2)
}

/// Self-attention on a fused projection: `qkv` is `[batch, seq, (heads + 2 kv_heads)
/// · head_dim]`, each token's queries, keys and values side by side, head by head
/// (GPT-2's `c_attn`, timm's `qkv` before its reshape to `[.., 3, heads, head_dim]`,
/// Phi-3's `qkv_proj`); the result is `[batch, seq, heads · head_dim]`, the heads
/// merged. It computes what splitting `qkv`, moving the heads in front, [`attention`]
/// and merging the heads back computes, as one op: in training each of those
/// narrow, reshape and transpose ops would add a zero-filled gradient and a sum of
/// its size to the backward, which here writes `qkv`'s gradient directly.
pub fn attention_packed(qkv: &Tensor, heads: usize, kv_heads: usize, options: &AttentionOptions<'_>) -> Result<Tensor> {
    const OP: &str = "attention_packed";
    let route = cpu::route(OP, qkv)?;
    let (b, s, width) = qkv.dims3().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{OP}: qkv must be 3-d [batch, seq, (heads + 2 kv_heads) * head_dim], got {:?}",
            qkv.dims()
        ))
    })?;
    let parts = heads + 2 * kv_heads;
    if heads == 0 || kv_heads == 0 || width == 0 || width % parts != 0 {
        bail!("{OP}: qkv's last dimension {width} is not (heads {heads} + 2 × kv_heads {kv_heads}) × a head size")
    }
    check_options(OP, options, [b, heads, kv_heads, s, s])?;
    let d = width / parts;
    match route {
        Route::Composition => {
            let split = |first: usize, n: usize| {
                qkv.narrow(D::Minus1, first * d, n * d)?
                    .reshape((b, s, n, d))?
                    .transpose(1, 2)
            };
            let (q, k, v) = (
                split(0, heads)?,
                split(heads, kv_heads)?,
                split(heads + kv_heads, kv_heads)?,
            );
            crate::reference::attention(&q, &k, &v, options)?
                .transpose(1, 2)?
                .reshape((b, s, heads * d))
        }
        Route::Kernel => packed(qkv, heads, kv_heads, options),
        Route::KernelViaF32 => packed(&qkv.to_dtype(DType::F32)?, heads, kv_heads, options)?.to_dtype(qkv.dtype()),
    }
}

fn packed(qkv: &Tensor, heads: usize, kv_heads: usize, options: &AttentionOptions<'_>) -> Result<Tensor> {
    let (b, s, width) = qkv.dims3()?;
    let d = width / (heads + 2 * kv_heads);
    let op = AttentionOp::new(options, [b, heads, s, s, d])?;
    unit_last(qkv)?.apply_op1(PackedAttentionOp { op, heads, kv_heads })
}

/// `t` itself when its last dimension is contiguous, else a contiguous copy.
fn unit_last(t: &Tensor) -> Result<Tensor> {
    if t.dim(D::Minus1)? <= 1 || t.stride()[t.rank() - 1] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// Queries per tile.
const BR: usize = 64;
/// Keys per tile.
const BC: usize = 128;

/// `C (m×n) = beta · A (m×k) · B (k×n)` (+ C when `accumulate`): `C` and `B` have
/// the row strides given and unit column strides, `A` any strides (a transposed
/// tile is read in place).
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    accumulate: bool,
    beta: f32,
) {
    let product = TileProduct {
        m,
        n,
        k,
        a,
        a_rs,
        a_cs,
        b,
        b_rs,
        c,
        c_rs,
        beta,
        accumulate,
    };
    product.run();
}

/// `S = beta · A Kᵀ` with `K` as stored (rows of keys), through the gemm crate: for
/// the few query rows of decoding, where transposing `K` first costs more than
/// the product.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_by_rows_transposed(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: usize,
    a: *const f32,
    a_rs: usize,
    keys: *const f32,
    keys_rs: usize,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for r in 0..m {
            std::ptr::write_bytes(c.add(r * c_rs), 0, n);
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_rs as isize,
        false,
        a,
        1,
        a_rs as isize,
        keys,
        keys_rs as isize,
        1,
        1.0,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Query rows per key/value head from which each task transposes the keys it
/// reads (so every score tile is a [`TileProduct`]); below, decoding reads the
/// keys in place.
const TRANSPOSE_MIN_ROWS: usize = 16;

/// The row stride of `n` transposed keys or values: a whole number of vectors
/// plus one cache line, so that rows `n` floats apart (512 keys: 2 KiB) do not
/// all fall in the same few sets of the L1 cache while a tile product reads a
/// panel of them.
fn transposed_stride(n: usize) -> usize {
    n.next_multiple_of(16) + 16
}

/// A `[batch, heads, seq, width]` f32 tensor in CPU storage whose rows (the last
/// dimension) are contiguous, the other dimensions at any strides.
#[derive(Clone, Copy)]
struct Heads<'a> {
    data: &'a [f32],
    start: usize,
    /// Strides of batch, head and position.
    strides: [usize; 3],
}

impl<'a> Heads<'a> {
    /// The view of `storage` under `layout`, which must be 4-d with a contiguous
    /// last dimension.
    fn new(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<Self> {
        let CpuStorage::F32(data) = storage else {
            bail!("{op}: the kernel takes f32, got {:?}", storage.dtype())
        };
        let (dims, st) = (layout.dims(), layout.stride());
        if dims.len() != 4 || (dims[3] > 1 && st[3] != 1) {
            bail!("{op}: the kernel needs 4-d rows of unit stride, got dims {dims:?}, strides {st:?}")
        }
        Ok(Self {
            data,
            start: layout.start_offset(),
            strides: [st[0], st[1], st[2]],
        })
    }

    /// Where row `i` of head `h` of batch `b` starts.
    fn row(&self, b: usize, h: usize, i: usize) -> *const f32 {
        let offset = self.start + b * self.strides[0] + h * self.strides[1] + i * self.strides[2];
        self.data.as_ptr().wrapping_add(offset)
    }

    /// The distance between consecutive positions.
    fn row_stride(&self) -> usize {
        self.strides[2]
    }
}

/// One key/value head's keys transposed, `[d, n]` with rows `stride` apart,
/// column 0 holding key `first`.
#[derive(Clone, Copy)]
struct KeysT<'a> {
    data: &'a [f32],
    first: usize,
    stride: usize,
}

/// The attention problem in f32 slices, with the index arithmetic.
struct Problem<'a> {
    q: Heads<'a>,
    k: Heads<'a>,
    v: Heads<'a>,
    b: usize,
    h: usize,
    hk: usize,
    sq: usize,
    sk: usize,
    d: usize,
    dv: usize,
    scale: f32,
    causal_offset: Option<isize>,
    window: Option<usize>,
    /// The mask's elements and its strides over (batch, head, query), plus its start.
    mask: Option<(&'a [f32], [usize; 3], usize)>,
    alibi: Option<&'a [f32]>,
    dropout: Option<MaskDraw>,
}

impl Problem<'_> {
    fn group(&self) -> usize {
        self.h / self.hk
    }

    /// Row `(b, h, i)` in the `[b, h, sq]` order of the log-sum-exp.
    fn lse_row(&self, b: usize, h: usize, i: usize) -> usize {
        (b * self.h + h) * self.sq + i
    }

    /// Where query `i` of head `h` starts in the probabilities `[b, h, sq, sk]`: the
    /// element indices the dropout mask is drawn over.
    fn prob_row(&self, b: usize, h: usize, i: usize) -> usize {
        self.lse_row(b, h, i) * self.sk
    }

    /// Multiplies `x` (`rows × cols`, row stride `BC`) by dropout's scaled mask of
    /// the probabilities of queries `i0..` of head `h` and keys `j0..`. Only the keys
    /// each query sees: elsewhere `P = 0` whatever the mask, and the backward's
    /// `dS = P ⊙ (Z ⊙ dP - D)` is `0 · (…)` either way.
    #[allow(clippy::too_many_arguments)]
    fn drop(&self, mask: &MaskDraw, b: usize, h: usize, i0: usize, rows: usize, j0: usize, cols: usize, x: &mut [f32]) {
        for r in 0..rows {
            let i = i0 + r;
            let start = self.first_visible(i).clamp(j0, j0 + cols);
            let end = self.visible(i).clamp(start, j0 + cols);
            let row = &mut x[r * BC..r * BC + cols];
            mask.apply(&mut row[start - j0..end - j0], self.prob_row(b, h, i) + start);
        }
    }

    /// Where query `i` of head `h` starts in an output laid out `[b, sq, h, width]`.
    fn out_row(&self, b: usize, h: usize, i: usize, width: usize) -> usize {
        ((b * self.sq + i) * self.h + h) * width
    }

    /// Keys `0..visible(i)` are visible to query `i`.
    fn visible(&self, i: usize) -> usize {
        match self.causal_offset {
            None => self.sk,
            Some(off) => (i as isize + off + 1).clamp(0, self.sk as isize) as usize,
        }
    }

    /// Keys before `first_visible(i)` fall outside query `i`'s sliding window.
    fn first_visible(&self, i: usize) -> usize {
        match (self.causal_offset, self.window) {
            (Some(off), Some(window)) => (i as isize + off + 1 - window as isize).clamp(0, self.sk as isize) as usize,
            _ => 0,
        }
    }

    /// `S = scale · Q Kᵀ` for queries `i0..i0+rows` of head `h` and keys `j0..j0+cols`,
    /// plus ALiBi, the mask and the causal -inf: `s` holds `rows × cols`, row stride `BC`.
    /// `kt` holds this head's keys transposed, when the caller made them.
    #[allow(clippy::too_many_arguments)]
    fn scores(
        &self,
        kt: Option<KeysT<'_>>,
        b: usize,
        h: usize,
        i0: usize,
        rows: usize,
        j0: usize,
        cols: usize,
        s: &mut [f32],
    ) {
        let kh = h / self.group();
        let (q, q_rs) = (self.q.row(b, h, i0), self.q.row_stride());
        unsafe {
            match kt {
                Some(kt) => {
                    let keys = kt.data.as_ptr().wrapping_add(j0 - kt.first);
                    matmul(
                        rows,
                        cols,
                        self.d,
                        s.as_mut_ptr(),
                        BC,
                        q,
                        q_rs,
                        1,
                        keys,
                        kt.stride,
                        false,
                        self.scale,
                    )
                }
                None => {
                    let keys = self.k.row(b, kh, j0);
                    matmul_by_rows_transposed(
                        rows,
                        cols,
                        self.d,
                        s.as_mut_ptr(),
                        BC,
                        q,
                        q_rs,
                        keys,
                        self.k.row_stride(),
                        self.scale,
                    )
                }
            }
        }
        for r in 0..rows {
            let i = i0 + r;
            let row = &mut s[r * BC..r * BC + cols];
            if let Some(slopes) = self.alibi {
                let slope = slopes[h];
                let qpos = i as f32 + self.sk as f32 - self.sq as f32;
                for (c, x) in row.iter_mut().enumerate() {
                    *x += slope * ((j0 + c) as f32 - qpos);
                }
            }
            if let Some((mask, strides, start)) = self.mask {
                let off = start + b * strides[0] + h * strides[1] + i * strides[2] + j0;
                for (x, m) in row.iter_mut().zip(&mask[off..off + cols]) {
                    *x += m;
                }
            }
            let vis = self.visible(i);
            if vis < j0 + cols {
                row[vis.saturating_sub(j0)..].fill(f32::NEG_INFINITY);
            }
            let first = self.first_visible(i);
            if first > j0 {
                row[..(first - j0).min(cols)].fill(f32::NEG_INFINITY);
            }
        }
    }

    /// Keys `start..end` hold every key visible to some query in `i0..i1`.
    fn key_range(&self, i0: usize, i1: usize) -> (usize, usize) {
        (self.first_visible(i0), self.visible(i1 - 1))
    }
}

/// The online-softmax step for one tile: `P = exp(S - m_new)` in place, the
/// running max and sum updated, the output rows rescaled by `exp(m_old - m_new)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn online_softmax<S: Simd>(
    s: &mut [f32],
    rows: usize,
    cols: usize,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    dv: usize,
) {
    let body = cols - cols % S::LANES;
    for r in 0..rows {
        let row = &mut s[r * BC..r * BC + cols];
        let p = row.as_mut_ptr();
        unsafe {
            let mut mx = S::splat(f32::NEG_INFINITY);
            let mut j = 0;
            while j < body {
                mx = S::max(mx, S::load(p.add(j)));
                j += S::LANES;
            }
            if j < cols {
                mx = S::max(mx, load_partial::<S>(p.add(j), cols - j, f32::NEG_INFINITY));
            }
            let m_new = S::reduce_max(mx).max(m[r]);
            if m_new == f32::NEG_INFINITY {
                // Nothing visible yet: P = 0, nothing to rescale.
                row.fill(0.0);
                continue;
            }
            let mv = S::splat(-m_new);
            let mut acc = S::splat(0.0);
            let mut j = 0;
            while j < body {
                let e = simd::exp::<S>(S::add(S::load(p.add(j)), mv));
                S::store(p.add(j), e);
                acc = S::add(acc, e);
                j += S::LANES;
            }
            if j < cols {
                let e = simd::exp::<S>(S::add(load_partial::<S>(p.add(j), cols - j, f32::NEG_INFINITY), mv));
                store_partial::<S>(p.add(j), cols - j, e);
                acc = S::add(acc, e);
            }
            let alpha = if m[r] == f32::NEG_INFINITY {
                0.0
            } else {
                (m[r] - m_new).exp()
            };
            l[r] = l[r] * alpha + S::reduce_sum(acc);
            m[r] = m_new;
            if alpha != 1.0 {
                o[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= alpha);
            }
        }
    }
}

simd_dispatch!(fn online_softmax_dispatch(s: &mut [f32], rows: usize, cols: usize, m: &mut [f32], l: &mut [f32], o: &mut [f32], dv: usize) => online_softmax);

/// `P = exp(S - L)` in place (0 where `L = -inf`: a row that sees nothing).
#[inline(always)]
fn probabilities<S: Simd>(s: &mut [f32], rows: usize, cols: usize, lse: &[f32]) {
    let body = cols - cols % S::LANES;
    for r in 0..rows {
        let row = &mut s[r * BC..r * BC + cols];
        if lse[r] == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        let p = row.as_mut_ptr();
        let lv = S::splat(-lse[r]);
        unsafe {
            let mut j = 0;
            while j < body {
                S::store(p.add(j), simd::exp::<S>(S::add(S::load(p.add(j)), lv)));
                j += S::LANES;
            }
            if j < cols {
                let e = simd::exp::<S>(S::add(load_partial::<S>(p.add(j), cols - j, f32::NEG_INFINITY), lv));
                store_partial::<S>(p.add(j), cols - j, e);
            }
        }
    }
}

simd_dispatch!(fn probabilities_dispatch(s: &mut [f32], rows: usize, cols: usize, lse: &[f32]) => probabilities);

/// `dS = P ⊙ (dP - D)` in place in `dp`.
#[inline(always)]
fn score_grad<S: Simd>(p: &[f32], dp: &mut [f32], rows: usize, cols: usize, dsum: &[f32]) {
    let body = cols - cols % S::LANES;
    for r in 0..rows {
        let (pp, dpp) = (p[r * BC..].as_ptr(), dp[r * BC..].as_mut_ptr());
        let dv = S::splat(dsum[r]);
        unsafe {
            let mut j = 0;
            while j < body {
                S::store(dpp.add(j), S::mul(S::load(pp.add(j)), S::sub(S::load(dpp.add(j)), dv)));
                j += S::LANES;
            }
            if j < cols {
                let n = cols - j;
                let v = S::mul(
                    load_partial::<S>(pp.add(j), n, 0.0),
                    S::sub(load_partial::<S>(dpp.add(j), n, 0.0), dv),
                );
                store_partial::<S>(dpp.add(j), n, v);
            }
        }
    }
}

simd_dispatch!(fn score_grad_dispatch(p: &[f32], dp: &mut [f32], rows: usize, cols: usize, dsum: &[f32]) => score_grad);

/// Runs `f(task)` for `tasks` tasks of about `task_work` flops each, in parallel
/// when there is enough work.
fn run_tasks(tasks: usize, task_work: usize, f: impl Fn(usize) + Sync + Send) {
    if cpu::tasks_for(tasks, task_work / 4) == 1 {
        (0..tasks).for_each(f);
    } else {
        (0..tasks).into_par_iter().for_each(f);
    }
}

/// The forward: the output laid out `[b, sq, h, dv]`, and each row's log-sum-exp
/// (`[b, h, sq]`), which the backward needs.
///
/// A task takes one key/value head and a run of query tiles, for every query head
/// of its group. It first transposes the keys those tiles see into the thread's
/// scratch, where they stay in cache while the tiles use them (transposing every
/// head up front wrote and re-read them through memory: 10-13% of BERT-base's
/// attention). With few query rows (decoding) the keys are read in place instead.
fn forward(p: &Problem<'_>) -> (Vec<f32>, Vec<f32>) {
    let (sq, dv, group) = (p.sq, p.dv, p.group());
    let mut out = cpu::output_buffer(p.b * p.h * sq * dv);
    let mut lse = cpu::output_buffer(p.b * p.h * sq);
    let (q_tiles, kv_heads) = (sq.div_ceil(BR), p.b * p.hk);
    if q_tiles == 0 || kv_heads == 0 {
        return (out, lse);
    }
    // Decided for the whole problem, not per task: the two ways of computing the
    // scores differ in their last bits, and the tasks depend on the thread count.
    let transpose = sq * group >= TRANSPOSE_MIN_ROWS;
    // Whole heads per task where there are enough to keep the threads busy.
    let runs = (4 * rayon::current_num_threads()).div_ceil(kv_heads).min(q_tiles);
    let per_run = q_tiles.div_ceil(runs);
    let runs = q_tiles.div_ceil(per_run);
    let (out_ptr, lse_ptr) = (SyncPtr(out.as_mut_ptr()), SyncPtr(lse.as_mut_ptr()));
    run_tasks(kv_heads * runs, group * per_run * BR * p.sk * (p.d + dv), |task| {
        let (bkh, run) = (task / runs, task % runs);
        let (b, kh) = (bkh / p.hk, bkh % p.hk);
        let tiles = run * per_run..((run + 1) * per_run).min(q_tiles);
        let (i0, i1) = (tiles.start * BR, (tiles.end * BR).min(sq));
        let (first, end) = p.key_range(i0, i1);
        let keys = end.saturating_sub(first);
        let stride = transposed_stride(keys);
        cpu::with_scratch(if transpose { stride * p.d } else { 0 }, |kt| {
            let kt = transpose.then(|| {
                let head = Transpose {
                    src: p.k.row(b, kh, first),
                    src_rs: p.k.row_stride(),
                    rows: keys,
                    cols: p.d,
                    dst: kt.as_mut_ptr(),
                    dst_rs: stride,
                };
                // SAFETY: keys first..end of head (b, kh) are rows of the layout; kt
                // holds d rows of stride >= keys floats.
                unsafe { head.run() };
                KeysT {
                    data: kt,
                    first,
                    stride,
                }
            });
            let mut tile = ForwardTile::new(dv);
            for h in kh * group..(kh + 1) * group {
                for qt in tiles.clone() {
                    tile.run(p, kt, b, h, qt * BR);
                    // SAFETY: the tile's query rows of (b, h) belong to this task alone.
                    unsafe { tile.write(p, b, h, qt * BR, out_ptr, lse_ptr) };
                }
            }
        });
    });
    (out, lse)
}

/// One query tile's running state in the forward: the scores, the unnormalised
/// output, each row's running maximum and sum.
struct ForwardTile {
    s: Vec<f32>,
    o: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    rows: usize,
}

impl ForwardTile {
    fn new(dv: usize) -> Self {
        Self {
            s: vec![0f32; BR * BC],
            o: vec![0f32; BR * dv],
            m: vec![0f32; BR],
            l: vec![0f32; BR],
            rows: 0,
        }
    }

    /// Runs queries `i0..` (up to [`BR`]) of head `h` over every key they see.
    fn run(&mut self, p: &Problem<'_>, kt: Option<KeysT<'_>>, b: usize, h: usize, i0: usize) {
        let (dv, kh) = (p.dv, h / p.group());
        let rows = BR.min(p.sq - i0);
        self.rows = rows;
        let (o, m, l) = (&mut self.o[..rows * dv], &mut self.m[..rows], &mut self.l[..rows]);
        o.fill(0.0);
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        let (mut j0, end) = p.key_range(i0, i0 + rows);
        while j0 < end {
            let cols = BC.min(end - j0);
            p.scores(kt, b, h, i0, rows, j0, cols, &mut self.s);
            // The row sums take every probability; the values see the kept ones.
            online_softmax_dispatch(&mut self.s, rows, cols, m, l, o, dv);
            if let Some(mask) = &p.dropout {
                p.drop(mask, b, h, i0, rows, j0, cols, &mut self.s);
            }
            unsafe {
                let (values, v_rs) = (p.v.row(b, kh, j0), p.v.row_stride());
                matmul(
                    rows,
                    dv,
                    cols,
                    o.as_mut_ptr(),
                    dv,
                    self.s.as_ptr(),
                    BC,
                    1,
                    values,
                    v_rs,
                    true,
                    1.0,
                );
            }
            j0 += cols;
        }
    }

    /// Writes the normalised output rows and their log-sum-exp.
    ///
    /// # Safety
    /// Rows `i0..i0 + rows` of head `(b, h)` in `out` and `lse` must be the caller's alone.
    unsafe fn write(&self, p: &Problem<'_>, b: usize, h: usize, i0: usize, out: SyncPtr, lse: SyncPtr) {
        let dv = p.dv;
        for r in 0..self.rows {
            let dst = std::slice::from_raw_parts_mut(out.get().add(p.out_row(b, h, i0 + r, dv)), dv);
            let lse = &mut *lse.get().add(p.lse_row(b, h, i0 + r));
            if self.l[r] > 0.0 {
                let inv = 1.0 / self.l[r];
                dst.iter_mut()
                    .zip(&self.o[r * dv..(r + 1) * dv])
                    .for_each(|(d, x)| *d = x * inv);
                *lse = self.m[r] + self.l[r].ln();
            } else {
                dst.fill(0.0);
                *lse = f32::NEG_INFINITY;
            }
        }
    }
}

/// How the backward lays out `dq`, `dk` and `dv`.
#[derive(Clone, Copy)]
enum GradLayout {
    /// `[b, heads, s, width]`, contiguous: what candle adds each gradient into (a
    /// zero-filled tensor of the input's shape), a contiguous add.
    HeadsMajor,
    /// `[b, s, heads, width]`: each token's heads side by side, as the packed
    /// projection lays them out.
    TokenMajor,
}

impl GradLayout {
    /// Where row `i` of head `head` (of `heads`, `s` rows of `width` each) starts.
    fn row(self, [b, head, i]: [usize; 3], heads: usize, s: usize, width: usize) -> usize {
        match self {
            GradLayout::HeadsMajor => ((b * heads + head) * s + i) * width,
            GradLayout::TokenMajor => ((b * s + i) * heads + head) * width,
        }
    }
}

/// Tasks the backward aims for, a number fixed by the shape alone (not the
/// thread count), since it decides the order in which `dK` and `dV` are summed.
const BACKWARD_TASKS: usize = 16;

/// The backward: `(dq, dk, dv)`, laid out as `layout` says, from the forward's
/// output `out`, its gradient `g` (both `[b, sq, h, dv]`) and log-sum-exp `lse`.
///
/// One pass, as FlashAttention-2's: a task takes a key/value head and a run of
/// query tiles (whole heads when there are [`BACKWARD_TASKS`] of them), transposes
/// the keys and values those tiles see into its scratch, and for each query tile
/// of each query head of the group and each key tile it sees recomputes `S` and
/// `P = exp(S - L)`, then `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP - D)`,
/// `dQ += scale · dS K` and `dK += scale · dSᵀ Q`: five products per pair of tiles.
/// `D = rowsum(dO ⊙ O)` is summed per query tile, by the task that owns the tile.
/// With dropout's scaled mask `Z` the output is `(Z ⊙ P) V`: `dV += (Z ⊙ P)ᵀ dO` and
/// `dS = P ⊙ (Z ⊙ dP - D)` (`D = rowsum(dO ⊙ O)` still, O being the dropped output).
/// With several runs per head, each run's `dK` and `dV` are summed in run order.
fn backward(
    p: &Problem<'_>,
    out: &[f32],
    g: &[f32],
    lse: &[f32],
    layout: GradLayout,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (sq, sk, d, dv, group) = (p.sq, p.sk, p.d, p.dv, p.group());

    let mut dq = cpu::output_buffer(p.b * p.h * sq * d);
    let mut dk = cpu::output_buffer(p.b * p.hk * sk * d);
    let mut dvv = cpu::output_buffer(p.b * p.hk * sk * dv);
    let (q_tiles, kv_heads) = (sq.div_ceil(BR), p.b * p.hk);
    let runs = BACKWARD_TASKS.div_ceil(kv_heads.max(1)).clamp(1, q_tiles.max(1));
    let per_run = q_tiles.div_ceil(runs).max(1);
    let runs = q_tiles.div_ceil(per_run).max(1);
    // Each run's dK and dV, laid out as the outputs; with one run, the outputs.
    let (k_len, v_len) = (dk.len(), dvv.len());
    let mut partial = if runs > 1 {
        cpu::output_buffer(runs * (k_len + v_len))
    } else {
        Vec::new()
    };
    let dq_ptr = SyncPtr(dq.as_mut_ptr());
    let (dk_ptr, dv_ptr) = if runs > 1 {
        let base = partial.as_mut_ptr();
        (SyncPtr(base), SyncPtr(base.wrapping_add(runs * k_len)))
    } else {
        (SyncPtr(dk.as_mut_ptr()), SyncPtr(dvv.as_mut_ptr()))
    };
    // dO rows of one head are h · dv apart.
    let go_rs = p.h * dv;
    run_tasks(kv_heads * runs, group * per_run * BR * sk * (3 * d + 2 * dv), |task| {
        let (bkh, run) = (task / runs, task % runs);
        let (b, kh) = (bkh / p.hk, bkh % p.hk);
        let tiles = run * per_run..((run + 1) * per_run).min(q_tiles);
        let (i0, i1) = (tiles.start * BR, (tiles.end * BR).min(sq));
        let (first, end) = if i1 > i0 { p.key_range(i0, i1) } else { (0, 0) };
        let keys = end.saturating_sub(first);
        let stride = transposed_stride(keys);
        cpu::with_scratch((stride + keys) * (d + dv), |scratch| {
            let (kt, rest) = scratch.split_at_mut(stride * d);
            let (vt, rest) = rest.split_at_mut(stride * dv);
            let (dk_acc, dv_acc) = rest.split_at_mut(keys * d);
            for (x, t, width) in [(p.k, &mut *kt, d), (p.v, &mut *vt, dv)] {
                let head = Transpose {
                    src: x.row(b, kh, first),
                    src_rs: x.row_stride(),
                    rows: keys,
                    cols: width,
                    dst: t.as_mut_ptr(),
                    dst_rs: stride,
                };
                // SAFETY: keys first..end of head (b, kh) are rows of the layout; t
                // holds width rows of stride >= keys floats.
                unsafe { head.run() };
            }
            dk_acc.fill(0.0);
            dv_acc.fill(0.0);
            let keys_t = KeysT {
                data: kt,
                first,
                stride,
            };
            let mut s = vec![0f32; BR * BC];
            let mut dp = vec![0f32; BR * BC];
            // Z ⊙ P, with dropout.
            let mut kept = if p.dropout.is_some() {
                vec![0f32; BR * BC]
            } else {
                Vec::new()
            };
            let mut dq_acc = vec![0f32; BR * d];
            let mut dsum = [0f32; BR];
            for h in kh * group..(kh + 1) * group {
                for qt in tiles.clone() {
                    let i0 = qt * BR;
                    let rows = BR.min(sq - i0);
                    let r0 = p.lse_row(b, h, i0);
                    let go = g.as_ptr().wrapping_add(p.out_row(b, h, i0, dv));
                    // D_i = Σ dO_i ⊙ O_i
                    for (r, sum) in dsum[..rows].iter_mut().enumerate() {
                        let at = p.out_row(b, h, i0 + r, dv);
                        *sum = out[at..at + dv].iter().zip(&g[at..at + dv]).map(|(o, go)| o * go).sum();
                    }
                    let (qi, q_rs) = (p.q.row(b, h, i0), p.q.row_stride());
                    dq_acc.fill(0.0);
                    let (mut j0, tile_end) = p.key_range(i0, i0 + rows);
                    while j0 < tile_end {
                        let cols = BC.min(tile_end - j0);
                        let c0 = j0 - first;
                        p.scores(Some(keys_t), b, h, i0, rows, j0, cols, &mut s);
                        probabilities_dispatch(&mut s, rows, cols, &lse[r0..r0 + rows]);
                        let values_see = match &p.dropout {
                            Some(mask) => {
                                kept[..rows * BC].copy_from_slice(&s[..rows * BC]);
                                p.drop(mask, b, h, i0, rows, j0, cols, &mut kept);
                                &kept
                            }
                            None => &s,
                        };
                        // SAFETY: the accumulators hold keys c0..c0 + cols of this
                        // task's range; dO, Q and K rows are read within their layouts.
                        unsafe {
                            // dV += (Z ⊙ P)ᵀ dO
                            let dv_c = dv_acc.as_mut_ptr().add(c0 * dv);
                            matmul(
                                cols,
                                dv,
                                rows,
                                dv_c,
                                dv,
                                values_see.as_ptr(),
                                1,
                                BC,
                                go,
                                go_rs,
                                true,
                                1.0,
                            );
                            // dP = dO Vᵀ
                            let vt_c = vt.as_ptr().add(c0);
                            matmul(
                                rows,
                                cols,
                                dv,
                                dp.as_mut_ptr(),
                                BC,
                                go,
                                go_rs,
                                1,
                                vt_c,
                                stride,
                                false,
                                1.0,
                            );
                        }
                        if let Some(mask) = &p.dropout {
                            p.drop(mask, b, h, i0, rows, j0, cols, &mut dp);
                        }
                        score_grad_dispatch(&s, &mut dp, rows, cols, &dsum[..rows]);
                        unsafe {
                            // dQ += scale · dS K
                            let (kj, k_rs) = (p.k.row(b, kh, j0), p.k.row_stride());
                            let dq_c = dq_acc.as_mut_ptr();
                            matmul(rows, d, cols, dq_c, d, dp.as_ptr(), BC, 1, kj, k_rs, true, p.scale);
                            // dK += scale · dSᵀ Q
                            let dk_c = dk_acc.as_mut_ptr().add(c0 * d);
                            matmul(cols, d, rows, dk_c, d, dp.as_ptr(), 1, BC, qi, q_rs, true, p.scale);
                        }
                        j0 += cols;
                    }
                    for r in 0..rows {
                        // SAFETY: query rows i0..i0+rows of (b, h) belong to this task alone.
                        unsafe {
                            let at = layout.row([b, h, i0 + r], p.h, sq, d);
                            std::ptr::copy_nonoverlapping(dq_acc.as_ptr().add(r * d), dq_ptr.get().add(at), d);
                        }
                    }
                }
            }
            // Every key row of the head: the accumulated ones, zeros outside the range.
            for j in 0..sk {
                // SAFETY: key rows of (b, kh) in this run's dK and dV belong to this
                // task alone.
                unsafe {
                    let dk_row = dk_ptr.get().add(run * k_len + layout.row([b, kh, j], p.hk, sk, d));
                    let dv_row = dv_ptr.get().add(run * v_len + layout.row([b, kh, j], p.hk, sk, dv));
                    if (first..end).contains(&j) {
                        std::ptr::copy_nonoverlapping(dk_acc.as_ptr().add((j - first) * d), dk_row, d);
                        std::ptr::copy_nonoverlapping(dv_acc.as_ptr().add((j - first) * dv), dv_row, dv);
                    } else {
                        std::ptr::write_bytes(dk_row, 0, d);
                        std::ptr::write_bytes(dv_row, 0, dv);
                    }
                }
            }
        });
    });
    if runs > 1 {
        let (partial_k, partial_v) = partial.split_at(runs * k_len);
        for (total, parts, len) in [(&mut dk, partial_k, k_len), (&mut dvv, partial_v, v_len)] {
            cpu::for_row_chunks(total, 1, runs, |at, chunk| {
                chunk.copy_from_slice(&parts[at..at + chunk.len()]);
                for run in 1..runs {
                    let part = &parts[run * len + at..][..chunk.len()];
                    chunk.iter_mut().zip(part).for_each(|(x, p)| *x += p);
                }
            });
        }
    }
    (dq, dk, dvv)
}

struct AttentionOp {
    scale: f32,
    causal: Option<Causal>,
    window: Option<usize>,
    /// Broadcast to `[b, h, sq, sk]`, f32, last stride 1.
    mask: Option<Tensor>,
    alibi: Option<Vec<f32>>,
    dropout: Option<MaskDraw>,
    /// The forward's log-sum-exp per query row, kept for the backward (each call
    /// of [`attention`] makes its own op, applied once).
    lse: OnceLock<Vec<f32>>,
}

impl AttentionOp {
    /// The op for `[b, h, sq, d]` queries and `sk` keys (`options` checked).
    fn new(options: &AttentionOptions<'_>, [b, h, sq, sk, d]: [usize; 5]) -> Result<Self> {
        let mask = match options.mask {
            Some(m) => {
                let mut m = m.to_dtype(DType::F32)?.broadcast_as((b, h, sq, sk))?;
                if m.stride()[3] != 1 {
                    m = m.contiguous()?;
                }
                Some(m)
            }
            None => None,
        };
        Ok(AttentionOp {
            scale: options.scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32,
            causal: options.causal,
            window: options.window,
            mask,
            alibi: options.alibi_slopes.map(<[f32]>::to_vec),
            dropout: options
                .dropout
                .map(|AttentionDropout { p, seed }| MaskDraw::new(p, seed)),
            lse: OnceLock::new(),
        })
    }

    /// The forward on the views of q, k, v: the output laid out `[b, sq, h, dv]`,
    /// the log-sum-exp kept for the backward.
    fn forward_views(&self, views: [(&CpuStorage, &Layout); 3]) -> Result<Vec<f32>> {
        let (out, lse) = self.with_problem(views, forward)?;
        if self.lse.set(lse).is_err() {
            bail!("attention: an op was applied twice")
        }
        Ok(out)
    }

    /// The backward on the views of q, k, v, from the output `res` and its gradient
    /// `g`: `(dq, dk, dv)`, each laid out as `layout` says.
    fn backward_views(
        &self,
        views: [(&CpuStorage, &Layout); 3],
        res: &Tensor,
        g: &Tensor,
        layout: GradLayout,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        const OP: &str = "attention backward";
        let Some(lse) = self.lse.get() else {
            bail!("{OP}: the forward's log-sum-exp is missing")
        };
        cpu::with_f32(OP, res, |out| {
            cpu::with_f32(OP, g, |gs| {
                self.with_problem(views, |p| backward(p, out, gs, lse, layout))
            })
        })
    }

    /// Runs `f` on the problem made of the views of q, k, v.
    fn with_problem<R>(
        &self,
        [(q, lq), (k, lk), (v, lv)]: [(&CpuStorage, &Layout); 3],
        f: impl FnOnce(&Problem<'_>) -> R,
    ) -> Result<R> {
        const OP: &str = "attention";
        let (b, h, sq, d) = lq.shape().dims4()?;
        let (_, hk, sk, _) = lk.shape().dims4()?;
        let dv = lv.shape().dims4()?.3;
        let causal_offset = self.causal.map(|c| c.offset(sq, sk));
        let mut problem = Problem {
            q: Heads::new(OP, q, lq)?,
            k: Heads::new(OP, k, lk)?,
            v: Heads::new(OP, v, lv)?,
            b,
            h,
            hk,
            sq,
            sk,
            d,
            dv,
            scale: self.scale,
            causal_offset,
            window: self.window,
            mask: None,
            alibi: self.alibi.as_deref(),
            dropout: self.dropout,
        };
        match &self.mask {
            None => Ok(f(&problem)),
            Some(mask) => {
                let (storage, layout) = mask.storage_and_layout();
                let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                    bail!("attention: the mask must be an f32 CPU tensor")
                };
                let st = layout.stride();
                problem.mask = Some((data.as_slice(), [st[0], st[1], st[2]], layout.start_offset()));
                Ok(f(&problem))
            }
        }
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "replica-flash-attention"
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
        let (b, h, sq, _) = l1.shape().dims4()?;
        let dv = l3.shape().dims4()?.3;
        let out = self.forward_views([(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, sq, h, dv])))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let views = [q, k, v].map(|t| t.storage_and_layout());
        let storages = views.each_ref().map(|(storage, layout)| match &**storage {
            Storage::Cpu(cpu) => Ok((cpu, *layout)),
            _ => bail!("attention backward: the kernel runs on the CPU"),
        });
        let [sq, sk, sv] = storages;
        let (dq, dk, dvv) = self.backward_views([sq?, sk?, sv?], res, g, GradLayout::HeadsMajor)?;
        let grad = |data: Vec<f32>, t: &Tensor| cpu::from_vec(data, t.shape());
        Ok((Some(grad(dq, q)?), Some(grad(dk, k)?), Some(grad(dvv, v)?)))
    }
}

/// [`AttentionOp`] on a packed `[b, s, (h + 2 hk) · d]` projection ([`attention_packed`]).
struct PackedAttentionOp {
    op: AttentionOp,
    heads: usize,
    kv_heads: usize,
}

impl PackedAttentionOp {
    /// The `[b, heads, s, d]` views of the queries, keys and values in a packed
    /// layout (last stride 1).
    fn views(&self, layout: &Layout) -> Result<[Layout; 3]> {
        let (b, s, width) = layout.shape().dims3()?;
        let (h, hk) = (self.heads, self.kv_heads);
        let d = width / (h + 2 * hk);
        let st = layout.stride();
        let view = |first: usize, n: usize| {
            Layout::new(
                Shape::from_dims(&[b, n, s, d]),
                vec![st[0], d, st[1], 1],
                layout.start_offset() + first * d,
            )
        };
        Ok([view(0, h), view(h, hk), view(h + hk, hk)])
    }
}

impl CustomOp1 for PackedAttentionOp {
    fn name(&self) -> &'static str {
        "replica-flash-attention-packed"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, s, _) = layout.shape().dims3()?;
        let [lq, lk, lv] = self.views(layout)?;
        let d = lq.dims()[3];
        let out = self
            .op
            .forward_views([(storage, &lq), (storage, &lk), (storage, &lv)])?;
        // [b, s, h, d] is [b, s, h·d]: the heads merged.
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, s, self.heads * d])))
    }

    fn bwd(&self, qkv: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (storage, layout) = qkv.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else {
            bail!("attention_packed backward: the kernel runs on the CPU")
        };
        let [lq, lk, lv] = self.views(layout)?;
        let (dq, dk, dv) = self.op.backward_views(
            [(storage, &lq), (storage, &lk), (storage, &lv)],
            res,
            g,
            GradLayout::TokenMajor,
        )?;
        // Each token's dq, dk, dv rows (laid out [b, s, heads, d]) side by side again.
        let (b, s, width) = qkv.dims3()?;
        let d = lq.dims()[3];
        let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
        let mut grad = cpu::output_buffer(b * s * width);
        for (t, row) in grad.chunks_exact_mut(width.max(1)).enumerate() {
            let (q, rest) = row.split_at_mut(q_width);
            let (k, v) = rest.split_at_mut(kv_width);
            q.copy_from_slice(&dq[t * q_width..][..q_width]);
            k.copy_from_slice(&dk[t * kv_width..][..kv_width]);
            v.copy_from_slice(&dv[t * kv_width..][..kv_width]);
        }
        Ok(Some(cpu::from_vec(grad, &Shape::from_dims(&[b, s, width]))?))
    }
}
