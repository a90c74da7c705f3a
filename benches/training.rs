//! One training step of examples/mingpt_char.rs's model (GPT-2, 3 layers, 4 heads,
//! 96 wide, context 64, vocabulary 59, dropout 0.1, batches of 16 windows): forward,
//! cross-entropy, backward, gradient-norm clipping to 1 and AdamW (betas 0.9/0.95,
//! weight decay 0.1 on the linear layers' matrices only), with 1 and 2 rayon threads.
//! python/bench_torch.py times the same step of HF's `GPT2LMHeadModel` with
//! `torch.optim.AdamW` under the same id, and python/benchmarks_md.py joins both.
//!
//!     CANDLE_NUM_THREADS=1 cargo bench --bench training -- '_1t/'
//!     CANDLE_NUM_THREADS=2 cargo bench --bench training -- '_2t/'
//!
//! Ids are `training_step/<impl>_<threads>t/mingpt_char`, `impl` one of:
//! - `replica`: [`FusedAdamW::clip_and_step`], the clipping folded into one in-place
//!   update per parameter;
//! - `candle`: candle_nn's `AdamW` (one per weight-decay group) after clipping the
//!   gradients with tensor ops, as the example did before `FusedAdamW`.
//!
//! Like the examples and the other benches, this binary sets glibc's allocator to
//! keep freed memory (`common::keep_freed_pages`): a training step frees and
//! allocates the same tensors every step, and with glibc's defaults many of them
//! come back as fresh pages from the OS, each faulted in and zeroed.
//! `REPLICA_BENCH_MALLOC=default` leaves glibc's defaults, to measure the difference.

use std::hint::black_box;
use std::time::Duration;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use criterion::{BenchmarkId, Criterion};
use replica_blocks::{AdamWConfig, FusedAdamW};
use replica_models::generation::language_model_loss;
use replica_models::{Architecture, Gpt2, Gpt2Config};

#[allow(dead_code)] // `Op` is for the forward-only benchmarks.
mod common;

const VOCAB: usize = 59;
const CONTEXT: usize = 64;
const BATCH: usize = 16;
const SHAPE: &str = "mingpt_char";

/// The optimiser side of a step.
enum Optimiser {
    Fused(FusedAdamW),
    Candle { optimisers: [AdamW; 2], vars: Vec<Var> },
}

struct Trainer {
    model: Gpt2,
    optimiser: Optimiser,
    batches: Vec<(Tensor, Tensor)>,
    next: usize,
}

/// xorshift64*: the same batches every run.
fn ids(state: &mut u64, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % VOCAB as u64) as u32
        })
        .collect()
}

impl Trainer {
    fn new(fused: bool) -> Trainer {
        let device = Device::Cpu;
        let config = Gpt2Config::new(VOCAB, CONTEXT, 96, 3, 4);
        let varmap = VarMap::new();
        let model = Gpt2::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
        Gpt2::init_weights(&varmap, &config).unwrap();
        // minGPT decays only the weight matrices of the linear layers.
        let (mut decayed, mut plain) = (Vec::new(), Vec::new());
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let linear = name.ends_with(".weight") && (name.contains(".attn.") || name.contains(".mlp."));
            if linear { &mut decayed } else { &mut plain }.push(var.clone());
        }
        let (lr, beta1, beta2, eps) = (2e-3, 0.9, 0.95, 1e-8);
        let optimiser = if fused {
            let config = AdamWConfig {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay: 0.1,
            };
            let mut optimiser = FusedAdamW::new(decayed, config).unwrap();
            optimiser.add_param_group(plain, 0.0).unwrap();
            Optimiser::Fused(optimiser)
        } else {
            let params = |weight_decay| ParamsAdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            };
            let vars = decayed.iter().chain(&plain).cloned().collect();
            Optimiser::Candle {
                optimisers: [
                    AdamW::new(decayed, params(0.1)).unwrap(),
                    AdamW::new(plain, params(0.0)).unwrap(),
                ],
                vars,
            }
        };
        let mut state = 0x5eed_u64;
        let batches = (0..8)
            .map(|_| {
                let x = Tensor::from_vec(ids(&mut state, BATCH * CONTEXT), (BATCH, CONTEXT), &device).unwrap();
                let y = Tensor::from_vec(ids(&mut state, BATCH * CONTEXT), (BATCH, CONTEXT), &device).unwrap();
                (x, y)
            })
            .collect();
        Trainer {
            model,
            optimiser,
            batches,
            next: 0,
        }
    }

    /// One step; returns the loss tensor.
    fn step(&mut self) -> candle_core::Result<Tensor> {
        let (x, y) = &self.batches[self.next % self.batches.len()];
        self.next += 1;
        let loss = language_model_loss(&self.model.forward_t(x, true)?, y)?;
        let mut grads = loss.backward()?;
        match &mut self.optimiser {
            Optimiser::Fused(optimiser) => {
                optimiser.clip_and_step(&grads, 1.0)?;
            }
            Optimiser::Candle { optimisers, vars } => {
                clip_grad_norm(&mut grads, vars, 1.0)?;
                for optimiser in optimisers {
                    optimiser.step(&grads)?;
                }
            }
        }
        Ok(loss)
    }
}

