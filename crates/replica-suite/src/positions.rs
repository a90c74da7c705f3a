//! Position encodings against the real reference code (`python/fixtures_blocks_attention.py`,
//! `python/fixtures_blocks_rope_scaling.py`): rotary embeddings as HF LLaMA, GPT-NeoX and
//! GPT-J apply them, HF's RoPE scalings (`linear`, `dynamic`, `yarn`, `llama3`, `longrope`), the sinusoidal
//! tables of the paper and of HF Marian, GPT-2's learned positions and BLOOM's ALiBi.
//!
//! Where the fixture's wrapper records the rotary module's `(cos, sin)` tables
//! (`rotary_emb:0`, `rotary_emb:1`), the case records the block's own tables in
//! HF's layout under that name, so the tables are compared too.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use replica_blocks::alibi::{Alibi, AlibiConfig};
use replica_blocks::attention::{scaled_dot_product_attention, AttentionConfig, SdpaOptions};
use replica_blocks::papers::{
    ALIBI, ATTENTION_IS_ALL_YOU_NEED, CONV_SEQ2SEQ, LLAMA_3, LONGROPE, POSITION_INTERPOLATION, ROFORMER, YARN,
};
use replica_blocks::position_embedding::{LearnedPositionConfig, LearnedPositionEmbedding};
use replica_blocks::rope::{Rope, RopeConfig, RopeStyle};
use replica_blocks::sinusoidal::{SinusoidalConfig, SinusoidalPositionEmbedding};
use replica_check::config_check::positive;
use replica_check::{
    check_block, sizeless_config, tap_tuple, trace, BlockCheck, Bundle, Case, ConfigCheck, Error, Footprint, Namespace,
    Parity, Report, Result, Size, Tolerance, TraceMap, WeightMap, Workload,
};
use serde::Deserialize;

use crate::case;
use crate::reference::outside_rope;

/// Every position-encoding case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("rope_half_split",          "transformers LlamaRotaryEmbedding + apply_rotary_pos_emb",                           Some(ROFORMER),                  "blocks/rope_half_split",          rope_half_split),
        case("rope_long_positions",      "transformers LlamaRotaryEmbedding + apply_rotary_pos_emb, positions 4000..4004",     Some(ROFORMER),                  "blocks/rope_long_positions",      rope_half_split),
        case("rope_half_split_partial",  "transformers GPTNeoXRotaryEmbedding + apply_rotary_pos_emb (partial_rotary_factor)", Some(ROFORMER),                  "blocks/rope_half_split_partial",  rope_half_split_partial),
        case("rope_linear",              "transformers LlamaRotaryEmbedding (rope_type linear) + apply_rotary_pos_emb, positions 200..206",   Some(POSITION_INTERPOLATION), "blocks/rope_linear",   rope_half_split),
        case("rope_dynamic",             "transformers LlamaRotaryEmbedding (rope_type dynamic) + apply_rotary_pos_emb, positions 90..96 of 64", Some(YARN),          "blocks/rope_dynamic",         rope_half_split),
        case("rope_dynamic_grown",       "transformers LlamaRotaryEmbedding (rope_type dynamic) after a sequence of 120, positions 90..96",   Some(YARN),                   "blocks/rope_dynamic_grown",    rope_dynamic_grown),
        case("rope_yarn",                "transformers LlamaRotaryEmbedding (rope_type yarn) + apply_rotary_pos_emb, positions 200..206",     Some(YARN),                   "blocks/rope_yarn",             rope_half_split),
        case("rope_yarn_bf16",           "transformers LlamaRotaryEmbedding (rope_type yarn) + apply_rotary_pos_emb, bf16",                   Some(YARN),                   "blocks/rope_yarn_bf16",        rope_half_split),
        case("rope_llama3",              "transformers LlamaRotaryEmbedding (rope_type llama3) + apply_rotary_pos_emb, positions 400..406",   Some(LLAMA_3),                "blocks/rope_llama3",           rope_half_split),
        case("rope_longrope",            "transformers LlamaRotaryEmbedding (rope_type longrope) + apply_rotary_pos_emb, long factors",       Some(LONGROPE),               "blocks/rope_longrope",         rope_half_split),
        case("rope_longrope_short",      "transformers LlamaRotaryEmbedding (rope_type longrope) + apply_rotary_pos_emb, short factors",      Some(LONGROPE),               "blocks/rope_longrope_short",   rope_half_split),
        case("rope_interleaved_partial", "transformers GPT-J create_sinusoidal_positions + apply_rotary_pos_emb (rotary_dim)", Some(ROFORMER),                  "blocks/rope_interleaved_partial", rope_interleaved_partial),
        case("sinusoidal_paper",         "transcription of arXiv 1706.03762 section 3.5",                                      Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/sinusoidal_paper",         sinusoidal_paper),
        case("sinusoidal_marian",        "transformers MarianSinusoidalPositionalEmbedding",                                   Some(ATTENTION_IS_ALL_YOU_NEED), "blocks/sinusoidal_marian",        sinusoidal_marian),
        case("learned_position",         "GPT-2 wpe (torch.nn.Embedding)",                                                     Some(CONV_SEQ2SEQ),              "blocks/learned_position",         learned_position),
        case("alibi",                    "transformers BLOOM build_alibi_tensor + the paper's get_slopes",                     Some(ALIBI),                     "blocks/alibi",                    alibi),
    ]
}

