//! Whole blocks and the end-to-end all-MiniLM-L6-v2 and GPT-2-small forwards, replica
//! with its kernels (the default) against replica with the plain candle composition
//! (`Compute::Composition`) and, for MiniLM, candle-transformers' BERT (candle-transformers
//! 0.11 has no GPT-2), with 1 and 2 rayon threads. python/bench_torch.py times the PyTorch equivalents under the
//! same ids and python/benchmarks_md.py joins both into BENCHMARKS.md.
//!
//!     CANDLE_NUM_THREADS=1 cargo bench --bench blocks -- '_1t/'
//!     CANDLE_NUM_THREADS=2 cargo bench --bench blocks -- '_2t/'
//!     CANDLE_NUM_THREADS=1 cargo bench --bench blocks -- '^gpt2_forward/replica_1t/'
//!
//! candle 0.11 runs its element-wise ops on a thread pool of its own, sized once per
//! process by `CANDLE_NUM_THREADS` (default: the physical cores) and outside the rayon
//! pool, hence one process per thread count.
//!
//! Benchmark ids are `<group>/<impl>_<threads>t/<shape>`, with `impl` one of
//! `replica` (kernels), `composed` (the composition) and `candle` (candle-transformers).
//! MiniLM's weights come from python/fetch_minilm.py's cache; without them the
//! forward runs on random weights of the same config, and says so.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use replica_blocks::transformer_block::FeedForwardConfig;
use replica_blocks::{
    with_compute, Activation, Attention, AttentionConfig, Compute, Mlp, MlpConfig, TransformerBlock,
    TransformerBlockConfig,
};
use replica_models::{Architecture, Bert, BertConfig, Gpt2Config, LoadCheckpoint, ModelConfig};

mod common;
use common::{pools, Op};

/// Builds `T` on random weights, N(0, 0.02) as BERT and GPT-2 initialise: a first
/// build on a `VarMap` names the parameters and their shapes, the second reads plain
/// tensors, so that inference records no gradient graph.
fn random<T>(build: impl Fn(VarBuilder) -> candle_core::Result<T>) -> (T, HashMap<String, Tensor>) {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).expect("the module builds");
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("the var map")
        .iter()
        .map(|(name, var)| {
            let t = Tensor::randn(0f32, 0.02, var.shape(), &Device::Cpu).expect("random weights");
            (name.clone(), t)
        })
        .collect();
    let module = build(VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu)).expect("the module builds");
    (module, tensors)
}

/// Times each `(impl, op)` under each thread count. `replica` and `candle` run with
/// the kernels in force, `composed` with the composition: `with_compute` is per
/// thread, so it is set inside the pool, on the thread that runs the forward.
fn run(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pools: &[(usize, rayon::ThreadPool)],
    shape: &str,
    ops: &[(&str, Op<'_>)],
) {
    for (threads, pool) in pools {
        for (name, op) in ops {
            let compute = if *name == "composed" {
                Compute::Composition
            } else {
                Compute::Kernels
            };
            group.bench_function(BenchmarkId::new(format!("{name}_{threads}t"), shape), |b| {
                pool.install(|| with_compute(compute, || b.iter(|| black_box(op().expect("the forward runs")))))
            });
        }
    }
}

/// A block shape: the layer's config, its input `[batch, seq, dim]`.
struct BlockShape {
    name: &'static str,
    block: TransformerBlockConfig,
    batch: usize,
    seq: usize,
}

fn block_shapes() -> Vec<BlockShape> {
    // BERT's layer is post-norm with an erf GELU and eps 1e-12, as torch's encoder layer.
    let bert = |dim: usize, hidden: usize| {
        TransformerBlockConfig::torch_encoder(dim, 12, hidden, 0.0, Activation::Gelu, 1e-12, false)
    };
    let mut gpt2 = Gpt2Config::new(50257, 1024, 768, 12, 12);
    (gpt2.attn_pdrop, gpt2.resid_pdrop, gpt2.embd_pdrop) = (0.0, 0.0, 0.0);
    vec![
        BlockShape {
            name: "minilm_b8_s128",
            block: bert(384, 1536),
            batch: 8,
            seq: 128,
        },
        BlockShape {
            name: "bert-base_b8_s128",
            block: bert(768, 3072),
            batch: 8,
            seq: 128,
        },
        BlockShape {
            name: "gpt2_b1_s1024",
            block: gpt2.block_config(),
            batch: 1,
            seq: 1024,
        },
    ]
}

fn bench_blocks(c: &mut Criterion) {
    let pools = pools();
    for shape in block_shapes() {
        let x = Tensor::randn(0f32, 1.0, (shape.batch, shape.seq, shape.block.dim), &Device::Cpu).unwrap();
        let attention: AttentionConfig = shape.block.attention.clone();
        let (attention, _) = random(|vb| Attention::new(&attention, vb));
        let mlp: MlpConfig = match &shape.block.feed_forward {
            FeedForwardConfig::Mlp(mlp) => mlp.clone(),
            _ => unreachable!("these blocks have plain MLPs"),
        };
        let (mlp, _) = random(|vb| Mlp::new(&mlp, vb));
        let (block, _) = random(|vb| TransformerBlock::new(&shape.block, vb));

        for (group_name, op) in [
            ("block_attention", Box::new(|| attention.forward(&x, None, None)) as Op),
            ("block_mlp", Box::new(|| mlp.forward(&x))),
            ("block_transformer", Box::new(|| block.forward(&x, None, None))),
        ] {
            let mut group = c.benchmark_group(group_name);
            // The same op twice: `run` sets the kernels or the composition by name.
            let ops: Vec<(&str, Op)> = vec![("replica", Box::new(&op)), ("composed", Box::new(&op))];
            run(&mut group, &pools, shape.name, &ops);
            group.finish();
        }
    }
}

/// all-MiniLM-L6-v2's config.json, as the model ships it (used when it is not cached).
fn minilm_config_fallback() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02, "intermediate_size": 1536,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
        "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute", "type_vocab_size": 2,
        "vocab_size": 30522
    })
}

