//! The papers the models implement (the blocks' own papers are in
//! [`replica_blocks::papers`]).

use replica_blocks::Paper;

/// GPT-2's architecture (Radford et al. 2019, "Language Models are Unsupervised
/// Multitask Learners", [`GPT2_REPORT`]) as the GPT-3 paper restates it and
/// minGPT implements it. The GPT-2 report has no arXiv id.
pub const GPT2: Paper = Paper {
    title: "Language Models are Few-Shot Learners (the GPT-2 architecture)",
    arxiv: "2005.14165",
    year: 2020,
};

/// The GPT-2 report itself.
pub const GPT2_REPORT: &str =
    "https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf";

/// The LLaMA decoder (RMSNorm, RoPE, SwiGLU).
pub const LLAMA: Paper = Paper {
    title: "LLaMA: Open and Efficient Foundation Language Models",
    arxiv: "2302.13971",
    year: 2023,
};

/// Mistral 7B (the LLaMA decoder with sliding-window attention).
pub use replica_blocks::papers::MISTRAL;

/// Gemma (the LLaMA decoder with `1 + w` RMSNorms, scaled embeddings and GeGLU).
pub const GEMMA: Paper = Paper {
    title: "Gemma: Open Models Based on Gemini Research and Technology",
    arxiv: "2403.08295",
    year: 2024,
};

/// Gemma 2 (Gemma with sandwich norms, local/global layers and soft-capping).
pub use replica_blocks::papers::GEMMA_2;

/// Phi-3 (the LLaMA decoder with fused projections and LongRoPE).
pub const PHI3: Paper = Paper {
    title: "Phi-3 Technical Report: A Highly Capable Language Model Locally on Your Phone",
    arxiv: "2404.14219",
    year: 2024,
};

/// Qwen2 (the LLaMA decoder with biased q/k/v projections).
pub const QWEN2: Paper = Paper {
    title: "Qwen2 Technical Report",
    arxiv: "2407.10671",
    year: 2024,
};

/// Qwen3 (the LLaMA decoder with per-head RMSNorms on queries and keys).
pub const QWEN3: Paper = Paper {
    title: "Qwen3 Technical Report",
    arxiv: "2505.09388",
    year: 2025,
};

/// Mixtral (the Mistral decoder with a sparse mixture of SwiGLU experts).
pub const MIXTRAL: Paper = replica_blocks::papers::MIXTRAL;

/// DeepSeek-V2 (multi-head latent attention and DeepSeekMoE).
pub const DEEPSEEK_V2: Paper = replica_blocks::papers::DEEPSEEK_V2;

/// The BERT encoder.
pub const BERT: Paper = Paper {
    title: "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
    arxiv: "1810.04805",
    year: 2018,
};

/// Mean-pooled, normalised BERT outputs as sentence embeddings (sentence-transformers).
pub const SENTENCE_BERT: Paper = Paper {
    title: "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    arxiv: "1908.10084",
    year: 2019,
};

/// The distilled encoder all-MiniLM-L6-v2 starts from.
pub const MINILM: Paper = Paper {
    title: "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers",
    arxiv: "2002.10957",
    year: 2020,
};

/// T5 (its encoder: relative position bias, RMSNorm, unscaled attention), the
/// blocks' paper entry.
pub use replica_blocks::papers::T5;

/// Each model and the paper it follows, for `replica papers` (the blocks' are in
/// [`replica_blocks::PAPERS`]).
pub const PAPERS: &[replica_blocks::BlockPaper] = &[
    replica_blocks::BlockPaper {
        block: "Gpt2",
        paper: GPT2,
    },
    replica_blocks::BlockPaper {
        block: "Vit",
        paper: replica_blocks::papers::VIT,
    },
    replica_blocks::BlockPaper {
        block: "Swin",
        paper: replica_blocks::papers::SWIN,
    },
    replica_blocks::BlockPaper {
        block: "Vit (reg_tokens)",
        paper: replica_blocks::papers::VIT_REGISTERS,
    },
    replica_blocks::BlockPaper {
        block: "Vit (init_values: LayerScale)",
        paper: replica_blocks::papers::CAIT,
    },
    replica_blocks::BlockPaper {
        block: "Vit (dynamic_tanh)",
        paper: replica_blocks::papers::DYT,
    },
    replica_blocks::BlockPaper {
        block: "Llama",
        paper: LLAMA,
    },
    replica_blocks::BlockPaper {
        block: "Gemma",
        paper: GEMMA,
    },
    replica_blocks::BlockPaper {
        block: "Gemma2",
        paper: GEMMA_2,
    },
    replica_blocks::BlockPaper {
        block: "Phi3",
        paper: PHI3,
    },
    replica_blocks::BlockPaper {
        block: "Qwen2",
        paper: QWEN2,
    },
    replica_blocks::BlockPaper {
        block: "Qwen3",
        paper: QWEN3,
    },
    replica_blocks::BlockPaper {
        block: "Mixtral",
        paper: MIXTRAL,
    },
    replica_blocks::BlockPaper {
        block: "DeepseekV2",
        paper: DEEPSEEK_V2,
    },
    replica_blocks::BlockPaper {
        block: "Bert",
        paper: BERT,
    },
    replica_blocks::BlockPaper {
        block: "SentenceEmbedder (mean pooling, L2 normalisation)",
        paper: SENTENCE_BERT,
    },
    replica_blocks::BlockPaper {
        block: "all-MiniLM-L6-v2",
        paper: MINILM,
    },
    replica_blocks::BlockPaper {
        block: "T5Encoder",
        paper: T5,
    },
];
