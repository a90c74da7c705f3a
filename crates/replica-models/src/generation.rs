//! Autoregressive decoding for the causal language models (GPT-2, LLaMA):
//! greedy search, as HF `generate(do_sample=False)`, with or without a KV cache.

use candle_core::{DType, Device, Tensor, D};
use replica_blocks::kv_cache::KvCache;

/// A decoder-only language model.
pub trait CausalLm {
    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`. With a `cache`
    /// (one [`KvCache`] per layer), the ids continue the tokens it holds: they sit
    /// at positions `cache.len() ..` and their keys and values are appended.
    fn forward_lm(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor>;

    /// The number of transformer layers (one cache each).
    fn num_layers(&self) -> usize;

    /// The longest sequence, prompt and generated tokens together, the model can position.
    fn max_positions(&self) -> usize;

    /// Where the model's weights are, and so where its inputs must be.
    fn device(&self) -> &Device;

    /// An empty cache, one [`KvCache`] per layer.
    fn new_cache(&self) -> Vec<KvCache> {
        (0..self.num_layers()).map(|_| KvCache::new()).collect()
    }

    /// `Some(n)`: once generation's sequence holds more than `n` tokens while its
    /// cache holds at most `n`, the cache is dropped and the whole sequence encoded
    /// again (HF's Phi-3 past `original_max_position_embeddings`, where LongRoPE
    /// switches every position to its long factors). `None`: never.
    fn cache_rebuilt_past(&self) -> Option<usize> {
        None
    }
}

/// The number of new tokens in `ids` and of cached tokens before them, after
/// checking that `ids` is `[batch, seq]`, that `cache` has one entry per layer, and
/// that all the tokens fit the `limit` positions of the `model`'s `table` (its
/// description in the message).
pub(crate) fn decoder_positions(
    model: &str,
    ids: &Tensor,
    cache: &Option<&mut [KvCache]>,
    layers: usize,
    limit: usize,
    table: &str,
) -> candle_core::Result<(usize, usize)> {
    let (_, seq) = ids.dims2().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{model}: token ids must be [batch, seq], got shape {:?}",
            ids.dims()
        ))
    })?;
    let offset = match cache {
        Some(cache) if cache.len() != layers => {
            candle_core::bail!(
                "kv cache: {} layer caches given, the model has {layers} layers",
                cache.len()
            )
        }
        Some(cache) => cache[0].len(),
        None => 0,
    };
    if offset + seq > limit {
        let cached = if offset > 0 {
            format!(" ({offset} cached + {seq} new)")
        } else {
            String::new()
        };
        candle_core::bail!(
            "{model}: a sequence of {} tokens{cached} is longer than {table}",
            offset + seq
        )
    }
    Ok((seq, offset))
}

/// How to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Tokens to add to the prompt at the most.
    pub max_new_tokens: usize,
    /// Feed only the newest token each step and keep the others' keys and values
    /// (fast); without it every step runs the whole sequence again.
    pub use_cache: bool,
    /// Stop after producing this token.
    pub eos_token: Option<u32>,
}

impl GenerateOptions {
    /// Greedy decoding of up to `max_new_tokens` tokens with the KV cache, no end token.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            use_cache: true,
            eos_token: None,
        }
    }

    /// The same, running the whole sequence again each step (the reference for the cache).
    pub fn without_cache(mut self) -> Self {
        self.use_cache = false;
        self
    }
}

/// Greedy decoding: the prompt followed by up to `max_new_tokens` tokens, each the
/// arg-max of the logits at the last position (the first on ties, as `torch.argmax`).
/// `on_token` sees each new token as it is chosen.
pub fn generate_greedy(
    model: &impl CausalLm,
    prompt: &[u32],
    options: GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> candle_core::Result<Vec<u32>> {
    if prompt.is_empty() {
        candle_core::bail!("generate: the prompt is empty (give at least one token)")
    }
    let total = prompt.len().saturating_add(options.max_new_tokens);
    if total > model.max_positions() {
        candle_core::bail!(
            "generate: {} prompt tokens + {} new tokens = {total} positions, more than the model's {} (its position table / rotary tables end there)",
            prompt.len(),
            options.max_new_tokens,
            model.max_positions()
        )
    }
    let device = model.device();
    let mut tokens = prompt.to_vec();
    let mut cache = options.use_cache.then(|| model.new_cache());
    let mut fed = 0;
    for _ in 0..options.max_new_tokens {
        let rebuild = model.cache_rebuilt_past().is_some_and(|n| tokens.len() > n && fed <= n);
        if let Some(cache) = cache.as_mut().filter(|_| rebuild) {
            *cache = model.new_cache();
            fed = 0;
        }
        let input = match &cache {
            Some(_) => &tokens[fed..],
            None => &tokens[..],
        };
        let ids = Tensor::new(input, device)?.unsqueeze(0)?;
        let logits = model.forward_lm(&ids, cache.as_deref_mut())?;
        fed = tokens.len();
        let last = logits.get(0)?.get(input.len() - 1)?;
        let next = first_argmax(&last)?;
        tokens.push(next);
        on_token(next);
        if options.eos_token == Some(next) {
            break;
        }
    }
    Ok(tokens)
}

/// The index of the greatest value of a 1-D tensor, the first one on ties.
fn first_argmax(logits: &Tensor) -> candle_core::Result<u32> {
    let values = logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || (values[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    Ok(best as u32)
}

/// `logits` `[batch, seq, vocab]` and target ids `[batch, seq]` to the mean
/// cross-entropy over all positions (natural log).
pub fn language_model_loss(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let (b, s, v) = logits.dims3()?;
    let flat = logits.reshape((b * s, v))?;
    let log_probs = candle_nn::ops::log_softmax(&flat, D::Minus1)?;
    candle_nn::loss::nll(&log_probs, &targets.reshape(b * s)?.to_dtype(DType::U32)?)
}
