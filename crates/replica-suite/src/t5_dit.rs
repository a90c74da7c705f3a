//! T5 and DiT against their real reference code (`python/fixtures_t5_dit.py`): HF
//! `T5Attention` with the relative position bias it owns in a stack's first layer
//! (encoder and decoder buckets), HF `T5EncoderModel` (ReLU and gated-GELU
//! feed-forward), and DiT's adaLN-Zero `DiTBlock` (transcribed from
//! facebookresearch/DiT).

use candle_core::Tensor;
use replica_blocks::attention::Attention;
use replica_blocks::dit_block::{DitBlock, DitBlockConfig};
use replica_blocks::papers::{DIT, T5};
use replica_blocks::relative_position_bias::{t5_attention_config, RelativePositionBias, RelativePositionBiasConfig};
use replica_check::config_check::all_positive;
use replica_check::{BlockCheck, Bundle, Case, ConfigCheck, Footprint, Report, Result, Unmatched, Workload};
use replica_models::T5Encoder;
use serde::Deserialize;

use crate::case;
use crate::models::{check_model, load, report_of, ModelInput, ModelIo, ModelParity, INPUT_IDS};

/// Every T5 and DiT case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("t5_attention_bias",        "transformers T5Attention(has_relative_attention_bias=True) (sdpa)",                  Some(T5),  "blocks/t5_attention_bias",        t5_attention_bias),
        case("t5_attention_bias_causal", "transformers T5Attention(has_relative_attention_bias=True, is_decoder) (sdpa)",       Some(T5),  "blocks/t5_attention_bias_causal", t5_attention_bias),
        case("t5_attention_bias_bf16",   "transformers T5Attention(has_relative_attention_bias=True) (sdpa, bf16)",            Some(T5),  "blocks/t5_attention_bias_bf16",   t5_attention_bias),
        case("t5_encoder",               "transformers.T5EncoderModel (feed_forward_proj relu, padded batch)",                 Some(T5),  "models/t5_encoder",               |b| report_of(b, t5_encoder_parity(b))),
        case("t5_encoder_gated",         "transformers.T5EncoderModel (feed_forward_proj gated-gelu)",                         Some(T5),  "models/t5_encoder_gated",         |b| report_of(b, t5_encoder_parity(b))),
        case("t5_encoder_eager",         "transformers.T5EncoderModel (eager attention, probabilities recorded)",              Some(T5),  "models/t5_encoder_eager",         |b| report_of(b, t5_encoder_parity(b))),
        case("t5_encoder_bf16",          "transformers.T5EncoderModel (bf16)",                                                 Some(T5),  "models/t5_encoder_bf16",          |b| report_of(b, t5_encoder_parity(b))),
        case("dit_block",                "DiTBlock (facebookresearch/DiT models.py, transcribed; timm Attention and Mlp)",     Some(DIT), "blocks/dit_block",                dit_block),
        case("dit_block_bf16",           "DiTBlock (facebookresearch/DiT models.py, transcribed; bf16)",                       Some(DIT), "blocks/dit_block_bf16",           dit_block),
    ]
}

/// The sizes of one `T5Attention` (HF `T5Config`'s `d_model`, `d_kv`, `num_heads`).
#[derive(Clone, Debug, Deserialize)]
pub struct T5AttentionDims {
    /// Model width.
    pub d_model: usize,
    /// Features per head.
    pub d_kv: usize,
    /// Heads.
    pub num_heads: usize,
}

impl ConfigCheck for T5AttentionDims {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("num_heads", self.num_heads),
        ])?;
        t5_attention_config(self.d_model, self.num_heads, self.d_kv, false, 0.0).validate()
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        t5_attention_config(self.d_model, self.num_heads, self.d_kv, false, 0.0).footprint(work)
    }
}

