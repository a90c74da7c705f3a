//! The switch between the kernels and the plain composition (the parity cases run
//! both ways in `replica-suite`'s `compute` test): the switch really changes what runs
//! (a block on the kernels gives, bit for bit, what the kernel gives when called
//! directly, and differs in the last bits from the composition), the two paths
//! agree closely on forward values and gradients at odd shapes, `with_compute`
//! nests and restores, and `REPLICA_COMPUTE` is read as documented.

use std::process::Command;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use replica_blocks::attention::{scaled_dot_product_attention, scaled_dot_product_attention_with_weights};
use replica_blocks::compute::{self, current, with_compute, Compute};
use replica_blocks::diff_attention::{DiffAttention, DiffAttentionConfig};
use replica_blocks::glu::{GluMlp, GluMlpConfig};
use replica_blocks::mask::padding_mask_from_lengths;
use replica_blocks::ops::{self, AlibiBias, Causal, ScoreBias};
use replica_blocks::{
    Activation, Attention, AttentionConfig, LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig, Rope, RopeConfig,
    RopeStyle, SdpaOptions,
};
use replica_check::{assert_close, Tolerance};

const CPU: Device = Device::Cpu;
const BOTH: [Compute; 2] = [Compute::Kernels, Compute::Composition];
/// How closely the kernels and the composition agree in f32 (the kernels' own
/// tests hold them to 2e-6..1e-5 relative against f64; gradients a little looser).
const FORWARD: Tolerance = Tolerance::new(2e-5, 2e-6);
const GRADIENT: Tolerance = Tolerance::new(1e-4, 1e-5);

/// Standard normal values from a fixed stream (xorshift64 and Box-Muller): the
/// two paths are compared on the same numbers in every run, so a tolerance that
/// holds once holds always.
fn randn(shape: &[usize]) -> Tensor {
    thread_local!(static STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0x9E37_79B9_7F4A_7C15) });
    let uniform = || {
        STATE.with(|state| {
            let mut x = state.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.set(x);
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        })
    };
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| ((-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos()) as f32)
        .collect();
    Tensor::from_vec(values, shape, &CPU).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Bitwise equality (so the kernel path is provably the one taken).
fn assert_same_bits(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (values(a), values(b));
    let differing = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    assert_eq!(differing, 0, "{what}: {differing} of {} elements differ", a.len());
}

/// At least one element differs: the two paths are really different computations.
fn assert_some_bits_differ(what: &str, a: &Tensor, b: &Tensor) {
    let (a, b) = (values(a), values(b));
    assert!(
        a.iter().zip(&b).any(|(x, y)| x.to_bits() != y.to_bits()),
        "{what}: the kernels and the composition gave bit-identical results ({} elements)",
        a.len()
    );
}

/// A `VarBuilder` over fresh variables, each set to random values once created.
struct Params {
    map: VarMap,
}

impl Params {
    fn new() -> Self {
        Self { map: VarMap::new() }
    }

    fn vb(&self) -> VarBuilder<'_> {
        VarBuilder::from_varmap(&self.map, DType::F32, &CPU)
    }

    /// Replaces every variable's value by random values (scaled down for projections),
    /// in the order of their names: the map's own order changes from run to run, and
    /// with it which variable would get which values.
    fn randomise(&self) {
        for var in self.vars() {
            let shape = var.dims().to_vec();
            let scale = if shape.len() == 2 {
                1.0 / (shape[1] as f64).sqrt()
            } else {
                1.0
            };
            var.set(&(randn(&shape) * scale).unwrap().to_dtype(var.dtype()).unwrap())
                .unwrap();
        }
    }

    fn vars(&self) -> Vec<Var> {
        let data = self.map.data().lock().unwrap();
        let mut named: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.into_iter().map(|(_, v)| v).collect()
    }
}

/// Runs `f` on the input variables under `compute`, and returns its output and the
/// gradients of `sum(y · g)` (a fixed random `g`) for the inputs and `params`.
fn run_with_grads(
    compute: Compute,
    inputs: &[Var],
    params: &[Var],
    g: &Tensor,
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    with_compute(compute, || {
        let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&xs).unwrap();
        let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = Vec::new();
        for v in inputs.iter().chain(params) {
            let grad = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient under {compute}"));
            out.push(grad.clone());
        }
        (y, out)
    })
}

