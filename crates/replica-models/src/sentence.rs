//! Sentence embeddings with a pretrained sentence-transformers BERT
//! (Reimers & Gurevych, arXiv 1908.10084): tokenise with the model's own
//! `tokenizer.json` (the `tokenizers` crate), encode with [`Bert`], mean-pool over
//! the real tokens and L2-normalise.
//!
//! [`SentenceEmbedder::from_dir`] loads a model directory it is given; fetching one
//! is the caller's business (the repository's tests and examples fetch
//! all-MiniLM-L6-v2 with `replica_suite::minilm`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer};

use crate::bert::{Bert, BertConfig};
use crate::{Error, LoadCheckpoint, ModelConfig, Result};

/// The files a sentence-transformers model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// The files of `dir` that [`MODEL_FILES`] names and that are missing.
pub fn missing_files(dir: &Path) -> Vec<&'static str> {
    MODEL_FILES.into_iter().filter(|f| !dir.join(f).is_file()).collect()
}

/// Token ids, segment ids and attention mask of a batch, each `[batch, seq]` (u32).
#[derive(Clone, Debug)]
pub struct Encoded {
    /// Token ids from the tokenizer's vocabulary, padding included.
    pub input_ids: Tensor,
    /// Segment ids (all 0 for single sentences).
    pub token_type_ids: Tensor,
    /// 1 for a real token, 0 for padding.
    pub attention_mask: Tensor,
}

/// A sentence-transformers model: tokenizer, BERT encoder, mean pooling, normalisation.
#[derive(Clone)]
pub struct SentenceEmbedder {
    tokenizer: Tokenizer,
    model: Bert,
    device: Device,
}

impl SentenceEmbedder {
    /// Reads a sentence-transformers model directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`). Batches are padded to their longest sentence; the
    /// tokenizer's own truncation (128 tokens for all-MiniLM-L6-v2) is kept.
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let missing = missing_files(dir);
        if !missing.is_empty() {
            return Err(Error::Missing(format!(
                "{}: not a sentence-transformers model directory (missing {})",
                dir.display(),
                missing.join(", ")
            )));
        }
        let config = BertConfig::from_file(dir.join("config.json"))?;
        let model = Bert::load(&config, dir.join("model.safetensors"), DType::F32, device)?;
        let path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|err| Error::Tokenizer(format!("{}: cannot read the tokenizer: {err}", path.display())))?;
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..tokenizer.get_padding().cloned().unwrap_or_default()
        };
        tokenizer.with_padding(Some(padding));
        Ok(Self {
            tokenizer,
            model,
            device: device.clone(),
        })
    }

    /// The BERT encoder.
    pub fn model(&self) -> &Bert {
        &self.model
    }

    /// The tokenizer, with batch-longest padding set.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenises a batch with `[CLS]`/`[SEP]`, padded to the longest sentence.
    pub fn tokenize(&self, sentences: &[&str]) -> Result<Encoded> {
        if sentences.is_empty() {
            return Err(Error::Tokenizer("no sentences to embed".into()));
        }
        let encodings = self
            .tokenizer
            .encode_batch(sentences.to_vec(), true)
            .map_err(|err| Error::Tokenizer(format!("tokenizing failed: {err}")))?;
        let rows = |get: fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor> {
            let data: Vec<Vec<u32>> = encodings.iter().map(|e| get(e).to_vec()).collect();
            Ok(Tensor::new(data, &self.device)?)
        };
        Ok(Encoded {
            input_ids: rows(|e| e.get_ids())?,
            token_type_ids: rows(|e| e.get_type_ids())?,
            attention_mask: rows(|e| e.get_attention_mask())?,
        })
    }

    /// Embeddings of an already tokenised batch, `[batch, hidden_size]`, unit length.
    pub fn embed_encoded(&self, encoded: &Encoded) -> Result<Tensor> {
        Ok(self.model.sentence_embeddings(
            &encoded.input_ids,
            Some(&encoded.token_type_ids),
            &encoded.attention_mask,
        )?)
    }

    /// Embeddings of `sentences`, `[batch, hidden_size]`, unit length.
    pub fn embed(&self, sentences: &[&str]) -> Result<Tensor> {
        self.embed_encoded(&self.tokenize(sentences)?)
    }
}

/// Cosine similarities of every pair of rows of `a` `[n, d]` and `b` `[m, d]`: `[n, m]`.
pub fn cosine_similarities(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let a = crate::bert::l2_normalize(a)?;
    let b = crate::bert::l2_normalize(b)?;
    a.matmul(&b.t()?)
}