/// The replica and candle-transformers BERTs on the cached weights, or on the same
/// random weights when the model is not cached.
fn minilm_models() -> (Bert, candle_transformers::models::bert::BertModel) {
    let dir = replica_suite::minilm::minilm_dir();
    let weights = dir.join("model.safetensors");
    let config_path = dir.join("config.json");
    let config: serde_json::Value = if config_path.is_file() {
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap()
    } else {
        minilm_config_fallback()
    };
    let replica_config = BertConfig::from_value(&config, Path::new("all-MiniLM-L6-v2 config")).unwrap();
    let candle_config: candle_transformers::models::bert::Config = serde_json::from_value(config).unwrap();
    let (replica, tensors) = if weights.is_file() {
        println!("all-MiniLM-L6-v2: real weights from {}", weights.display());
        let replica = Bert::load(&replica_config, &weights, DType::F32, &Device::Cpu).unwrap();
        (replica, candle_core::safetensors::load(&weights, &Device::Cpu).unwrap())
    } else {
        println!(
            "all-MiniLM-L6-v2: {} is missing (python3 python/fetch_minilm.py fetches it); \
             timing RANDOM weights of the same config",
            weights.display()
        );
        random(|vb| Bert::new(&replica_config, vb))
    };
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let candle = candle_transformers::models::bert::BertModel::load(vb, &candle_config).unwrap();
    (replica, candle)
}

/// Token ids of a fixed pattern, the same as python/bench_torch.py's:
/// `[CLS] w... [SEP]` with `w = 1000 + (131·b + 17·i) mod 20000`.
fn token_ids(batch: usize, seq: usize) -> Tensor {
    let ids: Vec<u32> = (0..batch)
        .flat_map(|b| {
            (0..seq).map(move |i| match i {
                0 => 101,
                i if i == seq - 1 => 102,
                i => 1000 + ((131 * b + 17 * i) % 20000) as u32,
            })
        })
        .collect();
    Tensor::from_vec(ids, (batch, seq), &Device::Cpu).unwrap()
}

fn bench_minilm(c: &mut Criterion) {
    let pools = pools();
    let (replica, candle) = minilm_models();
    let mut group = c.benchmark_group("minilm_forward");
    for (shape, batch, seq) in [("b8_s128", 8, 128), ("b1_s128", 1, 128)] {
        let ids = token_ids(batch, seq);
        let types = ids.zeros_like().unwrap();
        let mask = ids.ones_like().unwrap();
        // The last hidden state; replica's (and HF's) BertModel also runs its small pooler.
        let replica_forward = || Ok(replica.forward(&ids, Some(&types), Some(&mask))?.last_hidden_state);
        // The two BERTs must compute the same thing on the same weights for the times to compare.
        let gap = (replica_forward().unwrap() - candle.forward(&ids, &types, Some(&mask)).unwrap())
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .unwrap();
        println!("minilm_forward/{shape}: max |replica - candle-transformers| = {gap:.2e}");
        let ops: Vec<(&str, Op)> = vec![
            ("replica", Box::new(replica_forward)),
            ("composed", Box::new(replica_forward)),
            ("candle", Box::new(|| candle.forward(&ids, &types, Some(&mask)))),
        ];
        run(&mut group, &pools, shape, &ops);
    }
    group.finish();
}

/// GPT-2 small (HF's `GPT2Config()` defaults: 12 layers, 768 wide, 12 heads) on random
/// weights, the last hidden state of batch 1 (no LM head), as python/bench_torch.py's
/// `GPT2Model` forward.
fn bench_gpt2(c: &mut Criterion) {
    let pools = pools();
    let config = Gpt2Config::new(50257, 1024, 768, 12, 12);
    let (model, _) = random(|vb| replica_models::Gpt2::new(&config, vb));
    let mut group = c.benchmark_group("gpt2_forward");
    for (shape, seq) in [("b1_s128", 128), ("b1_s1024", 1024)] {
        let ids = token_ids(1, seq);
        let forward = || model.forward_hidden(&ids, None);
        // The kernels only: one s1024 call takes seconds, and the composition is timed per block above.
        let ops: Vec<(&str, Op)> = vec![("replica", Box::new(forward))];
        run(&mut group, &pools, shape, &ops);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config(Duration::from_secs(3));
    targets = bench_blocks, bench_minilm, bench_gpt2
}
criterion_main!(benches);
