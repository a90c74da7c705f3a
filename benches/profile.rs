//! A small driver for profilers (callgrind, perf): runs one benchmarked op a few
//! times, with the inputs of benches/kernels.rs and benches/blocks.rs, and nothing
//! else. `RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1` gives the 1-thread rows' setting.
//!
//!     cargo bench --bench profile --no-run
//!     RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1 valgrind --tool=callgrind target/release/deps/profile-<hash> attention-bert 2
//!
//! Cases: `attention-bert` (replica kernel, BERT-base b8 s128), `attention-bert-composed`,
//! `softmax-gpt2` (replica kernel, GPT-2 b1 s1024 scores), `softmax-gpt2-candle`,
//! `attention-prefill-512` and `attention-prefill-2048` (replica kernel, b1 h12 d64 s512 and s2048), `attention-fwd-bwd-1024`
//! (replica kernel's forward and backward, GPT-2 b1 s1024 causal), `minilm-b8`, `minilm-b1`
//! (replica's BERT on all-MiniLM-L6-v2, random weights when the model is not cached),
//! `minilm-b8-candle`, `minilm-b1-candle` (candle-transformers' BERT, cached weights only),
//! `linear-gpt2-128`, `linear-llama-128` (replica's linear kernel with bias at 128 rows),
//! `softmax-bert`, `layer-norm-bert`, `gelu-erf-bert`, `gelu-tanh-bert`, `silu-bert`
//! (replica kernels on BERT-base b8 s128 scores and hidden states), each optionally
//! followed by a repeat count (default 3). A training step is profiled through
//! benches/training.rs itself (`REPLICA_TRAINING_STEPS`).

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use replica_kernels::{self as rk, reference, AttentionOptions, Mask};
use replica_models::{Architecture, LoadCheckpoint, ModelConfig};

fn randn(dims: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, dims, &Device::Cpu).expect("random tensor")
}

