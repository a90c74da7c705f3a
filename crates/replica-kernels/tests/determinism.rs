//! Determinism of every kernel, forward and backward.
//!
//! - Repeated runs on a rayon pool of the same size give bit-identical outputs
//!   and gradients (1 thread and 2 threads, each checked on its own).
//! - A 1-thread pool and a 2-thread pool agree: outputs and input gradients
//!   within the f32 tolerance of `torch.testing.assert_close` (rtol 1.3e-6,
//!   atol 1e-5). Rows are cut into tasks by thread count, so gradients that sum
//!   over rows (weights, biases, broadcast masks) group the sum differently and
//!   get a wider, stated tolerance (`REDUCTION`): they are not bit-identical
//!   across thread counts, only across repeats.
//! - Every backend this CPU runs (portable, AVX2+FMA, AVX-512) is deterministic,
//!   and they all agree with each other.
//!
//! Every input has at least `2 · MIN_PARALLEL_WORK` elements in at least 64 rows,
//! so in the 2-thread pool each kernel really cuts its rows into several tasks
//! (`tasks_for` in src/cpu.rs splits when rows × cost per row, at least one unit per
//! element, is `>= 2 · MIN_PARALLEL_WORK`).

use std::sync::Mutex;

use candle_core::{Device, Tensor, Var};
use replica_check::{compare, Tolerance};
use replica_kernels::{self as rk, AttentionOptions, Causal, GeluApprox, Mask, RopeStyle, MIN_PARALLEL_WORK};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// `force_backend` is process-wide: tests that run kernels hold this lock so
/// that no test sees the backend switch between two of its runs.
static BACKEND: Mutex<()> = Mutex::new(());

/// Deterministic pseudo-normal values (sum of uniforms), `scale · N(0, 1)`.
fn rand(dims: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32) / (1u64 << 24) as f32
    };
    let data: Vec<f32> = (0..n)
        .map(|_| ((0..4).map(|_| uniform()).sum::<f32>() - 2.0) * 1.732 * scale)
        .collect();
    Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
}

type Op = Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor> + Send + Sync>;

/// A kernel call on fixed inputs; gradients flow to the first `tracked` inputs.
struct Case {
    name: &'static str,
    inputs: Vec<Tensor>,
    tracked: usize,
    op: Op,
}

impl Case {
    fn new(
        name: &'static str,
        inputs: Vec<Tensor>,
        tracked: usize,
        op: impl Fn(&[Tensor]) -> candle_core::Result<Tensor> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            inputs,
            tracked,
            op: Box::new(op),
        }
    }

    /// The output, then the gradient of `Σ output ⊙ upstream` for each tracked input.
    fn run(&self) -> candle_core::Result<Vec<Tensor>> {
        let mut tensors = Vec::new();
        for (i, x) in self.inputs.iter().enumerate() {
            tensors.push(if i < self.tracked {
                Var::from_tensor(x)?.as_tensor().clone()
            } else {
                x.clone()
            });
        }
        let y = (self.op)(&tensors)?;
        let upstream = rand(y.dims(), 99, 1.0);
        let grads = (&y * upstream)?.sum_all()?.backward()?;
        let mut out = vec![y];
        for t in &tensors[..self.tracked] {
            let g = grads.get(t).cloned();
            out.push(g.ok_or_else(|| candle_core::Error::Msg(format!("{}: no gradient", self.name)))?);
        }
        Ok(out)
    }

    /// `run` inside a rayon pool of `threads` threads.
    fn run_on(&self, threads: usize) -> Result<Vec<Tensor>> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        Ok(pool.install(|| self.run())?)
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

fn label(i: usize) -> String {
    if i == 0 {
        "output".into()
    } else {
        format!("grad of input {}", i - 1)
    }
}

fn assert_bit_identical(what: &str, a: &[Tensor], b: &[Tensor]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let (xb, yb) = (bits(x), bits(y));
        if let Some(at) = xb.iter().zip(&yb).position(|(p, q)| p != q) {
            panic!(
                "{what}, {}: not bit-identical at flat index {at}: {:e} vs {:e}",
                label(i),
                f32::from_bits(xb[at]),
                f32::from_bits(yb[at])
            );
        }
        assert_eq!(xb.len(), yb.len(), "{what}, {}: lengths differ", label(i));
    }
}

