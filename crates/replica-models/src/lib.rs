//! Reference models built only from [`replica_blocks`], each in one file with a
//! serde `Config` that reads the reference's own `config.json`, module paths equal
//! to the reference checkpoint's tensor names, and its paper cited:
//!
//! - [`gpt2`]: GPT-2 as HF `GPT2LMHeadModel` / minGPT (arXiv 2005.14165), with a
//!   tied LM head and greedy generation with a KV cache;
//! - [`vit`]: the Vision Transformer as timm's `VisionTransformer` (arXiv 2010.11929);
//! - [`llama`]: a LLaMA-style decoder as HF `LlamaForCausalLM` (arXiv 2302.13971):
//!   RMSNorm, RoPE (and HF's RoPE scalings), SwiGLU, grouped-query attention, KV cache;
//!   it reads Mistral configs too (sliding-window attention on every layer);
//! - [`gemma`]: Gemma as HF `GemmaForCausalLM` (arXiv 2403.08295), the LLaMA
//!   [`decoder`] with Gemma's norms, embedding scale and GeGLU;
//! - [`gemma2`]: Gemma 2 as HF `Gemma2ForCausalLM` (arXiv 2408.00118): Gemma with
//!   sandwich norms, alternating sliding-window layers and soft-capped logits;
//! - [`phi3`]: Phi-3 as HF `Phi3ForCausalLM` (arXiv 2404.14219), the [`decoder`]
//!   with fused qkv and gate/up projections and LongRoPE;
//! - [`qwen2`]: Qwen2 as HF `Qwen2ForCausalLM` (arXiv 2407.10671), the [`decoder`]
//!   with biased q/k/v projections;
//! - [`qwen3`]: Qwen3 as HF `Qwen3ForCausalLM` (arXiv 2505.09388), the [`decoder`]
//!   with per-head RMSNorms on queries and keys;
//! - [`mixtral`]: Mixtral as HF `MixtralForCausalLM` (arXiv 2401.04088), the
//!   [`decoder`] with a sparse mixture of SwiGLU experts and the auxiliary
//!   load-balancing loss;
//! - [`deepseek_v2`]: DeepSeek-V2 as HF `DeepseekV2ForCausalLM` (arXiv 2405.04434):
//!   multi-head latent attention and DeepSeekMoE with shared experts;
//! - [`bert`]: the BERT encoder as HF `BertModel` (arXiv 1810.04805), with
//!   sentence embeddings (the `sentence` module, with the `sentence` feature) for sentence-transformers models.
//!
//! Each is an [`Architecture`]: its config type (read strictly, [`ModelConfig`]),
//! its [`Family`], its presets, its weight map and `new`; the strict checkpoint
//! loaders are [`LoadCheckpoint`]'s, which every architecture has. Train or eval is candle's `ModuleT::forward_t(x, train)`. Around them:
//! the [`registry`], a table of one descriptor per architecture (`list_models`,
//! `create_model`, `load_model`), [`checkpoint`] reading that refuses another
//! model's weights, [`generation`], and [`divergence`] (the first module whose
//! activation departs from the reference's). The parity cases that `replica check`
//! runs are in the `replica-suite` crate.
#![warn(missing_docs)]

pub mod architecture;
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod deepseek_v2;
pub mod divergence;
mod error;
pub mod gemma;
pub mod gemma2;
pub mod generation;
pub mod gpt2;
pub mod llama;
pub mod load_checkpoint;
pub mod mixtral;
pub mod papers;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod registry;
#[cfg(feature = "sentence")]
pub mod sentence;
pub mod swin;
pub mod t5;
pub mod vit;

pub use architecture::{Architecture, Family, Preset};
pub use bert::{Bert, BertConfig, BertOutput};
pub use config::ModelConfig;
pub use deepseek_v2::{DeepseekV2, DeepseekV2Config};
pub use error::{Error, Result};
pub use gemma::{Gemma, GemmaConfig};
pub use gemma2::{Gemma2, Gemma2Config};
pub use gpt2::{Gpt2, Gpt2Config};
pub use llama::{Llama, LlamaConfig};
pub use load_checkpoint::LoadCheckpoint;
pub use mixtral::{Mixtral, MixtralConfig};
pub use phi3::{Phi3, Phi3Config};
pub use qwen2::{Qwen2, Qwen2Config};
pub use qwen3::{Qwen3, Qwen3Config};
pub use registry::{create_model, list_models, load_model, Descriptor, Model, Registry};
pub use swin::{Swin, SwinConfig};
pub use t5::{T5Config, T5Encoder};
pub use vit::{Vit, VitConfig};

/// The tokenizer library the sentence embedder uses (HF `tokenizers`), for callers that tokenise themselves.
#[cfg(feature = "sentence")]
pub use tokenizers;