fn minilm() -> replica_models::Bert {
    let dir = replica_suite::minilm::minilm_dir();
    let config = replica_models::BertConfig::from_file(dir.join("config.json"));
    match config {
        Ok(config) if dir.join("model.safetensors").is_file() => {
            replica_models::Bert::load(&config, dir.join("model.safetensors"), DType::F32, &Device::Cpu).unwrap()
        }
        _ => {
            eprintln!("all-MiniLM-L6-v2 is not cached: profiling random weights of its size");
            let config = replica_models::registry::preset("all-MiniLM-L6-v2").unwrap().config();
            let config = replica_models::BertConfig::from_value(&config, "preset").unwrap();
            let varmap = candle_nn::VarMap::new();
            let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            replica_models::Bert::new(&config, vb).unwrap()
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the case and the count are the other arguments.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let case = args.first().map(String::as_str).unwrap_or("attention-bert");
    let repeats: usize = args.get(1).map_or(3, |n| n.parse().expect("a repeat count"));
    let op: Box<dyn Fn() -> candle_core::Result<Tensor>> = match case {
        "attention-bert" | "attention-bert-composed" | "attention-prefill-512" | "attention-prefill-2048" => {
            let dims = match case {
                "attention-prefill-512" => [1, 12, 512, 64],
                "attention-prefill-2048" => [1, 12, 2048, 64],
                _ => [8, 12, 128, 64],
            };
            let (q, k, v) = (randn(&dims), randn(&dims), randn(&dims));
            let options = AttentionOptions::default();
            if case == "attention-bert-composed" {
                Box::new(move || reference::attention(&q, &k, &v, &options))
            } else {
                Box::new(move || rk::attention(&q, &k, &v, &options))
            }
        }
        "attention-fwd-bwd-1024" => {
            let var = |t: Tensor| candle_core::Var::from_tensor(&t).unwrap();
            let dims = [1, 12, 1024, 64];
            let (q, k, v) = (var(randn(&dims)), var(randn(&dims)), var(randn(&dims)));
            let options = AttentionOptions {
                causal: Some(rk::Causal::BottomRight),
                ..Default::default()
            };
            Box::new(move || {
                let grads = rk::attention(&q, &k, &v, &options)?
                    .transpose(1, 2)?
                    .sum_all()?
                    .backward()?;
                Ok(grads.get(&q).expect("dq").clone())
            })
        }
        "softmax-bert" | "layer-norm-bert" | "gelu-erf-bert" | "gelu-tanh-bert" | "silu-bert" => {
            // BERT-base b8 s128: the attention scores, the hidden states.
            let (scores, h, w) = (randn(&[8, 12, 128, 128]), randn(&[8, 128, 768]), randn(&[768]));
            match case {
                "softmax-bert" => Box::new(move || rk::softmax_last_dim(&scores, 1.0, Mask::None)),
                "layer-norm-bert" => Box::new(move || rk::layer_norm(&h, &w, Some(&w), 1e-5)),
                "gelu-erf-bert" => Box::new(move || rk::gelu_erf(&h)),
                "gelu-tanh-bert" => Box::new(move || rk::gelu_tanh(&h)),
                _ => Box::new(move || rk::silu(&h)),
            }
        }
        "softmax-gpt2" => {
            let x = randn(&[1, 12, 1024, 1024]);
            Box::new(move || rk::softmax_last_dim(&x, 1.0, Mask::None))
        }
        "softmax-gpt2-candle" => {
            let x = randn(&[1, 12, 1024, 1024]);
            Box::new(move || candle_nn::ops::softmax_last_dim(&x))
        }
        "linear-gpt2-128" | "linear-llama-128" => {
            // A few-row linear layer: GPT-2's MLP up-projection, LLaMA-7B's q projection.
            let (k, n) = if case == "linear-gpt2-128" {
                (768, 3072)
            } else {
                (4096, 4096)
            };
            let (x, w, b) = (randn(&[128, k]), randn(&[n, k]), randn(&[n]));
            Box::new(move || rk::linear(&x, &w, Some(&b)))
        }
        "minilm-b8" | "minilm-b1" => {
            let batch = if case == "minilm-b8" { 8 } else { 1 };
            let model = minilm();
            let ids: Vec<u32> = (0..batch * 128).map(|i| 1000 + (i as u32 * 17) % 20000).collect();
            let ids = Tensor::from_vec(ids, (batch, 128), &Device::Cpu).unwrap();
            // As benches/blocks.rs: segment ids zero, attention mask all ones.
            let (types, mask) = (ids.zeros_like().unwrap(), ids.ones_like().unwrap());
            Box::new(move || Ok(model.forward(&ids, Some(&types), Some(&mask))?.last_hidden_state))
        }
        "minilm-b8-candle" | "minilm-b1-candle" => {
            let batch = if case == "minilm-b8-candle" { 8 } else { 1 };
            let dir = replica_suite::minilm::minilm_dir();
            let config = std::fs::read_to_string(dir.join("config.json")).expect("all-MiniLM-L6-v2 is cached");
            let config: candle_transformers::models::bert::Config = serde_json::from_str(&config).unwrap();
            let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
            let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
            let model = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
            let ids: Vec<u32> = (0..batch * 128).map(|i| 1000 + (i as u32 * 17) % 20000).collect();
            let ids = Tensor::from_vec(ids, (batch, 128), &Device::Cpu).unwrap();
            let (types, mask) = (ids.zeros_like().unwrap(), ids.ones_like().unwrap());
            Box::new(move || model.forward(&ids, &types, Some(&mask)))
        }
        other => panic!("unknown case `{other}`; see the cases in benches/profile.rs"),
    };
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = std::time::Instant::now();
            black_box(op().expect("the op runs"));
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    if let (Some(fastest), Some(median)) = (times.first(), times.get(times.len() / 2)) {
        eprintln!("{case}: {repeats} calls, fastest {fastest:.3} ms, median {median:.3} ms");
    }
}