// --------------------------------------------------------------------- RoPE

/// Rotates `input/0` (queries) and `input/1` (keys) from position `offset`; with
/// `hf_tables`, records the tables as the fixture's wrapper does.
fn rope_pair(bundle: &Bundle, config: &RopeConfig, offset: usize, hf_tables: bool) -> Result<Report> {
    BlockCheck::new(bundle).inputs(&["0", "1"]).outputs(&["0", "1"]).run(
        |vb| Rope::new(config, vb.device()),
        |rope, qk| {
            if hf_tables {
                let (cos, sin) = rope.hf_tables(qk[0].dim(2)?, offset, qk[0].dtype())?;
                tap_tuple("rotary_emb", &[&cos, &sin]);
            }
            Ok(vec![rope.apply(&qk[0], offset)?, rope.apply(&qk[1], offset)?])
        },
    )
}

/// A position offset (the cache length the positions start after).
#[derive(Deserialize)]
struct Offset {
    offset: usize,
}

// Offsets and past lengths are checked against the tables where they are used.
sizeless_config!(Offset);

/// The rotary embedding of a HF model config, and the position offset.
fn hf_rope(bundle: &Bundle, model: &str) -> Result<(RopeConfig, usize)> {
    let (attention, offset): (AttentionConfig, Offset) = bundle.config_parts(&outside_rope())?;
    let config = attention.rope_config()?.ok_or_else(|| {
        Error::file(
            bundle.origin(),
            format!("the {model} config does not ask for rotary embeddings"),
        )
    })?;
    Ok((config, offset.offset))
}

/// HF LLaMA: half-split rotation of every feature, positions from `offset`.
fn rope_half_split(bundle: &Bundle) -> Result<Report> {
    let (config, offset) = hf_rope(bundle, "LLaMA")?;
    rope_pair(bundle, &config, offset, true)
}

/// HF LLaMA with dynamic NTK whose module ran `grown_to` positions before: the
/// frequencies of that length stay for the shorter call, as HF's module keeps them.
fn rope_dynamic_grown(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Grown {
        offset: usize,
        grown_to: usize,
    }
    sizeless_config!(Grown);
    let (attention, grown): (AttentionConfig, Grown) = bundle.config_parts(&outside_rope())?;
    let Some(config) = attention.rope_config()? else {
        return Err(Error::file(
            bundle.origin(),
            "the LLaMA config does not ask for rotary embeddings",
        ));
    };
    BlockCheck::new(bundle).inputs(&["0", "1"]).outputs(&["0", "1"]).run(
        |vb| {
            let rope = Rope::new(&config, vb.device())?;
            rope.tables(grown.grown_to, 0)?;
            Ok(rope)
        },
        |rope, qk| {
            let (cos, sin) = rope.hf_tables(qk[0].dim(2)?, grown.offset, qk[0].dtype())?;
            tap_tuple("rotary_emb", &[&cos, &sin]);
            Ok(vec![
                rope.apply(&qk[0], grown.offset)?,
                rope.apply(&qk[1], grown.offset)?,
            ])
        },
    )
}

/// GPT-NeoX: half-split rotation of the first quarter of each head.
fn rope_half_split_partial(bundle: &Bundle) -> Result<Report> {
    let (config, offset) = hf_rope(bundle, "GPT-NeoX")?;
    rope_pair(bundle, &config, offset, true)
}

/// GPT-J: interleaved rotation of the first `rotary_dim` features.
fn rope_interleaved_partial(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Args {
        head_dim: usize,
        rotary_dim: usize,
        max_position_embeddings: usize,
        offset: usize,
    }
    impl Args {
        fn rope(&self) -> RopeConfig {
            RopeConfig {
                style: RopeStyle::Interleaved,
                rotary_features: Some(self.rotary_dim),
                max_positions: self.max_position_embeddings,
                ..RopeConfig::new(self.head_dim)
            }
        }
    }
    impl ConfigCheck for Args {
        fn validate(&self) -> std::result::Result<(), String> {
            self.rope().validate()
        }

        fn footprint(&self, work: &Workload) -> Footprint {
            self.rope().footprint(work)
        }
    }
    let args: Args = bundle.config()?;
    rope_pair(bundle, &args.rope(), args.offset, false)
}

// ------------------------------------------------------ absolute positions

