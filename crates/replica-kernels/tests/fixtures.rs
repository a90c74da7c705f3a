//! The kernels against real PyTorch outputs and gradients: the committed
//! reference bundles under tests/fixtures/ (made by python/generate_fixtures.py
//! and python/fixtures_blocks_*.py), forward and backward, on every SIMD backend
//! this CPU runs (portable, AVX2+FMA, AVX-512).

use std::path::PathBuf;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Linear;
use replica_check::{compare, Bundle, Namespace, Parity, Report, Tolerance};
use replica_kernels::{self as rk, AttentionOptions, Causal, GeluApprox, Mask, RopeStyle};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn bundle(name: &str) -> Bundle {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(format!("{name}.safetensors"));
    Bundle::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[track_caller]
fn assert_passed(report: Report) {
    assert!(report.passed(), "{report}");
}

/// Forward and every stored gradient of a one-input, one-output op.
fn check_unary(name: &str, op: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<()> {
    let b = bundle(name);
    let mut run = Parity::new(&b)?;
    let y = op(&run.input("0")?)?;
    run.check_outputs(&[("0", &y)]);
    run.check_backward(&[("0", &y)])?;
    assert_passed(run.finish());
    Ok(())
}

fn softmax_matches_torch_on_one_backend() -> Result<()> {
    check_unary("softmax", |x| rk::softmax_last_dim(x, 1.0, Mask::None))
}

fn gelu_matches_torch_on_one_backend() -> Result<()> {
    check_unary("gelu_erf", rk::gelu_erf)?;
    check_unary("gelu_tanh", rk::gelu_tanh)?;
    check_unary("blocks/act_gelu", rk::gelu_erf)?;
    check_unary("blocks/act_gelu_tanh", rk::gelu_tanh)?;
    check_unary("blocks/act_gelu_new", rk::gelu_tanh)
}

fn silu_matches_torch_on_one_backend() -> Result<()> {
    check_unary("blocks/act_silu", rk::silu)
}

fn eps(b: &Bundle, key: &str) -> f64 {
    b.metadata().config[key].as_f64().expect("eps in the fixture's config")
}

fn layer_norm_matches_torch_on_one_backend() -> Result<()> {
    for name in ["layer_norm", "blocks/layer_norm"] {
        let b = bundle(name);
        let mut run = Parity::new(&b)?;
        let (w, bias) = (run.param("weight")?, run.param("bias")?);
        let y = rk::layer_norm(&run.input("0")?, &w, Some(&bias), eps(&b, "eps"))?;
        run.check_outputs(&[("0", &y)]);
        run.check_backward(&[("0", &y)])?;
        assert_passed(run.finish());
    }
    // Half precision: computed in f32, rounded once, against torch in that dtype.
    for name in ["layer_norm_f16", "layer_norm_bf16"] {
        let b = bundle(name);
        let mut run = Parity::new(&b)?;
        let (w, bias) = (run.param("weight")?, run.param("bias")?);
        let y = rk::layer_norm(&run.input("0")?, &w, Some(&bias), eps(&b, "eps"))?;
        run.check_outputs(&[("0", &y)]);
        assert_passed(run.finish());
    }
    Ok(())
}

fn rms_norm_matches_torch_on_one_backend() -> Result<()> {
    let b = bundle("blocks/rms_norm");
    let mut run = Parity::new(&b)?;
    let y = rk::rms_norm(&run.input("0")?, &run.param("weight")?, eps(&b, "rms_norm_eps"))?;
    run.check_outputs(&[("0", &y)]);
    run.check_backward(&[("0", &y)])?;
    assert_passed(run.finish());
    for name in ["blocks/rms_norm_f16", "blocks/rms_norm_bf16"] {
        let b = bundle(name);
        let mut run = Parity::new(&b)?;
        let y = rk::rms_norm(&run.input("0")?, &run.param("weight")?, eps(&b, "rms_norm_eps"))?;
        run.check_outputs(&[("0", &y)]);
        assert_passed(run.finish());
    }
    Ok(())
}

/// timm's gated MLPs: fc1 (packed or split), the gating kernel, fc2; every
/// parameter's gradient flows through the kernel's backward.
fn gated_mlps_match_timm_on_one_backend() -> Result<()> {
    let linear = |run: &Parity, name: &str| -> Result<Linear> {
        Ok(Linear::new(
            run.param(&format!("{name}.weight"))?,
            Some(run.param(&format!("{name}.bias"))?),
        ))
    };
    // SwiGLU: separate gate and value projections.
    let b = bundle("blocks/swiglu");
    let mut run = Parity::new(&b)?;
    let x = run.input("0")?;
    let (gate, value) = (linear(&run, "fc1_g")?.forward(&x)?, linear(&run, "fc1_x")?.forward(&x)?);
    let hidden = rk::swiglu(&gate, &value)?;
    let y = linear(&run, "fc2")?.forward(&hidden)?;
    // Every activation the reference records; the dropouts and `norm` are identities in eval.
    run.check_activations(&[
        ("fc1_g", &gate),
        ("fc1_x", &value),
        ("act", &gate.silu()?),
        ("drop1", &hidden),
        ("norm", &hidden),
        ("fc2", &y),
        ("drop2", &y),
    ]);
    run.check_outputs(&[("0", &y)]);
    run.check_backward(&[("0", &y)])?;
    assert_passed(run.finish());

    // Packed fc1, split in two: SwiGLUPacked gates the first half, GluMlp(gelu, gate_last) the second.
    for (name, gate_first) in [("blocks/swiglu_packed", true), ("blocks/geglu", false)] {
        let b = bundle(name);
        let mut run = Parity::new(&b)?;
        let h = linear(&run, "fc1")?.forward(&run.input("0")?)?;
        let half = h.dim(D::Minus1)? / 2;
        let (first, second) = (h.narrow(D::Minus1, 0, half)?, h.narrow(D::Minus1, half, half)?);
        let (hidden, act) = if gate_first {
            (rk::swiglu(&first, &second)?, first.silu()?)
        } else {
            (rk::geglu(&second, &first, GeluApprox::Erf)?, second.gelu_erf()?)
        };
        let y = linear(&run, "fc2")?.forward(&hidden)?;
        run.check_activations(&[
            ("fc1", &h),
            ("act", &act),
            ("drop1", &hidden),
            ("norm", &hidden),
            ("fc2", &y),
            ("drop2", &y),
        ]);
        run.check_outputs(&[("0", &y)]);
        run.check_backward(&[("0", &y)])?;
        assert_passed(run.finish());
    }
    Ok(())
}

/// Rotates both inputs (queries and keys) of a HF `apply_rotary_pos_emb` fixture.
fn check_rope(name: &str, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<()> {
    let b = bundle(name);
    let mut run = Parity::new(&b)?;
    let q = rk::rope(&run.input("0")?, cos, sin, style)?;
    let k = rk::rope(&run.input("1")?, cos, sin, style)?;
    if b.contains(Namespace::Activation, "rotary_emb:0") {
        // The tables were read from these activations: this checks their layout.
        let hf = |t: &Tensor| Tensor::cat(&[t, t], D::Minus1)?.unsqueeze(0);
        run.check_activations(&[("rotary_emb:0", &hf(cos)?), ("rotary_emb:1", &hf(sin)?)]);
    }
    run.check_outputs(&[("0", &q), ("1", &k)]);
    run.check_backward(&[("0", &q), ("1", &k)])?;
    assert_passed(run.finish());
    Ok(())
}

/// HF's `rotary_emb` returns `cat(freqs, freqs)` tables `[1, seq, r]`: keep `[seq, r/2]`.
fn hf_tables(b: &Bundle) -> Result<(Tensor, Tensor)> {
    let half = |t: &Tensor| -> Result<Tensor> {
        let r = t.dim(D::Minus1)?;
        Ok(t.squeeze(0)?.narrow(D::Minus1, 0, r / 2)?.contiguous()?)
    };
    Ok((
        half(b.activation("rotary_emb:0")?)?,
        half(b.activation("rotary_emb:1")?)?,
    ))
}

fn rope_matches_hf_on_one_backend() -> Result<()> {
    for name in ["blocks/rope_half_split", "blocks/rope_half_split_partial"] {
        let (cos, sin) = hf_tables(&bundle(name))?;
        check_rope(name, &cos, &sin, RopeStyle::HalfSplit)?;
    }
    // GPT-J: tables made as `create_sinusoidal_positions`, in f32, at the fixture's offset.
    let name = "blocks/rope_interleaved_partial";
    let config = bundle(name).metadata().config.clone();
    let (rotary, offset) = (
        config["rotary_dim"].as_u64().unwrap() as usize,
        config["offset"].as_u64().unwrap() as usize,
    );
    let seq = bundle(name).input("0")?.dim(2)?;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in offset..offset + seq {
        for i in 0..rotary / 2 {
            let inv_freq = 1.0f32 / 10_000f32.powf((2 * i) as f32 / rotary as f32);
            let angle = p as f32 * inv_freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (seq, rotary / 2), &Device::Cpu)?;
    let sin = Tensor::from_vec(sin, (seq, rotary / 2), &Device::Cpu)?;
    check_rope(name, &cos, &sin, RopeStyle::Interleaved)
}

/// `scaled_dot_product_attention` fixtures: output and the gradients of q, k, v
/// (the kernel computes no gradient for a mask).
fn check_sdpa(
    name: &str,
    options: impl Fn(&Bundle) -> Result<(AttentionOptions<'static>, Option<Tensor>)>,
) -> Result<()> {
    let b = bundle(name);
    let run = Parity::new(&b)?;
    let (q, k, v) = (run.input("0")?, run.input("1")?, run.input("2")?);
    let (mut opts, mask) = options(&b)?;
    opts.mask = mask.as_ref();
    let y = rk::attention(&q, &k, &v, &opts)?;
    let mut report = Report::new(name);
    let tol = Tolerance::for_dtype(DType::F32);
    report.push("output/0", compare(&y, b.output("0")?, tol));
    let grads = b.upstream_loss(&[("0", &y)])?.backward()?;
    for (input, t) in [("0", &q), ("1", &k), ("2", &v)] {
        let g = grads.get(t).ok_or("no gradient")?;
        report.push(format!("grad/input/{input}"), compare(g, b.input_grad(input)?, tol));
    }
    assert_passed(report);
    Ok(())
}

fn additive_from_keep(keep: &Tensor) -> Result<Tensor> {
    let keep = keep.to_dtype(DType::U8)?;
    let zeros = Tensor::zeros(keep.shape(), DType::F32, keep.device())?;
    let hidden = Tensor::full(f32::NEG_INFINITY, keep.shape(), keep.device())?;
    Ok(keep.where_cond(&zeros, &hidden)?)
}

fn attention_matches_torch_sdpa_on_one_backend() -> Result<()> {
    check_sdpa("blocks/sdpa_causal", |_| {
        Ok((
            AttentionOptions {
                causal: Some(Causal::TopLeft),
                ..Default::default()
            },
            None,
        ))
    })?;
    check_sdpa("blocks/sdpa_causal_top_left", |_| {
        Ok((
            AttentionOptions {
                causal: Some(Causal::TopLeft),
                ..Default::default()
            },
            None,
        ))
    })?;
    check_sdpa("blocks/sdpa_gqa", |_| {
        Ok((
            AttentionOptions {
                causal: Some(Causal::TopLeft),
                ..Default::default()
            },
            None,
        ))
    })?;
    check_sdpa("blocks/sdpa_additive", |b| {
        let scale = b.metadata().config["scale"].as_f64();
        Ok((
            AttentionOptions {
                scale,
                ..Default::default()
            },
            Some(b.input("3")?.clone()),
        ))
    })?;
    check_sdpa("blocks/sdpa_padding", |b| {
        Ok((AttentionOptions::default(), Some(additive_from_keep(b.input("3")?)?)))
    })?;
    check_sdpa("blocks/sdpa_left_padding_causal", |b| {
        let keep = b.input("3")?;
        let (batch, k) = keep.dims2()?;
        let mask = additive_from_keep(&keep.reshape((batch, 1, 1, k))?)?;
        Ok((
            AttentionOptions {
                causal: Some(Causal::BottomRight),
                ..Default::default()
            },
            Some(mask),
        ))
    })
}

fn attention_mask_grad_is_not_computed_but_the_rest_is_on_one_backend() -> Result<()> {
    // Documented limitation: the additive mask gets no gradient from the fused kernel.
    let b = bundle("blocks/sdpa_additive");
    let run = Parity::new(&b)?;
    let mask = run.input("3")?;
    let opts = AttentionOptions {
        mask: Some(&mask),
        scale: Some(0.3),
        ..Default::default()
    };
    let y = rk::attention(&run.input("0")?, &run.input("1")?, &run.input("2")?, &opts)?;
    let grads = b.upstream_loss(&[("0", &y)])?.backward()?;
    assert!(grads.get(&mask).is_none());
    Ok(())
}

fn softmax_kernel_matches_the_attention_probabilities_on_one_backend() -> Result<()> {
    // sdpa_additive again, through the softmax kernel with its fused scale and mask.
    let b = bundle("blocks/sdpa_additive");
    let run = Parity::new(&b)?;
    let (q, k, v, mask) = (run.input("0")?, run.input("1")?, run.input("2")?, run.input("3")?);
    let scores = q.matmul(&k.t()?)?;
    let p = rk::softmax_last_dim(&scores, 0.3, Mask::Additive(&mask))?;
    let y = p.matmul(&v)?;
    let tol = Tolerance::for_dtype(DType::F32);
    let mut report = Report::new("softmax + matmul vs sdpa");
    report.push("output/0", compare(&y, b.output("0")?, tol));
    let grads = b.upstream_loss(&[("0", &y)])?.backward()?;
    for (input, t) in [("0", &q), ("1", &k), ("2", &v), ("3", &mask)] {
        report.push(
            format!("grad/input/{input}"),
            compare(grads.get(t).ok_or("no gradient")?, b.input_grad(input)?, tol),
        );
    }
    assert_passed(report);
    Ok(())
}

/// Runs `check` on every SIMD backend this CPU runs, one after the other, naming
/// the backend in the error of the first that fails.
fn on_every_backend(check: fn() -> Result<()>) -> Result<()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for backend in rk::simd::available_backends() {
        rk::simd::force_backend(Some(backend)).expect("an available backend");
        // A failed assertion panics: say which backend it ran on first.
        eprintln!("backend {}", backend.name());
        let result = check();
        rk::simd::force_backend(None).expect("the default backend");
        result.map_err(|e| format!("on the {} backend: {e}", backend.name()))?;
    }
    Ok(())
}

/// A `#[test]` per check, running it on every backend.
macro_rules! tests_on_every_backend {
    ($($test:ident => $check:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() -> Result<()> {
                on_every_backend($check)
            }
        )*
    };
}

tests_on_every_backend!(
    softmax_matches_torch => softmax_matches_torch_on_one_backend,
    gelu_matches_torch => gelu_matches_torch_on_one_backend,
    silu_matches_torch => silu_matches_torch_on_one_backend,
    layer_norm_matches_torch => layer_norm_matches_torch_on_one_backend,
    rms_norm_matches_torch => rms_norm_matches_torch_on_one_backend,
    gated_mlps_match_timm => gated_mlps_match_timm_on_one_backend,
    rope_matches_hf => rope_matches_hf_on_one_backend,
    attention_matches_torch_sdpa => attention_matches_torch_sdpa_on_one_backend,
    attention_mask_grad_is_not_computed_but_the_rest_is => attention_mask_grad_is_not_computed_but_the_rest_is_on_one_backend,
    softmax_kernel_matches_the_attention_probabilities => softmax_kernel_matches_the_attention_probabilities_on_one_backend,
);