/// The f32 defaults of `torch.testing.assert_close`.
const F32: Tolerance = Tolerance::new(1.3e-6, 1e-5);
/// For gradients that sum over rows (weights, biases, broadcast masks, shared
/// key/value heads): with 2 threads the rows are summed in per-task groups, so the
/// sum rounds differently. Measured: LayerNorm weight gradients of magnitude ~47
/// (sums of 256 rows) differ by up to 1.9e-5 between 1 and 2 threads, beyond f32's
/// atol of 1e-5 (4.2e-5 with 512 rows); so ten times f32's atol.
const REDUCTION: Tolerance = Tolerance::new(1e-5, 1e-4);

/// 2-thread results against 1-thread ones: outputs and elementwise gradients within
/// [`F32`], gradients of inputs smaller than the output (reductions) within [`REDUCTION`].
fn assert_within_tolerance(what: &str, case: &Case, actual: &[Tensor], expected: &[Tensor]) {
    let mut failures = Vec::new();
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let reduced = i > 0 && case.inputs[i - 1].elem_count() < actual[0].elem_count();
        let (tolerance, name) = if reduced {
            (REDUCTION, "the reduction tolerance (rtol 1e-5, atol 1e-4)")
        } else {
            (F32, "the f32 tolerance (rtol 1.3e-6, atol 1e-5)")
        };
        let c = compare(a, e, tolerance);
        if !c.passed() {
            failures.push(format!("{what}, {}: not within {name}:\n{c}", label(i)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every kernel, with inputs large enough to be split over threads.
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let (b, h, t, n) = (2, 4, 64, 128);
    let scores = rand(&[b, h, t, n], 1, 2.0);
    cases.push(Case::new("softmax", vec![scores.clone()], 1, |x| {
        rk::softmax_last_dim(&x[0], 0.5, Mask::None)
    }));
    cases.push(Case::new("softmax causal bottom-right", vec![scores.clone()], 1, |x| {
        rk::softmax_last_dim(&x[0], 0.5, Mask::Causal(Causal::BottomRight))
    }));
    cases.push(Case::new("softmax causal top-left", vec![scores.clone()], 1, |x| {
        rk::softmax_last_dim(&x[0], 0.5, Mask::Causal(Causal::TopLeft))
    }));
    // A finite additive bias so that its gradient is finite too.
    let bias = rand(&[b, 1, t, n], 2, 1.0);
    cases.push(Case::new("softmax additive mask", vec![scores, bias], 2, |x| {
        rk::softmax_last_dim(&x[0], 0.5, Mask::Additive(&x[1]))
    }));

    let (rows, dim) = (256, 256);
    let x = rand(&[rows, dim], 3, 1.5);
    let w = (rand(&[dim], 4, 0.2) + 1.0).unwrap();
    let bias = rand(&[dim], 5, 0.2);
    cases.push(Case::new("layer_norm", vec![x.clone(), w.clone(), bias], 3, |x| {
        rk::layer_norm(&x[0], &x[1], Some(&x[2]), 1e-5)
    }));
    cases.push(Case::new(
        "layer_norm without bias",
        vec![x.clone(), w.clone()],
        2,
        |x| rk::layer_norm(&x[0], &x[1], None, 1e-5),
    ));
    cases.push(Case::new("rms_norm", vec![x.clone(), w], 2, |x| {
        rk::rms_norm(&x[0], &x[1], 1e-6)
    }));

    // A linear layer: the transposed product (256 rows, the most it takes) and
    // the direct one (gemm's own threads), with a bias.
    let weight = rand(&[2 * dim, dim], 7, 0.1);
    let out_bias = rand(&[2 * dim], 8, 1.0);
    cases.push(Case::new(
        "linear",
        vec![x.clone(), weight.clone(), out_bias.clone()],
        3,
        |x| rk::linear(&x[0], &x[1], Some(&x[2])),
    ));
    let many_rows = rand(&[4 * rows, dim], 9, 1.0);
    cases.push(Case::new(
        "linear, many rows",
        vec![many_rows, weight, out_bias],
        3,
        |x| rk::linear(&x[0], &x[1], Some(&x[2])),
    ));

    cases.push(Case::new("dropout", vec![x.clone()], 1, |x| {
        rk::dropout(&x[0], 0.25, 42)
    }));
    let up = rand(&[rows, dim], 6, 1.0);
    cases.push(Case::new("gelu_erf", vec![x.clone()], 1, |x| rk::gelu_erf(&x[0])));
    cases.push(Case::new("gelu_tanh", vec![x.clone()], 1, |x| rk::gelu_tanh(&x[0])));
    cases.push(Case::new("silu", vec![x.clone()], 1, |x| rk::silu(&x[0])));
    cases.push(Case::new("swiglu", vec![x.clone(), up.clone()], 2, |x| {
        rk::swiglu(&x[0], &x[1])
    }));
    cases.push(Case::new("geglu erf", vec![x.clone(), up.clone()], 2, |x| {
        rk::geglu(&x[0], &x[1], GeluApprox::Erf)
    }));
    cases.push(Case::new("geglu tanh", vec![x, up], 2, |x| {
        rk::geglu(&x[0], &x[1], GeluApprox::Tanh)
    }));

    let (seq, head) = (128, 64);
    let q = rand(&[2, 4, seq, head], 7, 1.0);
    let angles = rand(&[seq, head / 2], 8, 3.0);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    for (name, style) in [
        ("rope half-split", RopeStyle::HalfSplit),
        ("rope interleaved", RopeStyle::Interleaved),
    ] {
        cases.push(Case::new(
            name,
            vec![q.clone(), cos.clone(), sin.clone()],
            1,
            move |x| rk::rope(&x[0], &x[1], &x[2], style),
        ));
    }

    let (b, h, hk, sq, sk, d) = (2, 4, 4, 128, 128, 64);
    let q = rand(&[b, h, sq, d], 9, 1.0);
    let k = rand(&[b, hk, sk, d], 10, 1.0);
    let v = rand(&[b, hk, sk, d], 11, 1.0);
    cases.push(Case::new("attention", vec![q.clone(), k.clone(), v.clone()], 3, |x| {
        rk::attention(&x[0], &x[1], &x[2], &AttentionOptions::default())
    }));
    cases.push(Case::new("attention causal", vec![q.clone(), k, v], 3, |x| {
        let options = AttentionOptions {
            causal: Some(Causal::BottomRight),
            ..Default::default()
        };
        rk::attention(&x[0], &x[1], &x[2], &options)
    }));
    // Grouped-query attention (4 query heads per key/value head) with a padding mask.
    let kg = rand(&[b, 1, sk, d], 12, 1.0);
    let vg = rand(&[b, 1, sk, d], 13, 1.0);
    let pad: Vec<f32> = (0..b * sk)
        .map(|i| {
            if i % sk >= sk - 5 * (i / sk + 1) {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let pad = Tensor::from_vec(pad, (b, 1, 1, sk), &Device::Cpu).unwrap();
    cases.push(Case::new(
        "attention gqa causal padding",
        vec![q, kg, vg, pad],
        3,
        |x| {
            let options = AttentionOptions {
                causal: Some(Causal::TopLeft),
                mask: Some(&x[3]),
                ..Default::default()
            };
            rk::attention(&x[0], &x[1], &x[2], &options)
        },
    ));
    cases
}

/// Checks that the cases are big enough for the 2-thread pool to split their rows.
fn assert_large_enough(case: &Case) {
    let x = &case.inputs[0];
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1);
    assert!(
        x.elem_count() >= 2 * MIN_PARALLEL_WORK && rows >= 64,
        "{}: {:?} is too small to be split over threads",
        case.name,
        x.dims()
    );
}

/// Repeats on 1 and on 2 threads are bit-identical; 1 and 2 threads agree within f32 tolerance.
fn check_all(backend: &str) -> Result<()> {
    for case in cases() {
        assert_large_enough(&case);
        let what = format!("{} ({backend})", case.name);
        let one = case.run_on(1)?;
        assert_bit_identical(&format!("{what}, 1 thread, run 1 vs run 2"), &one, &case.run_on(1)?);
        let two = case.run_on(2)?;
        assert_bit_identical(&format!("{what}, 2 threads, run 1 vs run 2"), &two, &case.run_on(2)?);
        assert_within_tolerance(&format!("{what}, 2 threads vs 1 thread"), &case, &two, &one);
    }
    Ok(())
}

/// Runs `f` with `backend` forced, then goes back to the default.
fn on_backend<R>(backend: rk::simd::Backend, f: impl FnOnce() -> R) -> R {
    rk::simd::force_backend(Some(backend)).expect("an available backend");
    let result = f();
    rk::simd::force_backend(None).expect("the default backend");
    result
}

#[test]
fn kernels_are_deterministic_on_every_backend() -> Result<()> {
    let _lock = BACKEND.lock().unwrap_or_else(|e| e.into_inner());
    for backend in rk::simd::available_backends() {
        on_backend(backend, || check_all(backend.name()))?;
    }
    Ok(())
}

/// The backends round differently (FMA or not, and row sums split over 8 or 16
/// lanes), so they agree within a tolerance, not bit for bit; this one is the f32
/// default, loosened to rtol 1e-5 for the polynomial `exp`, `erf` and `tanh` whose
/// FMA and non-FMA evaluations differ by a few ulps. Every backend is compared with
/// the portable one and with each other.
#[test]
fn every_backend_agrees_with_every_other() -> Result<()> {
    let _lock = BACKEND.lock().unwrap_or_else(|e| e.into_inner());
    let backends = rk::simd::available_backends();
    if backends.len() < 2 {
        eprintln!("this CPU runs only the portable backend");
        return Ok(());
    }
    let tolerance = Tolerance::new(1e-5, 1e-5);
    for case in cases() {
        let results = backends
            .iter()
            .map(|&b| on_backend(b, || case.run_on(2)).map(|r| (b.name(), r)))
            .collect::<Result<Vec<_>>>()?;
        for (i, (a_name, a)) in results.iter().enumerate() {
            for (b_name, b) in &results[i + 1..] {
                for (k, (x, y)) in a.iter().zip(b).enumerate() {
                    let c = compare(x, y, tolerance);
                    assert!(
                        c.passed(),
                        "{}, {}: {a_name} vs {b_name} not within rtol 1e-5, atol 1e-5:\n{c}",
                        case.name,
                        label(k)
                    );
                }
            }
        }
    }
    Ok(())
}

/// A few-row linear layer is cut into chunks of rows and bands of output features by
/// the pool's size, and gives the same bits on any pool: each output is one gemm
/// sum over the whole input dimension, whatever block it falls in. Pools larger than
/// the rows allow chunks for (8 threads) cut bands too.
#[test]
fn few_row_linear_is_bit_identical_on_every_pool() -> Result<()> {
    let _lock = BACKEND.lock().unwrap_or_else(|e| e.into_inner());
    for (n, &(rows, k, out)) in [(1, 64, 300), (31, 96, 257), (100, 384, 1536), (256, 200, 96)]
        .iter()
        .enumerate()
    {
        let x = rand(&[rows, k], 20 + n as u64, 1.0);
        let w = rand(&[out, k], 30 + n as u64, 0.1);
        let b = rand(&[out], 40 + n as u64, 1.0);
        let bits_on = |threads: usize| -> Result<Vec<u32>> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
            let y = pool.install(|| rk::linear(&x, &w, Some(&b)))?;
            Ok(y.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect())
        };
        let one = bits_on(1)?;
        for threads in [2, 3, 8] {
            assert!(
                bits_on(threads)? == one,
                "linear {rows}x{k}x{out}: {threads} threads differ from 1"
            );
        }
    }
    Ok(())
}