/// The kernels and the composition agree on the output and every gradient, and
/// are not bit-identical on the output.
fn compare_paths(what: &str, inputs: &[Var], params: &[Var], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) {
    let probe = with_compute(Compute::Composition, || {
        f(&inputs.iter().map(|v| v.as_tensor().clone()).collect::<Vec<_>>()).unwrap()
    });
    let g = randn(probe.dims());
    let (yk, gk) = run_with_grads(Compute::Kernels, inputs, params, &g, f);
    let (yc, gc) = run_with_grads(Compute::Composition, inputs, params, &g, f);
    assert_close(&format!("{what}: output"), &yk, &yc, FORWARD);
    assert_some_bits_differ(&format!("{what}: output"), &yk, &yc);
    for (i, (a, b)) in gk.iter().zip(&gc).enumerate() {
        assert_close(&format!("{what}: gradient {i}"), a, b, GRADIENT);
    }
}

// --- The switch switches ----------------------------------------------------

#[test]
fn layer_norm_runs_the_kernel_and_matches_the_composition() {
    let params = Params::new();
    let norm = LayerNorm::new(&LayerNormConfig::new(37), params.vb()).unwrap();
    params.randomise();
    let x = Var::from_tensor(&(randn(&[3, 5, 37]) * 3.0).unwrap().affine(1.0, 0.5).unwrap()).unwrap();
    let vars = params.vars();
    let (w, b) = (vars[1].as_tensor(), vars[0].as_tensor()); // sorted: bias, weight
    let direct = replica_kernels::layer_norm(x.as_tensor(), w, Some(b), 1e-5).unwrap();
    let on_kernels = with_compute(Compute::Kernels, || norm.forward(x.as_tensor())).unwrap();
    assert_same_bits("layer_norm", &on_kernels, &direct);
    compare_paths("layer_norm", &[x], &vars, &|xs| norm.forward(&xs[0]));
}

#[test]
fn rms_norm_runs_the_kernel_and_matches_the_composition() {
    let params = Params::new();
    let norm = RmsNorm::new(&RmsNormConfig::new(29), params.vb()).unwrap();
    params.randomise();
    let x = Var::from_tensor(&randn(&[4, 3, 29])).unwrap();
    let vars = params.vars();
    let direct = replica_kernels::rms_norm(x.as_tensor(), vars[0].as_tensor(), 1e-6).unwrap();
    let on_kernels = with_compute(Compute::Kernels, || norm.forward(x.as_tensor())).unwrap();
    assert_same_bits("rms_norm", &on_kernels, &direct);
    compare_paths("rms_norm", &[x], &vars, &|xs| norm.forward(&xs[0]));
}

#[test]
fn activations_run_their_kernels_and_match_the_composition() {
    type Kernel = fn(&Tensor) -> Result<Tensor>;
    let kernels: [(Activation, Kernel); 3] = [
        (Activation::Gelu, replica_kernels::gelu_erf),
        (Activation::GeluTanh, replica_kernels::gelu_tanh),
        (Activation::Silu, replica_kernels::silu),
    ];
    for (activation, kernel) in kernels {
        let x = Var::from_tensor(&(randn(&[7, 131]) * 3.0).unwrap()).unwrap();
        let on_kernels = with_compute(Compute::Kernels, || activation.forward(x.as_tensor())).unwrap();
        assert_same_bits(&format!("{activation:?}"), &on_kernels, &kernel(x.as_tensor()).unwrap());
        compare_paths(&format!("{activation:?}"), &[x], &[], &|xs| activation.forward(&xs[0]));
    }
    // No kernel for QuickGELU: both settings run the same composition.
    let x = randn(&[5, 9]);
    let a = with_compute(Compute::Kernels, || Activation::QuickGelu.forward(&x)).unwrap();
    let b = with_compute(Compute::Composition, || Activation::QuickGelu.forward(&x)).unwrap();
    assert_same_bits("QuickGelu", &a, &b);
}

#[test]
fn gated_mlps_match_the_composition() {
    for config in [GluMlpConfig::swiglu(24, 40), GluMlpConfig::geglu(24, 33)] {
        let params = Params::new();
        let mlp = GluMlp::new(&config, params.vb()).unwrap();
        params.randomise();
        let x = Var::from_tensor(&randn(&[2, 7, 24])).unwrap();
        compare_paths(&format!("glu {:?}", config.activation), &[x], &params.vars(), &|xs| {
            mlp.forward(&xs[0])
        });
    }
}

