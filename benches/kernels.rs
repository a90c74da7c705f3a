//! The replica-kernels CPU kernels against candle's built-in fused ops and the
//! plain candle composition, at the shapes of real models, in one run, with 1
//! and 2 rayon threads. python/bench_torch.py times PyTorch at the same shapes
//! and python/benchmarks_md.py joins both into BENCHMARKS.md.
//!
//!     cargo bench --bench kernels -- --warm-up-time 1 --measurement-time 2
//!
//! candle 0.11 runs its element-wise ops (in `candle` and `composed`) on a thread pool
//! of its own, sized once per process by `CANDLE_NUM_THREADS` (default: the physical
//! cores), not by the rayon pool; to pin those too, run each thread count in its own
//! process: `CANDLE_NUM_THREADS=1 cargo bench --bench kernels -- '_1t/'`, then `=2` and `'_2t/'`.
//!
//! Benchmark ids are `<kernel>/<impl>_<threads>t/<shape>`; `impl` is `replica`,
//! `candle` (candle's built-in, where one exists), `composed` (the plain candle
//! composition) or `copy` (a copy of the same traffic into a reused buffer, mostly
//! in cache at these sizes), and the group `memory_bandwidth` copies 128 MiB, beyond the
//! caches, to measure the machine's memory bandwidth. Keep the shapes in step with
//! python/bench_torch.py.
//! An implementation whose one call at a shape takes over `SLOW_CALL` is left out
//! of criterion there and its one-call time goes to `<criterion dir>/skipped.json`.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor, D};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use replica_kernels::{self as rk, reference, AttentionOptions, Causal, Mask, RopeStyle};

mod common;
use common::{pools, Op};

fn randn(dims: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, dims, &Device::Cpu).expect("random tensor")
}

