//! The paper registry: which paper each block implements. `replica papers` prints it.

use serde::Serialize;

/// A paper, identified by its arXiv id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Paper {
    /// The paper's title.
    pub title: &'static str,
    /// The arXiv identifier, e.g. `1706.03762`.
    pub arxiv: &'static str,
    /// The year of the first arXiv version.
    pub year: u16,
}

impl Paper {
    /// The paper's arXiv abstract page.
    pub fn url(&self) -> String {
        format!("https://arxiv.org/abs/{}", self.arxiv)
    }
}

/// A block and the paper it follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BlockPaper {
    /// The block's registry name (`Rope`, `Activation::Silu`, `Attention (grouped-query)`).
    pub block: &'static str,
    /// The paper the block implements.
    pub paper: Paper,
}

/// Vaswani et al., 2017: the Transformer (linear, embedding, MLP, sinusoidal positions,
/// attention, post-norm block).
pub const ATTENTION_IS_ALL_YOU_NEED: Paper = Paper {
    title: "Attention Is All You Need",
    arxiv: "1706.03762",
    year: 2017,
};
/// Ba, Kiros & Hinton, 2016: LayerNorm.
pub const LAYER_NORM: Paper = Paper {
    title: "Layer Normalization",
    arxiv: "1607.06450",
    year: 2016,
};
/// Zhang & Sennrich, 2019: RMSNorm.
pub const RMS_NORM: Paper = Paper {
    title: "Root Mean Square Layer Normalization",
    arxiv: "1910.07467",
    year: 2019,
};
/// Hendrycks & Gimpel, 2016: GELU, its tanh approximation and QuickGELU.
pub const GELU: Paper = Paper {
    title: "Gaussian Error Linear Units (GELUs)",
    arxiv: "1606.08415",
    year: 2016,
};
/// Ramachandran, Zoph & Le, 2017: SiLU / Swish.
pub const SWISH: Paper = Paper {
    title: "Searching for Activation Functions",
    arxiv: "1710.05941",
    year: 2017,
};
/// So et al., 2021 (Primer): squared ReLU.
pub const PRIMER: Paper = Paper {
    title: "Primer: Searching for Efficient Transformers for Language Modeling",
    arxiv: "2109.08668",
    year: 2021,
};
/// Shazeer, 2020: gated MLPs (SwiGLU, GeGLU, ReGLU).
pub const GLU_VARIANTS: Paper = Paper {
    title: "GLU Variants Improve Transformer",
    arxiv: "2002.05202",
    year: 2020,
};
/// Gehring et al., 2017: learned absolute position embeddings.
pub const CONV_SEQ2SEQ: Paper = Paper {
    title: "Convolutional Sequence to Sequence Learning",
    arxiv: "1705.03122",
    year: 2017,
};
/// Su et al., 2021 (RoFormer): rotary position embeddings.
pub const ROFORMER: Paper = Paper {
    title: "RoFormer: Enhanced Transformer with Rotary Position Embedding",
    arxiv: "2104.09864",
    year: 2021,
};
/// Chen et al., 2023: position interpolation (RoPE `linear` scaling).
pub const POSITION_INTERPOLATION: Paper = Paper {
    title: "Extending Context Window of Large Language Models via Positional Interpolation",
    arxiv: "2306.15595",
    year: 2023,
};
/// Peng et al., 2023: YaRN, and the dynamic NTK scaling it describes (RoPE `yarn`, `dynamic`).
pub const YARN: Paper = Paper {
    title: "YaRN: Efficient Context Window Extension of Large Language Models",
    arxiv: "2309.00071",
    year: 2023,
};
/// Llama Team, 2024: Llama 3.1's frequency-dependent RoPE scaling (RoPE `llama3`).
pub const LLAMA_3: Paper = Paper {
    title: "The Llama 3 Herd of Models",
    arxiv: "2407.21783",
    year: 2024,
};
/// Ding et al., 2024: LongRoPE, Phi-3's per-frequency factors (RoPE `longrope`).
pub const LONGROPE: Paper = Paper {
    title: "LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens",
    arxiv: "2402.13753",
    year: 2024,
};
/// Press, Smith & Lewis, 2021: ALiBi.
pub const ALIBI: Paper = Paper {
    title: "Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation",
    arxiv: "2108.12409",
    year: 2021,
};
/// Ainslie et al., 2023: grouped-query attention.
pub const GQA: Paper = Paper {
    title: "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints",
    arxiv: "2305.13245",
    year: 2023,
};
/// Shazeer, 2019: multi-query attention and incremental decoding with a KV cache.
pub const MQA: Paper = Paper {
    title: "Fast Transformer Decoding: One Write-Head is All You Need",
    arxiv: "1911.02150",
    year: 2019,
};
/// Henry et al., 2020: QK-norm.
pub const QK_NORM: Paper = Paper {
    title: "Query-Key Normalization for Transformers",
    arxiv: "2010.04245",
    year: 2020,
};
/// Gemma Team, 2024 (Gemma 2): attention logit soft-capping.
pub const GEMMA_2: Paper = Paper {
    title: "Gemma 2: Improving Open Language Models at a Practical Size",
    arxiv: "2408.00118",
    year: 2024,
};
/// Jiang et al., 2023: Mistral 7B, whose attention slides over a window of the
/// last tokens (with a rolling KV cache).
pub const MISTRAL: Paper = Paper {
    title: "Mistral 7B",
    arxiv: "2310.06825",
    year: 2023,
};
/// Dosovitskiy et al., 2020: the Vision Transformer (patch embedding, class token).
pub const VIT: Paper = Paper {
    title: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
    arxiv: "2010.11929",
    year: 2020,
};
/// Hinton et al., 2012: dropout.
pub const DROPOUT: Paper = Paper {
    title: "Improving neural networks by preventing co-adaptation of feature detectors",
    arxiv: "1207.0580",
    year: 2012,
};
/// Huang et al., 2016: stochastic depth (DropPath).
pub const STOCHASTIC_DEPTH: Paper = Paper {
    title: "Deep Networks with Stochastic Depth",
    arxiv: "1603.09382",
    year: 2016,
};
/// Touvron et al., 2021 (CaiT): LayerScale.
pub const CAIT: Paper = Paper {
    title: "Going deeper with Image Transformers",
    arxiv: "2103.17239",
    year: 2021,
};
/// Xiong et al., 2020: pre-norm Transformer blocks.
pub const PRE_NORM: Paper = Paper {
    title: "On Layer Normalization in the Transformer Architecture",
    arxiv: "2002.04745",
    year: 2020,
};
/// Chowdhery et al., 2022 (PaLM): parallel attention and MLP blocks.
pub const PALM: Paper = Paper {
    title: "PaLM: Scaling Language Modeling with Pathways",
    arxiv: "2204.02311",
    year: 2022,
};
/// Ye et al., 2024: differential attention.
pub const DIFF_TRANSFORMER: Paper = Paper {
    title: "Differential Transformer",
    arxiv: "2410.05258",
    year: 2024,
};
/// Liu et al., 2021: shifted-window attention and the hierarchical Swin Transformer.
pub const SWIN: Paper = Paper {
    title: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    arxiv: "2103.14030",
    year: 2021,
};
/// Raffel et al., 2019: T5, its bucketed relative position bias.
pub const T5: Paper = Paper {
    title: "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer",
    arxiv: "1910.10683",
    year: 2019,
};
/// Peebles & Xie, 2022: DiT, adaLN-Zero conditioning.
pub const DIT: Paper = Paper {
    title: "Scalable Diffusion Models with Transformers",
    arxiv: "2212.09748",
    year: 2022,
};
/// Darcet et al., 2023: register tokens in Vision Transformers.
pub const VIT_REGISTERS: Paper = Paper {
    title: "Vision Transformers Need Registers",
    arxiv: "2309.16588",
    year: 2023,
};
/// Zhu et al., 2025: Dynamic Tanh (DyT) in place of normalisation.
pub const DYT: Paper = Paper {
    title: "Transformers without Normalization",
    arxiv: "2503.10622",
    year: 2025,
};
/// Liu et al., 2022: the ConvNeXt block.
pub const CONVNEXT: Paper = Paper {
    title: "A ConvNet for the 2020s",
    arxiv: "2201.03545",
    year: 2022,
};
/// Woo et al., 2023: ConvNeXt V2 and Global Response Normalization.
pub const CONVNEXT_V2: Paper = Paper {
    title: "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
    arxiv: "2301.00808",
    year: 2023,
};
/// Fedus, Zoph & Shazeer, 2021: the Switch Transformer's auxiliary load-balancing loss.
pub const SWITCH_TRANSFORMER: Paper = Paper {
    title: "Switch Transformers: Scaling to Trillion Parameter Models with Simple and Efficient Sparsity",
    arxiv: "2101.03961",
    year: 2021,
};
/// Jiang et al., 2024 (Mixtral): a sparse mixture of gated-MLP experts, top-2 of 8 per token.
pub const MIXTRAL: Paper = Paper {
    title: "Mixtral of Experts",
    arxiv: "2401.04088",
    year: 2024,
};
/// Dai et al., 2024 (DeepSeekMoE): fine-grained routed experts beside always-on shared experts.
pub const DEEPSEEK_MOE: Paper = Paper {
    title: "DeepSeekMoE: Towards Ultimate Expert Specialization in Mixture-of-Experts Language Models",
    arxiv: "2401.06066",
    year: 2024,
};
/// DeepSeek-AI, 2024 (DeepSeek-V2): multi-head latent attention.
pub const DEEPSEEK_V2: Paper = Paper {
    title: "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model",
    arxiv: "2405.04434",
    year: 2024,
};
/// Loshchilov & Hutter, 2017: AdamW, Adam with decoupled weight decay.
pub const ADAMW: Paper = Paper {
    title: "Decoupled Weight Decay Regularization",
    arxiv: "1711.05101",
    year: 2017,
};