#[test]
fn rope_runs_the_kernel_in_both_pairings_and_partial() {
    for (style, fraction) in [
        (RopeStyle::HalfSplit, 1.0),
        (RopeStyle::Interleaved, 1.0),
        (RopeStyle::HalfSplit, 0.5),
    ] {
        let config = RopeConfig {
            style,
            fraction,
            max_positions: 64,
            ..RopeConfig::new(12)
        };
        let rope = Rope::new(&config, &CPU).unwrap();
        let x = Var::from_tensor(&randn(&[2, 3, 11, 12])).unwrap();
        let (cos, sin) = rope.tables(11, 5).unwrap();
        let kernel_style = match style {
            RopeStyle::HalfSplit => replica_kernels::RopeStyle::HalfSplit,
            RopeStyle::Interleaved => replica_kernels::RopeStyle::Interleaved,
        };
        let direct = replica_kernels::rope(x.as_tensor(), &cos, &sin, kernel_style).unwrap();
        let on_kernels = with_compute(Compute::Kernels, || rope.apply(x.as_tensor(), 5)).unwrap();
        assert_same_bits(&format!("rope {style:?} {fraction}"), &on_kernels, &direct);
        compare_paths(&format!("rope {style:?} {fraction}"), &[x], &[], &|xs| {
            rope.apply(&xs[0], 5)
        });
    }
}

#[test]
fn sdpa_runs_the_fused_kernel_with_causal_padding_and_gqa() {
    let (b, h, hk, sq, sk, d) = (2, 6, 2, 7, 13, 10);
    let q = Var::from_tensor(&randn(&[b, h, sq, d])).unwrap();
    let k = Var::from_tensor(&randn(&[b, hk, sk, d])).unwrap();
    let v = Var::from_tensor(&randn(&[b, hk, sk, d + 3])).unwrap();
    let padding = padding_mask_from_lengths(&[13, 9], sk, DType::F32, &CPU).unwrap();
    let options = SdpaOptions {
        causal: true,
        ..SdpaOptions::default()
    };
    let on_kernels = with_compute(Compute::Kernels, || {
        scaled_dot_product_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), Some(&padding), &options)
    })
    .unwrap();
    let direct = replica_kernels::attention(
        q.as_tensor(),
        k.as_tensor(),
        v.as_tensor(),
        &replica_kernels::AttentionOptions {
            scale: Some(1.0 / (d as f64).sqrt()),
            causal: Some(replica_kernels::Causal::BottomRight),
            mask: Some(&padding),
            ..Default::default()
        },
    )
    .unwrap();
    assert_same_bits("sdpa", &on_kernels, &direct);
    compare_paths("sdpa causal+padding+gqa", &[q, k, v], &[], &|xs| {
        scaled_dot_product_attention(&xs[0], &xs[1], &xs[2], Some(&padding), &options)
    });
}

#[test]
fn sdpa_paths_the_fused_kernel_does_not_take_still_match() {
    let (b, h, s, d) = (2, 4, 9, 8);
    let q = Var::from_tensor(&randn(&[b, h, s, d])).unwrap();
    let k = Var::from_tensor(&randn(&[b, h, s, d])).unwrap();
    let v = Var::from_tensor(&randn(&[b, h, s, d])).unwrap();
    // Soft-capping: the scores are materialised, the softmax kernel runs.
    let softcap = SdpaOptions {
        causal: true,
        softcap: Some(3.0),
        ..SdpaOptions::default()
    };
    compare_paths("sdpa softcap", &[q.clone(), k.clone(), v.clone()], &[], &|xs| {
        scaled_dot_product_attention(&xs[0], &xs[1], &xs[2], None, &softcap)
    });
    // A sliding window: fused (the kernel skips what the window hides), and with the
    // soft-capping (materialised, the window an additive mask).
    for softcap in [None, Some(3.0)] {
        let window = SdpaOptions {
            causal: true,
            window: Some(3),
            softcap,
            ..SdpaOptions::default()
        };
        compare_paths("sdpa window", &[q.clone(), k.clone(), v.clone()], &[], &|xs| {
            scaled_dot_product_attention(&xs[0], &xs[1], &xs[2], None, &window)
        });
    }
    // A boolean mask, and the probabilities asked for.
    let keep = Tensor::from_vec(
        (0..s * s).map(|i| u8::from(i % 4 != 1)).collect::<Vec<_>>(),
        (1, 1, s, s),
        &CPU,
    )
    .unwrap();
    let plain = SdpaOptions::default();
    compare_paths("sdpa weights", &[q.clone(), k.clone(), v.clone()], &[], &|xs| {
        let (out, weights) = scaled_dot_product_attention_with_weights(&xs[0], &xs[1], &xs[2], Some(&keep), &plain)?;
        Tensor::cat(&[out.flatten_all()?, weights.flatten_all()?], 0)
    });
    // A trained additive bias gets its gradient on both paths.
    let bias = Var::from_tensor(&(randn(&[1, h, s, s]) * 0.5).unwrap()).unwrap();
    compare_paths("sdpa trained bias", &[q, k, v, bias], &[], &|xs| {
        scaled_dot_product_attention(&xs[0], &xs[1], &xs[2], Some(&xs[3]), &plain)
    });
}