/// Benchmarks each `(impl, op)` at `shape` under each thread count, plus a copy of
/// `traffic_bytes / 2` bytes (reading and writing `traffic_bytes` in all) when given.
fn run_shape(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pools: &[(usize, rayon::ThreadPool)],
    shape: &str,
    ops: &[(&str, Op<'_>)],
    traffic_bytes: Option<usize>,
) {
    for (threads, pool) in pools {
        for (name, op) in ops {
            group.bench_function(BenchmarkId::new(format!("{name}_{threads}t"), shape), |b| {
                pool.install(|| b.iter(|| black_box(op().expect("the op runs"))))
            });
        }
    }
    if let Some(bytes) = traffic_bytes {
        bench_copy(group, pools, shape, bytes);
    }
}

/// A copy reading and writing `traffic_bytes` in all, into a buffer reused across
/// iterations, with `Throughput::Bytes` so that BENCHMARKS.md knows the traffic.
fn bench_copy(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pools: &[(usize, rayon::ThreadPool)],
    shape: &str,
    traffic_bytes: usize,
) {
    use rayon::prelude::*;
    group.throughput(Throughput::Bytes(traffic_bytes as u64));
    let src = vec![1f32; traffic_bytes / 8];
    let mut dst = vec![0f32; src.len()];
    for (threads, pool) in pools {
        group.bench_function(BenchmarkId::new(format!("copy_{threads}t"), shape), |b| {
            pool.install(|| {
                b.iter(|| {
                    // Split as the kernels split their rows.
                    let chunk = src.len().div_ceil(*threads);
                    dst.par_chunks_mut(chunk)
                        .zip(src.par_chunks(chunk))
                        .for_each(|(d, s)| d.copy_from_slice(s));
                    black_box(&dst);
                })
            })
        });
    }
}

/// The machine's memory bandwidth: a copy of 128 MiB, four times the L3 cache, so
/// that it streams from and to DRAM. BENCHMARKS.md rates memory-bound kernels by it.
fn bench_memory_bandwidth(c: &mut Criterion) {
    let pools = pools();
    let mut group = c.benchmark_group("memory_bandwidth");
    bench_copy(&mut group, &pools, "copy_128MiB", 2 * (128 << 20));
    group.finish();
}

fn elements(dims: &[usize]) -> usize {
    dims.iter().product()
}

fn bench_softmax(c: &mut Criterion) {
    let pools = pools();
    let mut group = c.benchmark_group("softmax");
    for (shape, dims) in [
        ("bert-base_b8_s128", &[8, 12, 128, 128][..]),
        ("gpt2_b1_s1024", &[1, 12, 1024, 1024]),
        ("rows_64x4096", &[64, 4096]),
    ] {
        let x = randn(dims);
        let n = elements(dims);
        group.throughput(Throughput::Elements(n as u64));
        let mut ops: Vec<(&str, Op)> = vec![
            ("replica", Box::new(|| rk::softmax_last_dim(&x, 1.0, Mask::None))),
            ("candle", Box::new(|| candle_nn::ops::softmax_last_dim(&x))),
            ("composed", Box::new(|| candle_nn::ops::softmax(&x, D::Minus1))),
        ];
        if n * 4 >= 4 << 20 {
            // The cost of faulting in a fresh output 4 KiB at a time (docs/kernels.md).
            ops.push((
                "replica-4k-pages",
                Box::new(|| {
                    rk::set_huge_pages(false);
                    let y = rk::softmax_last_dim(&x, 1.0, Mask::None);
                    rk::set_huge_pages(true);
                    y
                }),
            ));
        }
        run_shape(&mut group, &pools, shape, &ops, Some(8 * n));
    }
    group.finish();

    // Scaled, causal attention scores: fused in replica; candle adds the mask first.
    let mut group = c.benchmark_group("softmax_scale_causal");
    let (shape, dims) = ("gpt2_b1_s1024", [1usize, 12, 1024, 1024]);
    let x = randn(&dims);
    let mask = reference::causal_mask(1024, 1024, Causal::BottomRight, DType::F32, &Device::Cpu).unwrap();
    let scale = 0.125;
    group.throughput(Throughput::Elements(elements(&dims) as u64));
    let ops: Vec<(&str, Op)> = vec![
        (
            "replica",
            Box::new(|| rk::softmax_last_dim(&x, scale, Mask::Causal(Causal::BottomRight))),
        ),
        (
            "candle",
            Box::new(|| candle_nn::ops::softmax_last_dim(&(&x * scale)?.broadcast_add(&mask)?)),
        ),
        (
            "composed",
            Box::new(|| candle_nn::ops::softmax(&(&x * scale)?.broadcast_add(&mask)?, D::Minus1)),
        ),
    ];
    run_shape(&mut group, &pools, shape, &ops, Some(8 * elements(&dims)));
    group.finish();
}

fn bench_norms(c: &mut Criterion) {
    let pools = pools();
    let mut group = c.benchmark_group("layer_norm");
    for (shape, dims) in [
        ("minilm_b8_s128", [8usize, 128, 384]),
        ("bert-base_b8_s128", [8, 128, 768]),
        ("gpt2_b1_s1024", [1, 1024, 768]),
    ] {
        let x = randn(&dims);
        let w = randn(&dims[2..]);
        let b = randn(&dims[2..]);
        group.throughput(Throughput::Elements(elements(&dims) as u64));
        let ops: Vec<(&str, Op)> = vec![
            ("replica", Box::new(|| rk::layer_norm(&x, &w, Some(&b), 1e-5))),
            ("candle", Box::new(|| candle_nn::ops::layer_norm(&x, &w, &b, 1e-5))),
            ("composed", Box::new(|| reference::layer_norm(&x, &w, Some(&b), 1e-5))),
        ];
        run_shape(&mut group, &pools, shape, &ops, Some(8 * elements(&dims)));
    }
    group.finish();

    let mut group = c.benchmark_group("rms_norm");
    for (shape, dims) in [
        ("llama-7b_b1_s128", [1usize, 128, 4096]),
        ("llama-7b_b1_s2048", [1, 2048, 4096]),
    ] {
        let x = randn(&dims);
        let w = randn(&dims[2..]);
        group.throughput(Throughput::Elements(elements(&dims) as u64));
        let ops: Vec<(&str, Op)> = vec![
            ("replica", Box::new(|| rk::rms_norm(&x, &w, 1e-6))),
            ("candle", Box::new(|| candle_nn::ops::rms_norm(&x, &w, 1e-6))),
            ("composed", Box::new(|| reference::rms_norm(&x, &w, 1e-6))),
        ];
        run_shape(&mut group, &pools, shape, &ops, Some(8 * elements(&dims)));
    }
    group.finish();
}

fn bench_activations(c: &mut Criterion) {
    let pools = pools();
    let mut unary = |name: &str,
                     shapes: &[(&str, [usize; 3])],
                     kernel: fn(&Tensor) -> candle_core::Result<Tensor>,
                     candle: fn(&Tensor) -> candle_core::Result<Tensor>,
                     composed: fn(&Tensor) -> candle_core::Result<Tensor>| {
        let mut group = c.benchmark_group(name);
        for (shape, dims) in shapes {
            let x = randn(dims);
            group.throughput(Throughput::Elements(elements(dims) as u64));
            let ops: Vec<(&str, Op)> = vec![
                ("replica", Box::new(|| kernel(&x))),
                ("candle", Box::new(|| candle(&x))),
                ("composed", Box::new(|| composed(&x))),
            ];
            run_shape(&mut group, &pools, shape, &ops, Some(8 * elements(dims)));
        }
        group.finish();
    };
    unary(
        "gelu_erf",
        &[
            ("minilm_b8_s128", [8, 128, 1536]),
            ("bert-base_b8_s128", [8, 128, 3072]),
        ],
        rk::gelu_erf,
        Tensor::gelu_erf,
        reference::gelu_erf,
    );
    unary(
        "gelu_tanh",
        &[("gpt2_b1_s1024", [1, 1024, 3072])],
        rk::gelu_tanh,
        Tensor::gelu,
        reference::gelu_tanh,
    );
    unary(
        "silu",
        &[("llama-7b_b1_s128", [1, 128, 11008])],
        rk::silu,
        Tensor::silu,
        reference::silu,
    );

    let mut group = c.benchmark_group("swiglu");
    let (shape, dims) = ("llama-7b_b1_s128", [1usize, 128, 11008]);
    let (gate, up) = (randn(&dims), randn(&dims));
    group.throughput(Throughput::Elements(elements(&dims) as u64));
    let ops: Vec<(&str, Op)> = vec![
        ("replica", Box::new(|| rk::swiglu(&gate, &up))),
        ("candle", Box::new(|| gate.silu()? * &up)),
        ("composed", Box::new(|| reference::swiglu(&gate, &up))),
    ];
    run_shape(&mut group, &pools, shape, &ops, Some(12 * elements(&dims)));
    group.finish();
}

fn bench_rope(c: &mut Criterion) {
    let pools = pools();
    let (shape, dims) = ("llama-7b_b1_s512", [1usize, 32, 512, 128]);
    let x = randn(&dims);
    let angles = randn(&[512, 64]);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    for (name, style) in [
        ("rope_half_split", RopeStyle::HalfSplit),
        ("rope_interleaved", RopeStyle::Interleaved),
    ] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(elements(&dims) as u64));
        let candle: Op = match style {
            RopeStyle::HalfSplit => Box::new(|| candle_nn::rotary_emb::rope(&x, &cos, &sin)),
            RopeStyle::Interleaved => Box::new(|| candle_nn::rotary_emb::rope_i(&x, &cos, &sin)),
        };
        let ops: Vec<(&str, Op)> = vec![
            ("replica", Box::new(|| rk::rope(&x, &cos, &sin, style))),
            ("candle", candle),
            ("composed", Box::new(|| reference::rope(&x, &cos, &sin, style))),
        ];
        run_shape(&mut group, &pools, shape, &ops, Some(8 * elements(&dims)));
        group.finish();
    }
}