/// The example's clipping before `FusedAdamW`: the norm from one tensor reduction per
/// gradient, then every gradient rescaled into a new tensor.
fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> candle_core::Result<f64> {
    let mut squared = 0.0;
    for var in vars {
        if let Some(g) = grads.get(var) {
            squared += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = squared.sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for var in vars {
            if let Some(g) = grads.remove(var) {
                grads.insert(var, (g * scale)?);
            }
        }
    }
    Ok(norm)
}

fn bench_training_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("training_step");
    for (threads, pool) in common::pools() {
        for (name, fused) in [("replica", true), ("candle", false)] {
            let mut trainer = Trainer::new(fused);
            group.bench_function(BenchmarkId::new(format!("{name}_{threads}t"), SHAPE), |b| {
                pool.install(|| b.iter(|| black_box(trainer.step().expect("the step runs"))))
            });
        }
    }
    group.finish();
}

/// CPU time (user, system) in seconds and minor page faults of this process so far.
fn usage() -> (f64, f64, i64) {
    // SAFETY: getrusage writes the struct it is given.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (seconds(r.ru_utime), seconds(r.ru_stime), r.ru_minflt)
}

/// `REPLICA_TRAINING_STEPS=N [REPLICA_TRAINING_IMPL=candle]`: instead of criterion, N
/// steps on the calling thread after 5 of warm-up, with the wall time, the CPU time
/// (user and system) and the page faults per step. On a shared host the CPU time moves
/// less than the wall time; `perf record` can also attach to this mode.
fn cpu_time_run(steps: usize) {
    let fused = std::env::var("REPLICA_TRAINING_IMPL").as_deref() != Ok("candle");
    let mut trainer = Trainer::new(fused);
    for _ in 0..5 {
        trainer.step().expect("the step runs");
    }
    let (user, sys, faults) = usage();
    let started = std::time::Instant::now();
    for _ in 0..steps {
        black_box(trainer.step().expect("the step runs"));
    }
    let wall = started.elapsed().as_secs_f64();
    let (user2, sys2, faults2) = usage();
    let per = |x: f64| 1e3 * x / steps as f64;
    println!(
        "{} x{steps}: wall {:.1} ms/step, CPU user {:.1} + system {:.1} ms/step, {:.0} page faults/step",
        if fused { "replica" } else { "candle" },
        per(wall),
        per(user2 - user),
        per(sys2 - sys),
        (faults2 - faults) as f64 / steps as f64
    );
}

fn main() {
    println!("allocator: {}", common::keep_freed_pages());
    if let Some(steps) = std::env::var("REPLICA_TRAINING_STEPS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        return cpu_time_run(steps);
    }
    let mut criterion = common::config(Duration::from_secs(5));
    bench_training_step(&mut criterion);
    criterion.final_summary();
}