#[test]
fn the_softmax_op_sums_causal_mask_and_alibi_once_for_both_paths() {
    let (b, h, sq, sk) = (2, 3, 5, 8);
    let x = Var::from_tensor(&randn(&[b, h, sq, sk])).unwrap();
    let keep = Tensor::from_vec(
        (0..b * sk).map(|i| u8::from(i % 5 != 2)).collect::<Vec<_>>(),
        (b, 1, 1, sk),
        &CPU,
    )
    .unwrap();
    let slopes = [0.5f32, 0.25, 0.125];
    let bias = ScoreBias {
        causal: Some(Causal::BottomRight),
        window: None,
        mask: Some(&keep),
        alibi: Some(AlibiBias {
            slopes: &slopes,
            at: Causal::Offset(3),
        }),
    };
    // One f32 tensor: the ALiBi bias, the mask made additive, the causal mask.
    let alibi = ops::mask::alibi_bias(&slopes, sq, sk, Causal::Offset(3), DType::F32, &CPU).unwrap();
    let additive = ops::mask::to_additive(&keep, DType::F32).unwrap();
    let causal = ops::mask::causal_mask(sq, sk, sk - sq, DType::F32, &CPU).unwrap();
    let total = alibi.broadcast_add(&additive).unwrap().broadcast_add(&causal).unwrap();
    let direct =
        replica_kernels::softmax_last_dim(x.as_tensor(), 0.7, replica_kernels::Mask::Additive(&total)).unwrap();
    let on_kernels = with_compute(Compute::Kernels, || ops::softmax(x.as_tensor(), 0.7, &bias)).unwrap();
    assert_same_bits("softmax op", &on_kernels, &direct);
    compare_paths("softmax op", &[x], &[], &|xs| ops::softmax(&xs[0], 0.7, &bias));
    // A causal mask alone needs no tensor, on either path.
    let causal_only = ScoreBias {
        causal: Some(Causal::TopLeft),
        ..ScoreBias::default()
    };
    assert!(causal_only.additive(&randn(&[1, 1, 4, 4])).unwrap().is_none());
}

#[test]
fn attention_with_alibi_and_a_cache_matches_the_composition() {
    let params = Params::new();
    let config = AttentionConfig {
        alibi: true,
        causal: true,
        kv_heads: Some(1),
        ..AttentionConfig::new(24, 4)
    };
    let attention = Attention::new(&config, params.vb()).unwrap();
    params.randomise();
    let x = Var::from_tensor(&randn(&[2, 11, 24])).unwrap();
    compare_paths("attention alibi mqa", &[x], &params.vars(), &|xs| {
        attention.forward(&xs[0], None, None)
    });
    // Decoding with a cache: positions offset, the fused kernel's ALiBi alignment.
    let prompt = randn(&[1, 5, 24]);
    let step = randn(&[1, 3, 24]);
    let decode = |compute| {
        with_compute(compute, || {
            let mut cache = replica_blocks::KvCache::new();
            attention.forward(&prompt, None, Some(&mut cache)).unwrap();
            attention.forward(&step, None, Some(&mut cache)).unwrap()
        })
    };
    let (a, b) = (decode(Compute::Kernels), decode(Compute::Composition));
    assert_close("attention alibi cache", &a, &b, FORWARD);
    assert_some_bits_differ("attention alibi cache", &a, &b);
}