/// The fields of a whole `T5Config` that one `T5Attention` in inference does not
/// read (a bundle of the attention may carry its model's config): the model's other
/// sizes, the feed-forward network and norms, the dropout (off in inference), and
/// [`replica_models::T5Config`]'s own unused fields.
const T5_NOT_IN_ATTENTION: &[&str] = &[
    "vocab_size",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "dropout_rate",
    "layer_norm_epsilon",
    "feed_forward_proj",
    "dense_act_fn",
    "is_gated_act",
    "model_type",
    "is_encoder_decoder",
    "decoder_start_token_id",
    "tie_word_embeddings",
    "scale_decoder_outputs",
    "classifier_dropout",
    "pad_token_id",
    "initializer_factor",
    "chunk_size_feed_forward",
    "n_positions",
    "output_past",
];

/// HF `T5Attention` of a stack's first layer: the projections `q`, `k`, `v`, `o`, the
/// relative position bias it computes (`relative_attention_bias`, the lookup recorded
/// as `[q_len, k_len, heads]`) and returns as its second output `[1, heads, q_len,
/// k_len]`, added to unscaled scores; with `is_decoder`, causal buckets and, as HF's
/// sdpa path adds for `is_causal`, the causal mask.
fn t5_attention_bias(bundle: &Bundle) -> Result<Report> {
    let (bias, dims): (RelativePositionBiasConfig, T5AttentionDims) = bundle.config_parts(T5_NOT_IN_ATTENTION)?;
    let attention = t5_attention_config(dims.d_model, dims.num_heads, dims.d_kv, bias.causal, 0.0);
    BlockCheck::new(bundle).outputs(&["0", "1"]).run(
        |vb| {
            let table = RelativePositionBias::new(&bias, vb.pp("relative_attention_bias"))?;
            Ok((Attention::new(&attention, vb)?, table))
        },
        |(attention, table), inputs| {
            let x = &inputs[0];
            let seq = x.dim(1)?;
            let position_bias = table.forward(seq, seq, 0)?;
            let y = attention.forward(x, Some(&position_bias), None)?;
            Ok(vec![y, position_bias])
        },
    )
}

/// DiT's `DiTBlock(hidden_size, num_heads, mlp_ratio)` on tokens `input/0` and the
/// conditioning vector `input/1`.
fn dit_block(bundle: &Bundle) -> Result<Report> {
    let config: DitBlockConfig = bundle.config()?;
    BlockCheck::new(bundle).inputs(&["0", "1"]).run(
        |vb| DitBlock::new(&config, vb),
        |block, inputs| Ok(vec![block.forward(&inputs[0], &inputs[1])?]),
    )
}

/// HF `T5EncoderModel` on token ids (`input/0` or `input/input_ids`) and, when the
/// bundle has one, a padding `attention_mask` (absent: every token attended to):
/// the last hidden states, every module's activation under HF's names (the tuple
/// elements `(hidden, position_bias)` as `:0`, `:1`, and with eager attention the
/// probabilities as `:2`) and every parameter's gradient,
/// the encoder's tied `encoder.embed_tokens.weight` against `shared.weight`'s.
pub fn t5_encoder_parity(bundle: &Bundle) -> replica_models::Result<ModelParity> {
    const IO: ModelIo = ModelIo {
        inputs: &[
            INPUT_IDS,
            ModelInput {
                names: &["attention_mask"],
                default: Some(Tensor::ones_like),
            },
        ],
        outputs: &["last_hidden_state"],
        ties: &[("encoder.embed_tokens.weight", "shared.weight")],
        unmatched: Unmatched::NONE,
    };
    // HF's eager attention also returns (and its hooks record) the probabilities.
    let eager = (bundle.metadata().activations.iter()).any(|name| name.ends_with(".SelfAttention:2"));
    check_model(bundle, &IO, load::<T5Encoder>, |model, inputs| {
        Ok(vec![if eager {
            model.forward_with_attentions(&inputs[0], Some(&inputs[1]))?.0
        } else {
            model.forward(&inputs[0], Some(&inputs[1]))?
        }])
    })
}