/// The run's parameters in a plain `VarBuilder`: the sinusoidal tables are computed,
/// and their stored buffers are compared with the computed ones, not loaded.
fn vb_from_params<'a>(run: &Parity, dtype: DType, device: &Device) -> VarBuilder<'a> {
    VarBuilder::from_tensors(
        run.params().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        dtype,
        device,
    )
}

/// A whole sinusoidal table of `rows` positions (the config field `field`), as wide
/// as the input's features, compared with the reference's stored one.
fn whole_table(field: &str, rows: usize, work: &Workload) -> Footprint {
    let features = Size::count(work.elements / work.rows.max(1));
    Footprint::params(Size::field(field, rows) * features * 4 * 3)
}

/// The paper's interleaved table added to the input; the whole table is also
/// compared with the reference's `pe` buffer.
fn sinusoidal_paper(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Rows {
        max_positions: usize,
        offset: usize,
    }
    impl ConfigCheck for Rows {
        fn validate(&self) -> std::result::Result<(), String> {
            positive("max_positions", self.max_positions)
        }

        fn footprint(&self, work: &Workload) -> Footprint {
            whole_table("max_positions", self.max_positions, work)
        }
    }
    let (config, rows): (SinusoidalConfig, Rows) = bundle.config_parts(&[])?;
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    let pe = SinusoidalPositionEmbedding::new(&config, vb_from_params(&run, DType::F32, x.device()))?;
    let y = pe.add_to(&x, rows.offset)?;
    let table = pe.table(rows.max_positions, 0)?;
    run.report_mut()
        .check(bundle, Namespace::Param, "pe", &table, Tolerance::default());
    run.check_outputs_and_gradients(&[("0", &y)])?;
    Ok(run.finish())
}

/// Marian's `[sin | cos]` table: the rows for the offset positions (its activation
/// is `[seq, dim]`, without the batch dimension) and the whole stored table.
fn sinusoidal_marian(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Table {
        num_positions: usize,
        cache_length: usize,
    }
    impl ConfigCheck for Table {
        fn validate(&self) -> std::result::Result<(), String> {
            positive("num_positions", self.num_positions)
        }

        fn footprint(&self, work: &Workload) -> Footprint {
            whole_table("num_positions", self.num_positions, work)
        }
    }
    let (config, table): (SinusoidalConfig, Table) = bundle.config_parts(&[])?;
    let mut run = Parity::new(bundle)?;
    let x = run.input("0")?;
    let vb = vb_from_params(&run, DType::F32, x.device());
    let pe = SinusoidalPositionEmbedding::new(&config, vb.pp("embed_positions"))?;
    let offset = table.cache_length;
    // Marian's module returns its rows without the batch dimension the block's output has.
    let marian = TraceMap::new().transform(r"^embed_positions$", |rows| rows.squeeze(0));
    let y = trace::mapped(&marian, || pe.add_to(&x, offset))?;
    let rows = pe.forward(x.dim(1)?, offset)?.squeeze(0)?;
    run.check_activations(&[("embed_positions", &rows)]);
    let table = pe.table(table.num_positions, 0)?;
    let weight = Tolerance::default();
    run.report_mut()
        .check(bundle, Namespace::Param, "embed_positions.weight", &table, weight);
    run.check_outputs_and_gradients(&[("0", &y)])?;
    Ok(run.finish())
}

/// GPT-2's `wpe` rows for positions `past_length ..`, added to the input.
fn learned_position(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Past {
        past_length: usize,
    }
    sizeless_config!(Past);
    let (config, past): (LearnedPositionConfig, Past) = bundle.config_parts(&[])?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| LearnedPositionEmbedding::new(&config, vb.pp("wpe")),
        |wpe, x| wpe.add_to(x, past.past_length),
    )
}

// -------------------------------------------------------------------- ALiBi

/// Attention biased by ALiBi (6 heads: not a power of two), causal when the config
/// says so; the slopes are the second output.
fn alibi(bundle: &Bundle) -> Result<Report> {
    #[derive(Deserialize)]
    struct Mask {
        #[serde(default)]
        causal: bool,
    }
    sizeless_config!(Mask);
    let (config, mask): (AlibiConfig, Mask) = bundle.config_parts(&[])?;
    BlockCheck::new(bundle)
        .inputs(&["0", "1", "2"])
        .outputs(&["0", "1"])
        .run(
            |vb| Alibi::new(&config, vb.device()),
            |alibi, qkv| {
                let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
                let bias = alibi.bias(q.dim(2)?, k.dim(2)?, 0, DType::F32)?;
                let options = SdpaOptions {
                    causal: mask.causal,
                    ..SdpaOptions::default()
                };
                let y = scaled_dot_product_attention(q, k, v, Some(&bias), &options)?;
                Ok(vec![y, alibi.slopes().clone()])
            },
        )
}