/// Random `q, k, v` of shape `[b, h, s, d]`, the kernel's options, and candle's CPU
/// flash attention on the same inputs (which takes `[b, s, h, d]`); sets the group's
/// throughput to the flops of the two products over the visible scores.
fn attention_case(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    [b, h, s, d]: [usize; 4],
    causal: bool,
) -> ([Tensor; 3], AttentionOptions<'static>, Op<'static>) {
    let qkv = [randn(&[b, h, s, d]), randn(&[b, h, s, d]), randn(&[b, h, s, d])];
    let bshd = |t: &Tensor| t.transpose(1, 2).unwrap().contiguous().unwrap();
    let (qt, kt, vt) = (bshd(&qkv[0]), bshd(&qkv[1]), bshd(&qkv[2]));
    let options = AttentionOptions {
        causal: causal.then_some(Causal::BottomRight),
        ..Default::default()
    };
    let visible = if causal { s * (s + 1) / 2 } else { s * s };
    group.throughput(Throughput::Elements((4 * b * h * visible * d) as u64));
    let mask = if causal {
        candle_nn::attention::AttnMask::causal()
    } else {
        candle_nn::attention::AttnMask::None
    };
    let scale = 1.0 / (d as f32).sqrt();
    let candle: Op =
        Box::new(move || candle_nn::attention::flash_attn::<f32>(&qt, &kt, &vt, scale, mask.clone(), None, None));
    (qkv, options, candle)
}