/// Every block with its paper.
pub const PAPERS: &[BlockPaper] = &[
    BlockPaper {
        block: "Linear",
        paper: ATTENTION_IS_ALL_YOU_NEED,
    },
    BlockPaper {
        block: "Embedding",
        paper: ATTENTION_IS_ALL_YOU_NEED,
    },
    BlockPaper {
        block: "LayerNorm",
        paper: LAYER_NORM,
    },
    BlockPaper {
        block: "RmsNorm",
        paper: RMS_NORM,
    },
    BlockPaper {
        block: "Activation::Gelu",
        paper: GELU,
    },
    BlockPaper {
        block: "Activation::GeluTanh",
        paper: GELU,
    },
    BlockPaper {
        block: "Activation::QuickGelu",
        paper: GELU,
    },
    BlockPaper {
        block: "Activation::Silu",
        paper: SWISH,
    },
    BlockPaper {
        block: "Activation::ReluSquared",
        paper: PRIMER,
    },
    BlockPaper {
        block: "Mlp",
        paper: ATTENTION_IS_ALL_YOU_NEED,
    },
    BlockPaper {
        block: "GluMlp (SwiGLU, GeGLU, ReGLU)",
        paper: GLU_VARIANTS,
    },
    BlockPaper {
        block: "SinusoidalPositionEmbedding",
        paper: ATTENTION_IS_ALL_YOU_NEED,
    },
    BlockPaper {
        block: "LearnedPositionEmbedding",
        paper: CONV_SEQ2SEQ,
    },
    BlockPaper {
        block: "Rope",
        paper: ROFORMER,
    },
    BlockPaper {
        block: "RopeScaling::Linear",
        paper: POSITION_INTERPOLATION,
    },
    BlockPaper {
        block: "RopeScaling::Dynamic",
        paper: YARN,
    },
    BlockPaper {
        block: "RopeScaling::Yarn",
        paper: YARN,
    },
    BlockPaper {
        block: "RopeScaling::Llama3",
        paper: LLAMA_3,
    },
    BlockPaper {
        block: "RopeScaling::LongRope",
        paper: LONGROPE,
    },
    BlockPaper {
        block: "Alibi",
        paper: ALIBI,
    },
    BlockPaper {
        block: "scaled_dot_product_attention",
        paper: ATTENTION_IS_ALL_YOU_NEED,
    },
    BlockPaper {
        block: "Attention (multi-head)",
        paper: ATTENTION_IS_ALL_YOU_NEED,
    },
    BlockPaper {
        block: "Attention (grouped-query)",
        paper: GQA,
    },
    BlockPaper {
        block: "Attention (multi-query)",
        paper: MQA,
    },
    BlockPaper {
        block: "Attention (QK-norm)",
        paper: QK_NORM,
    },
    BlockPaper {
        block: "Attention (logit softcap)",
        paper: GEMMA_2,
    },
    BlockPaper {
        block: "Attention (sliding window; TransformerBlock sandwich norms are Gemma 2's)",
        paper: MISTRAL,
    },
    BlockPaper {
        block: "KvCache (rolling, with_window)",
        paper: MISTRAL,
    },
    BlockPaper {
        block: "KvCache",
        paper: MQA,
    },
    BlockPaper {
        block: "PatchEmbed",
        paper: VIT,
    },
    BlockPaper {
        block: "ClassToken",
        paper: VIT,
    },
    BlockPaper {
        block: "Dropout",
        paper: DROPOUT,
    },
    BlockPaper {
        block: "DropPath",
        paper: STOCHASTIC_DEPTH,
    },
    BlockPaper {
        block: "LayerScale",
        paper: CAIT,
    },
    BlockPaper {
        block: "TransformerBlock (post-norm)",
        paper: ATTENTION_IS_ALL_YOU_NEED,
    },
    BlockPaper {
        block: "TransformerBlock (pre-norm)",
        paper: PRE_NORM,
    },
    BlockPaper {
        block: "TransformerBlock (parallel)",
        paper: PALM,
    },
    BlockPaper {
        block: "DiffAttention",
        paper: DIFF_TRANSFORMER,
    },
    BlockPaper {
        block: "WindowAttention",
        paper: SWIN,
    },
    BlockPaper {
        block: "PatchMerging",
        paper: SWIN,
    },
    BlockPaper {
        block: "SwinBlock",
        paper: SWIN,
    },
    BlockPaper {
        block: "RelativePositionBias",
        paper: T5,
    },
    BlockPaper {
        block: "DitBlock (adaLN-Zero)",
        paper: DIT,
    },
    BlockPaper {
        block: "DynamicTanh",
        paper: DYT,
    },
    BlockPaper {
        block: "ConvNextBlock",
        paper: CONVNEXT,
    },
    BlockPaper {
        block: "GlobalResponseNorm",
        paper: CONVNEXT_V2,
    },
    BlockPaper {
        block: "Moe",
        paper: MIXTRAL,
    },
    BlockPaper {
        block: "Moe (shared experts)",
        paper: DEEPSEEK_MOE,
    },
    BlockPaper {
        block: "load_balancing_loss",
        paper: SWITCH_TRANSFORMER,
    },
    BlockPaper {
        block: "Mla",
        paper: DEEPSEEK_V2,
    },
    BlockPaper {
        block: "FusedAdamW (optimiser)",
        paper: ADAMW,
    },
];

/// The paper of a block, by its registry name.
pub fn paper_of(block: &str) -> Option<&'static Paper> {
    PAPERS
        .iter()
        .find(|entry| entry.block == block)
        .map(|entry| &entry.paper)
}