#[test]
fn diff_attention_matches_the_composition() {
    let params = Params::new();
    let config = DiffAttentionConfig {
        causal: true,
        ..DiffAttentionConfig::new(32, 2, 1)
    };
    let block = DiffAttention::new(&config, params.vb()).unwrap();
    params.randomise();
    let x = Var::from_tensor(&randn(&[2, 9, 32])).unwrap();
    compare_paths("diff_attention", &[x], &params.vars(), &|xs| {
        block.forward(&xs[0], None)
    });
}

#[test]
fn f64_runs_the_composition_whatever_the_switch() {
    let params = Params::new();
    let norm = LayerNorm::new(&LayerNormConfig::new(19), params.vb()).unwrap();
    params.randomise();
    let x = randn(&[3, 19]).to_dtype(DType::F64).unwrap();
    let a = with_compute(Compute::Kernels, || norm.forward(&x)).unwrap();
    let b = with_compute(Compute::Composition, || norm.forward(&x)).unwrap();
    assert_same_bits("f64 layer_norm", &a, &b);
}

// --- with_compute and REPLICA_COMPUTE ----------------------------------------

#[test]
fn with_compute_nests_and_restores_also_on_panic() {
    let outside = current();
    with_compute(Compute::Composition, || {
        assert_eq!(current(), Compute::Composition);
        let inner = with_compute(Compute::Kernels, || {
            assert_eq!(current(), Compute::Kernels);
            with_compute(Compute::Composition, current)
        });
        assert_eq!(inner, Compute::Composition);
        assert_eq!(current(), Compute::Composition);
        let caught = std::panic::catch_unwind(|| with_compute(Compute::Kernels, || panic!("inside")));
        assert!(caught.is_err());
        assert_eq!(current(), Compute::Composition, "restored after a panic");
        // Another thread keeps the process default.
        let other = std::thread::spawn(current).join().unwrap();
        assert_eq!(other, compute::process_default());
    });
    assert_eq!(current(), outside);
}

#[test]
fn compute_names_parse() {
    for (text, expected) in [
        ("kernels", Compute::Kernels),
        ("composition", Compute::Composition),
        ("Composition", Compute::Composition),
        (" KERNELS ", Compute::Kernels),
    ] {
        assert_eq!(Compute::parse(text), Ok(expected), "{text:?}");
        assert_eq!(text.parse::<Compute>(), Ok(expected));
    }
    for bad in ["kernel", "compose", "", "fast", "kernels,composition"] {
        let err = Compute::parse(bad).unwrap_err();
        assert!(
            err.contains("`kernels` or `composition`") && err.contains(&format!("`{bad}`")),
            "{err}"
        );
    }
    for compute in BOTH {
        assert_eq!(Compute::parse(&compute.to_string()), Ok(compute));
    }
}

/// Run by [`replica_compute_sets_the_process_default`] in a child process, with
/// the environment variable it is testing; prints what this process sees.
#[test]
#[ignore = "run by replica_compute_sets_the_process_default"]
fn report_process_default() {
    println!("from_env={:?}", Compute::from_env());
    println!("current={}", current());
}

#[test]
fn replica_compute_sets_the_process_default() {
    let child = |value: Option<&str>| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args([
            "--exact",
            "report_process_default",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        match value {
            Some(value) => command.env(compute::ENV_VAR, value),
            None => command.env_remove(compute::ENV_VAR),
        };
        let output = command.output().unwrap();
        assert!(output.status.success(), "child failed: {output:?}");
        (
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    for (value, expected) in [
        (None, "kernels"),
        (Some(""), "kernels"),
        (Some("kernels"), "kernels"),
        (Some("composition"), "composition"),
        (Some("Composition"), "composition"),
    ] {
        let (out, err) = child(value);
        assert!(out.contains(&format!("current={expected}")), "{value:?}: {out}");
        assert!(out.contains("from_env=Ok("), "{value:?}: {out}");
        assert!(!err.contains("warning"), "{value:?}: {err}");
    }
    // A value that is neither: an error from `from_env`, a warning on stderr, and the default.
    let (out, err) = child(Some("compositon"));
    assert!(
        out.contains("from_env=Err(\"REPLICA_COMPUTE: expected `kernels` or `composition`, got `compositon`\")"),
        "{out}"
    );
    assert!(out.contains("current=kernels"), "{out}");
    assert!(
        err.contains(
            "warning: REPLICA_COMPUTE: expected `kernels` or `composition`, got `compositon`; using `kernels`"
        ),
        "{err}"
    );
    assert_eq!(err.matches("warning").count(), 1, "warned once: {err}");
}
