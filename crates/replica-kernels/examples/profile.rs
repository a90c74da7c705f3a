//! Runs one kernel in a loop, for `perf record`:
//!
//!     cargo run --release -p replica-kernels --example profile -- softmax 200
use std::time::Instant;

use candle_core::{Device, Tensor};
use replica_kernels::{self as rk, AttentionOptions, Causal, Mask};

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("softmax");
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (8, 12, 128, 128), &dev)?;
    let h = Tensor::randn(0f32, 1.0, (8, 128, 768), &dev)?;
    let w = Tensor::randn(0f32, 1.0, 768, &dev)?;
    let small = Tensor::randn(0f32, 1.0, (8, 1024), &dev)?;
    let q = Tensor::randn(0f32, 1.0, (1, 12, 1024, 64), &dev)?;
    let qb = Tensor::randn(0f32, 1.0, (8, 12, 128, 64), &dev)?;
    let scores = Tensor::randn(0f32, 1.0, (1, 12, 1024, 1024), &dev)?;
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    for _ in 0..iters {
        let y = match which {
            "softmax" => rk::softmax_last_dim(&x, 1.0, Mask::None)?,
            "layer_norm" => rk::layer_norm(&h, &w, Some(&w), 1e-5)?,
            "gelu_erf" => rk::gelu_erf(&h)?,
            "gelu_erf_small" => rk::gelu_erf(&small)?,
            "silu_small" => rk::silu(&small)?,
            "gelu_tanh" => rk::gelu_tanh(&h)?,
            "silu" => rk::silu(&h)?,
            "attention" => rk::attention(
                &q,
                &q,
                &q,
                &AttentionOptions {
                    causal: Some(Causal::BottomRight),
                    ..Default::default()
                },
            )?,
            "attention_bert" => rk::attention(&qb, &qb, &qb, &AttentionOptions::default())?,
            "attention_bert_composed" => rk::reference::attention(&qb, &qb, &qb, &AttentionOptions::default())?,
            "softmax_gpt2" => rk::softmax_last_dim(&scores, 1.0, Mask::None)?,
            "candle_softmax_gpt2" => candle_nn::ops::softmax_last_dim(&scores)?,
            other => candle_core::bail!("unknown kernel {other}"),
        };
        std::hint::black_box(y);
    }
    let cpu = (thread_cpu_ns() - cpu_start) as f64 / 1e6 / iters as f64;
    println!(
        "{which}: {:.3} ms per call (wall), {cpu:.3} ms on the CPU",
        start.elapsed().as_secs_f64() * 1e3 / iters as f64
    );
    Ok(())
}

/// Nanoseconds this thread has run on a CPU (Linux; 0 elsewhere), so that timings
/// on a busy machine count only the time the kernel had a core.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