fn bench_attention(c: &mut Criterion) {
    let pools = pools();
    let mut group = c.benchmark_group("attention");
    for (shape, dims, causal) in [
        ("bert-base_b8_s128", [8usize, 12, 128, 64], false),
        ("gpt2_b1_s1024_causal", [1, 12, 1024, 64], true),
        ("llama-7b_b1_s512_causal", [1, 32, 512, 128], true),
    ] {
        let ([q, k, v], options, candle) = attention_case(&mut group, dims, causal);
        let ops: Vec<(&str, Op)> = vec![
            ("replica", Box::new(|| rk::attention(&q, &k, &v, &options))),
            ("candle", candle),
            ("composed", Box::new(|| reference::attention(&q, &k, &v, &options))),
        ];
        run_shape(&mut group, &pools, shape, &ops, None);
    }
    group.finish();

    // The prefill target: batch 1, 12 heads, head dim 64, 512 and 2048 tokens.
    let mut group = c.benchmark_group("attention_prefill");
    for (shape, s, causal) in [
        ("b1_h12_d64_s512", 512usize, false),
        ("b1_h12_d64_s512_causal", 512, true),
        ("b1_h12_d64_s2048", 2048, false),
        ("b1_h12_d64_s2048_causal", 2048, true),
    ] {
        let ([q, k, v], options, candle) = attention_case(&mut group, [1, 12, s, 64], causal);
        let mut ops: Vec<(&str, Op)> = vec![
            ("replica", Box::new(|| rk::attention(&q, &k, &v, &options))),
            ("composed", Box::new(|| reference::attention(&q, &k, &v, &options))),
        ];
        // candle's CPU flash attention is timed only where one call takes under
        // SLOW_CALL; otherwise one timed call is recorded for BENCHMARKS.md instead.
        if s < 2048 || keep_slow_op(&pools[0].1, "attention_prefill", "candle", shape, &candle) {
            ops.insert(1, ("candle", candle));
        }
        run_shape(&mut group, &pools, shape, &ops, None);
    }
    group.finish();

    // Training: forward and backward of the fused kernel against the composition.
    let mut group = c.benchmark_group("attention_fwd_bwd");
    let (shape, [b, h, s, d]) = ("gpt2_b1_s1024_causal", [1usize, 12, 1024, 64]);
    let vars: Vec<candle_core::Var> = (0..3)
        .map(|_| candle_core::Var::from_tensor(&randn(&[b, h, s, d])).unwrap())
        .collect();
    let (q, k, v) = (vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
    let options = AttentionOptions {
        causal: Some(Causal::BottomRight),
        ..Default::default()
    };
    group.throughput(Throughput::Elements((4 * 3 * b * h * (s * (s + 1) / 2) * d) as u64));
    let fwd_bwd = |f: fn(&Tensor, &Tensor, &Tensor, &AttentionOptions) -> candle_core::Result<Tensor>| -> Op {
        Box::new(move || {
            // The loss is summed in memory order: the fused kernel's output is a
            // [b, h, s, d] view of a [b, s, h, d] buffer (the layout the models take
            // next); summing the view as it stands would time candle's strided reduction.
            let y = f(q, k, v, &options)?;
            let y = if y.is_contiguous() { y } else { y.transpose(1, 2)? };
            let grads = y.sum_all()?.backward()?;
            Ok(grads.get(q).expect("dq").clone())
        })
    };
    let ops: Vec<(&str, Op)> = vec![
        ("replica", fwd_bwd(rk::attention)),
        ("composed", fwd_bwd(reference::attention)),
    ];
    run_shape(&mut group, &pools, shape, &ops, None);
    group.finish();
}

/// Above this time per call, an implementation is left out of a shape's criterion
/// run (ten samples of it would take minutes).
const SLOW_CALL: Duration = Duration::from_secs(2);

/// Times one call of `op` on a 1-thread pool; when it takes longer than
/// [`SLOW_CALL`], records that time in `<criterion dir>/skipped.json` (which
/// python/benchmarks_md.py shows in place of the criterion row) and returns false.
fn keep_slow_op(pool: &rayon::ThreadPool, group: &str, name: &str, shape: &str, op: &Op<'_>) -> bool {
    let start = std::time::Instant::now();
    pool.install(|| black_box(op().expect("the op runs")));
    let seconds = start.elapsed().as_secs_f64();
    if seconds < SLOW_CALL.as_secs_f64() {
        return true;
    }
    println!("{group}/{name}/{shape}: one call took {seconds:.1} s (over {SLOW_CALL:?}): not run under criterion");
    let path = common::criterion_dir().join("skipped.json");
    let mut skipped: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    skipped.retain(|r| !(r["group"] == group && r["impl"] == name && r["shape"] == shape));
    let unix_seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    skipped.push(serde_json::json!({
        "group": group, "impl": name, "shape": shape, "threads": 1,
        "one_call_seconds": seconds, "limit_seconds": SLOW_CALL.as_secs_f64(), "unix_time": unix_seconds,
    }));
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("the criterion folder");
    std::fs::write(&path, serde_json::to_string_pretty(&skipped).expect("JSON")).expect("skipped.json");
    false
}

fn bench_matmul(c: &mut Criterion) {
    let pools = pools();
    let mut group = c.benchmark_group("matmul");
    for (shape, [m, k, n]) in [
        ("minilm_ffn_b8_s128", [1024usize, 384, 1536]),
        ("bert-base_ffn_b8_s128", [1024, 768, 3072]),
        ("llama-7b_proj_s128", [128, 4096, 4096]),
    ] {
        let (a, b) = (randn(&[m, k]), randn(&[k, n]));
        // replica's product is a linear layer's: the same matrix as a weight [n, k].
        let weight = b.t().unwrap().contiguous().unwrap();
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let ops: Vec<(&str, Op)> = vec![
            ("replica", Box::new(|| rk::linear(&a, &weight, None))),
            ("candle", Box::new(|| a.matmul(&b))),
        ];
        run_shape(&mut group, &pools, shape, &ops, None);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config(Duration::from_secs(2));
    targets = bench_softmax, bench_norms, bench_activations, bench_rope, bench_attention, bench_matmul, bench_memory_bandwidth
}
criterion_main!(benches);
