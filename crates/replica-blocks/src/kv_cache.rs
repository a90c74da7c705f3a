//! A key/value cache for incremental (autoregressive) decoding: each step appends
//! the new tokens' keys and values and attends over everything cached so far, so
//! a token's keys are computed once. With grouped- or multi-query attention the
//! cache holds the few key/value heads, not the repeated ones, which is what makes
//! those variants cheap to decode (Shazeer, arXiv 1911.02150).
//!
//! Keys are cached *after* the rotary embedding, as HF's `DynamicCache` holds them.
//! Appending uses `Tensor::cat`, so gradients flow through cached entries too.
//!
//! A layer with a sliding window (Mistral, arXiv 2310.06825) never looks further
//! back than its window, so its cache can roll ([`KvCache::with_window`]): as HF's
//! `DynamicSlidingWindowLayer`, it keeps the last `window - 1` tokens, and each
//! step attends over them and the new ones.

use candle_core::{Result, Tensor};

/// Cached keys and values of one attention layer, `[batch, kv_heads, len, head_dim]`.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
    max_len: Option<usize>,
    window: Option<usize>,
    /// Tokens appended since the last reset (more than are kept, once a window rolls).
    seen: usize,
}

impl KvCache {
    /// An empty cache that grows without bound.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache that refuses to grow past `max_len` tokens.
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            max_len: Some(max_len),
            ..Self::default()
        }
    }

    /// An empty cache for a layer whose queries see only the `window - 1` tokens
    /// before them: it keeps only those (a `window` of 0 keeps nothing either).
    pub fn with_window(window: usize) -> Self {
        Self {
            window: Some(window),
            ..Self::default()
        }
    }

    /// The sliding window the cache rolls with, if any.
    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// How many tokens were appended since the last reset: the position of the
    /// next token (a rolling cache keeps fewer, [`Self::kept`]).
    pub fn len(&self) -> usize {
        self.seen
    }

    /// How many tokens the cache holds.
    pub fn kept(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Whether no token was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached keys, `[batch, kv_heads, len, head_dim]`.
    pub fn keys(&self) -> Option<&Tensor> {
        self.keys.as_ref()
    }

    /// The cached values, `[batch, kv_heads, len, v_dim]`.
    pub fn values(&self) -> Option<&Tensor> {
        self.values.as_ref()
    }

    /// Forgets every cached token (a new sequence).
    pub fn reset(&mut self) {
        self.keys = None;
        self.values = None;
        self.seen = 0;
    }

    /// Appends `keys` and `values` (`[batch, kv_heads, new, dim]`) and returns the
    /// keys and values held before them followed by them. Batch, head count and feature sizes must match
    /// what is already cached.
    pub fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, new, d) = keys.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "kv cache: keys must be [batch, kv_heads, seq, head_dim], got shape {:?}",
                keys.dims()
            ))
        })?;
        let (vb, vh, vnew, _) = values.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "kv cache: values must be [batch, kv_heads, seq, dim], got shape {:?}",
                values.dims()
            ))
        })?;
        if (vb, vh, vnew) != (b, h, new) {
            candle_core::bail!(
                "kv cache: keys {:?} and values {:?} disagree on batch, heads or length",
                keys.dims(),
                values.dims()
            )
        }
        if let Some(max_len) = self.max_len {
            if self.len() + new > max_len {
                candle_core::bail!(
                    "kv cache: {} cached + {new} new tokens exceed its capacity of {max_len}",
                    self.len()
                )
            }
        }
        let (keys, values) = match (&self.keys, &self.values) {
            (Some(cached_k), Some(cached_v)) => {
                let (cb, ch, _, cd) = cached_k.dims4()?;
                let cached_vd = cached_v.dims()[3];
                if (cb, ch, cd) != (b, h, d) || cached_vd != values.dims()[3] {
                    candle_core::bail!(
                        "kv cache: new keys {:?} / values {:?} do not fit the cached {:?} / {:?} (batch, heads and features must match)",
                        keys.dims(),
                        values.dims(),
                        cached_k.dims(),
                        cached_v.dims()
                    )
                }
                if cached_k.dtype() != keys.dtype() {
                    candle_core::bail!(
                        "kv cache: new keys are {:?}, the cache holds {:?}",
                        keys.dtype(),
                        cached_k.dtype()
                    )
                }
                (Tensor::cat(&[cached_k, keys], 2)?, Tensor::cat(&[cached_v, values], 2)?)
            }
            _ => (keys.clone(), values.clone()),
        };
        self.seen += new;
        let total = keys.dims()[2];
        let keep = self.window.map_or(total, |window| total.min(window.saturating_sub(1)));
        self.keys = Some(keys.narrow(2, total - keep, keep)?);
        self.values = Some(values.narrow(2, total - keep, keep)?);
        Ok((keys, values))
    }
}
