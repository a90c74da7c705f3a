//! Attention on its own (the parity cases and the checks on the fixtures are in
//! `replica-suite`): KV-cache decoding, masks, soft-capping, dropout, cross-attention,
//! and bad input that must give clear errors.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use replica_blocks::attention::{
    scaled_dot_product_attention, scaled_dot_product_attention_packed, scaled_dot_product_attention_with_weights,
    Attention, AttentionConfig, AttentionNames, SdpaOptions,
};
use replica_blocks::compute::{with_compute, Compute};
use replica_blocks::kv_cache::KvCache;
use replica_blocks::mask;
use replica_blocks::RopeStyle;
use replica_check::{assert_close, compare, trace, Tolerance};

const CPU: Device = Device::Cpu;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A deterministic pseudo-random fill, so failures reproduce.
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &CPU).unwrap()
}

fn random_attention(config: &AttentionConfig) -> (Attention, VarMap) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    (Attention::new(config, vb.pp("attn")).unwrap(), varmap)
}

fn err_text<T: std::fmt::Debug>(result: candle_core::Result<T>) -> String {
    result.expect_err("expected an error").to_string()
}

// ------------------------------------------------------------------ fixtures

// ------------------------------------------------------------------ KV cache

#[test]
fn kv_cache_with_alibi_decodes_like_the_full_pass() {
    let config = AttentionConfig {
        causal: true,
        alibi: true,
        kv_heads: Some(3),
        ..AttentionConfig::new(24, 6)
    };
    let (attention, _vars) = random_attention(&config);
    let x = randn(&[2, 5, 24], 7);
    let full = attention.forward(&x, None, None).unwrap();
    let mut cache = KvCache::new();
    let steps: Vec<Tensor> = (0..5)
        .map(|t| {
            attention
                .forward(&x.narrow(1, t, 1).unwrap(), None, Some(&mut cache))
                .unwrap()
        })
        .collect();
    assert_close(
        "alibi decode",
        &Tensor::cat(&steps, 1).unwrap(),
        &full,
        Tolerance::default(),
    );
}

/// A sliding window (3 tokens) decoded through a rolling cache, which keeps only the
/// 2 tokens the next query needs, gives the full pass's output; prefilling a chunk
/// of several tokens first too. The mask slides: the window changes the result.
#[test]
fn a_rolling_cache_decodes_a_sliding_window_like_the_full_pass() {
    let config = AttentionConfig {
        causal: true,
        window: Some(3),
        kv_heads: Some(2),
        rope: Some(RopeStyle::HalfSplit),
        ..AttentionConfig::new(16, 4)
    };
    let (attention, vars) = random_attention(&config);
    let x = randn(&[2, 9, 16], 11);
    let full = attention.forward(&x, None, None).unwrap();
    for prefill in [1, 4] {
        let mut cache = KvCache::with_window(3);
        let mut steps = vec![attention
            .forward(&x.narrow(1, 0, prefill).unwrap(), None, Some(&mut cache))
            .unwrap()];
        for t in prefill..9 {
            steps.push(
                attention
                    .forward(&x.narrow(1, t, 1).unwrap(), None, Some(&mut cache))
                    .unwrap(),
            );
        }
        assert_eq!((cache.len(), cache.kept()), (9, 2));
        let decoded = Tensor::cat(&steps, 1).unwrap();
        assert_close("rolling decode", &decoded, &full, Tolerance::default());
    }
    let unwindowed = Attention::new(
        &AttentionConfig {
            window: None,
            ..config.clone()
        },
        VarBuilder::from_varmap(&vars, DType::F32, &CPU).pp("attn"),
    )
    .unwrap();
    let everything = unwindowed.forward(&x, None, None).unwrap();
    assert!(!compare(&everything, &full, Tolerance::default()).passed());
    // The first 3 tokens see no further back than the window: both agree there.
    assert_close(
        "inside the window",
        &everything.narrow(1, 0, 3).unwrap(),
        &full.narrow(1, 0, 3).unwrap(),
        Tolerance::default(),
    );

    // A cache that keeps less than the attention sees is refused.
    let mut narrow = KvCache::with_window(2);
    let text = err_text(attention.forward(&x, None, Some(&mut narrow)));
    assert!(
        text.contains("keeps a window of 2 tokens, but the attention sees a window of 3"),
        "{text}"
    );
    let mut rolling = KvCache::with_window(3);
    let text = err_text(unwindowed.forward(&x, None, Some(&mut rolling)));
    assert!(text.contains("sees every earlier token"), "{text}");
    // A window needs causal attention.
    let text = err_text(Attention::new(
        &AttentionConfig {
            causal: false,
            ..config
        },
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &CPU),
    ));
    assert!(text.contains("a sliding window (3) needs causal attention"), "{text}");
}

#[test]
fn kv_cache_refuses_mismatched_entries() {
    let mut cache = KvCache::new();
    let k = Tensor::zeros((1, 2, 3, 4), DType::F32, &CPU).unwrap();
    cache.append(&k, &k).unwrap();
    let other_heads = Tensor::zeros((1, 3, 1, 4), DType::F32, &CPU).unwrap();
    let text = err_text(cache.append(&other_heads, &other_heads));
    assert!(text.contains("do not fit the cached"), "{text}");
    let rank3 = Tensor::zeros((1, 3, 4), DType::F32, &CPU).unwrap();
    let text = err_text(cache.append(&rank3, &rank3));
    assert!(text.contains("[batch, kv_heads, seq, head_dim]"), "{text}");
    assert_eq!(cache.len(), 3);
}

// --------------------------------------------------------------------- masks

#[test]
fn causal_mask_aligns_queries_with_the_cache_offset() {
    let m = mask::causal_mask(2, 4, 2, DType::F32, &CPU).unwrap();
    let inf = f32::NEG_INFINITY;
    assert_eq!(
        m.to_vec2::<f32>().unwrap(),
        vec![vec![0.0, 0.0, 0.0, inf], vec![0.0, 0.0, 0.0, 0.0]]
    );
    let square = mask::causal_mask(3, 3, 0, DType::F16, &CPU).unwrap();
    assert_eq!(square.dtype(), DType::F16);
    let square = square.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(square[0], vec![0.0, inf, inf]);
    assert_eq!(square[2], vec![0.0, 0.0, 0.0]);
    assert!(mask::causal_mask(2, 2, 0, DType::U8, &CPU).is_err());
}

#[test]
fn padding_masks_from_lengths_and_from_hf_attention_masks_agree() {
    let lengths = mask::padding_mask_from_lengths(&[3, 1, 2], 3, DType::F32, &CPU).unwrap();
    assert_eq!(lengths.dims(), &[3, 1, 1, 3]);
    let hf = Tensor::new(&[[1i64, 1, 1], [1, 0, 0], [1, 1, 0]], &CPU).unwrap();
    let from_hf = mask::padding_mask(&hf, DType::F32).unwrap();
    assert_close("padding", &from_hf, &lengths, Tolerance::EXACT);
    let text = err_text(mask::padding_mask_from_lengths(&[4], 3, DType::F32, &CPU));
    assert!(text.contains("longer than k_len 3"), "{text}");
    let text = err_text(mask::padding_mask(
        &Tensor::zeros(3, DType::U8, &CPU).unwrap(),
        DType::F32,
    ));
    assert!(text.contains("[batch, k_len]"), "{text}");
}

#[test]
fn combined_masks_add_and_boolean_masks_convert() {
    let causal = mask::causal_mask(2, 2, 0, DType::F32, &CPU).unwrap();
    let padding = Tensor::new(&[[1u8, 0]], &CPU).unwrap().reshape((1, 1, 1, 2)).unwrap();
    let both = mask::combine(&[&causal, &padding], DType::F32).unwrap().unwrap();
    assert_eq!(both.dims(), &[1, 1, 2, 2]);
    let inf = f32::NEG_INFINITY;
    let values = both.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(values, vec![0.0, inf, 0.0, inf]);
    assert!(mask::combine(&[], DType::F32).unwrap().is_none());
    // An additive mask passes through to_additive unchanged, in the asked dtype.
    let half = mask::to_additive(&causal, DType::BF16).unwrap();
    assert_eq!(half.dtype(), DType::BF16);
}

/// A query that may attend to no key gets zeros (torch sdpa's behaviour), with
/// zero gradient, never NaN; a `finfo.min` mask (HF eager) instead averages.
#[test]
fn a_fully_masked_row_gives_zeros_not_nan() {
    let q = candle_core::Var::from_tensor(&randn(&[1, 1, 2, 4], 1)).unwrap();
    let k = randn(&[1, 1, 3, 4], 2);
    let v = randn(&[1, 1, 3, 4], 3);
    let keep = Tensor::new(&[[0u8, 0, 0], [1, 1, 0]], &CPU).unwrap();
    let (out, probs) =
        scaled_dot_product_attention_with_weights(q.as_tensor(), &k, &v, Some(&keep), &SdpaOptions::default()).unwrap();
    let rows = out.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(rows[0], vec![0.0; 4]);
    assert!(rows[1].iter().all(|x| x.is_finite() && *x != 0.0));
    let p = probs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(&p[..3], &[0.0, 0.0, 0.0]);
    assert!((p[3] + p[4] - 1.0).abs() < 1e-6 && p[5] == 0.0);
    let grads = out.sum_all().unwrap().backward().unwrap();
    let gq = grads
        .get(q.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(gq.iter().all(|g| g.is_finite()));
    assert_eq!(&gq[..4], &[0.0; 4]);

    let finfo_min = Tensor::new(&[[f32::MIN, f32::MIN, f32::MIN], [0.0, 0.0, f32::MIN]], &CPU).unwrap();
    let averaged =
        scaled_dot_product_attention(q.as_tensor(), &k, &v, Some(&finfo_min), &SdpaOptions::default()).unwrap();
    let mean_v = v.mean_keepdim(2).unwrap();
    assert_close(
        "finfo.min row",
        &averaged.narrow(2, 0, 1).unwrap(),
        &mean_v,
        Tolerance::default(),
    );
}

/// A user mask (here: padding) and the configured causal mask combine inside the
/// module, and it matches the torch fixture built the same way.
#[test]
fn attention_module_adds_the_user_mask_to_the_causal_one() {
    let config = AttentionConfig {
        causal: true,
        ..AttentionConfig::new(16, 2)
    };
    let (attention, _vars) = random_attention(&config);
    let x = randn(&[2, 4, 16], 11);
    let keep = Tensor::new(&[[1u8, 1, 1, 1], [1, 1, 0, 0]], &CPU).unwrap();
    let padding = mask::padding_mask(&keep, DType::F32).unwrap();
    let masked = attention.forward(&x, Some(&padding), None).unwrap();
    // The unpadded sequence alone, first two tokens of sequence 1.
    let alone = attention
        .forward(&x.narrow(0, 1, 1).unwrap().narrow(1, 0, 2).unwrap(), None, None)
        .unwrap();
    let rows = masked.narrow(0, 1, 1).unwrap().narrow(1, 0, 2).unwrap();
    assert_close("padded + causal", &rows, &alone, Tolerance::default());
    // A boolean mask works the same.
    let boolean = keep.reshape((2, 1, 1, 4)).unwrap();
    let masked_bool = attention.forward(&x, Some(&boolean), None).unwrap();
    assert_close("boolean mask", &masked_bool, &masked, Tolerance::EXACT);
}

// --------------------------------------------------------------- planted bugs

// ------------------------------------------------------------ module features

#[test]
fn softcap_bounds_the_scores() {
    let q = (randn(&[1, 1, 3, 4], 5) * 50.0).unwrap();
    let k = (randn(&[1, 1, 3, 4], 6) * 50.0).unwrap();
    let v = Tensor::eye(3, DType::F32, &CPU).unwrap().reshape((1, 1, 3, 3)).unwrap();
    let options = SdpaOptions {
        softcap: Some(2.0),
        scale: Some(1.0),
        ..SdpaOptions::default()
    };
    // With v = I the output rows are the probabilities: a score range under 4
    // keeps every probability above e^-4 / 3.
    let probs = scaled_dot_product_attention(&q, &k, &v, None, &options).unwrap();
    let min = probs.flatten_all().unwrap().min(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(min > (-4f32).exp() / 3.0 - 1e-6, "{min}");
    let text = err_text(scaled_dot_product_attention(
        &q,
        &k,
        &v,
        None,
        &SdpaOptions {
            softcap: Some(0.0),
            ..options
        },
    ));
    assert!(text.contains("softcap must be positive"), "{text}");
}

/// The packed form is the split form: the same output and `dqkv` (bit for bit with the
/// kernels, whose packed op runs the same kernel; closely with the composition and in
/// f64, which split), with a padding mask, causal with GQA, and dropout's validation.
#[test]
fn packed_attention_is_the_split_attention() {
    let (b, s, heads, kv_heads, d) = (2, 9, 4, 2, 6);
    let qkv = candle_core::Var::from_tensor(&randn(&[b, s, (heads + 2 * kv_heads) * d], 3)).unwrap();
    let padding = Tensor::from_vec(
        (0..b * s)
            .map(|i| if i >= s + 6 { f32::NEG_INFINITY } else { 0.0 })
            .collect::<Vec<f32>>(),
        (b, 1, 1, s),
        &CPU,
    )
    .unwrap();
    let upstream = randn(&[b, s, heads * d], 4);
    let cases = [
        (None, SdpaOptions::default()),
        (
            Some(&padding),
            SdpaOptions {
                scale: Some(0.3),
                ..Default::default()
            },
        ),
        (
            None,
            SdpaOptions {
                causal: true,
                window: Some(4),
                ..Default::default()
            },
        ),
    ];
    let run = |packed: bool, mask: Option<&Tensor>, options: &SdpaOptions, dtype: DType| {
        let x = qkv.as_tensor().to_dtype(dtype).unwrap();
        let y = if packed {
            scaled_dot_product_attention_packed(&x, heads, kv_heads, mask, options).unwrap()
        } else {
            let part = |first: usize, n: usize| {
                x.narrow(D::Minus1, first * d, n * d)
                    .unwrap()
                    .reshape((b, s, n, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
            };
            let (q, k, v) = (part(0, heads), part(heads, kv_heads), part(heads + kv_heads, kv_heads));
            let y = scaled_dot_product_attention(&q, &k, &v, mask, options).unwrap();
            y.transpose(1, 2).unwrap().reshape((b, s, heads * d)).unwrap()
        };
        let grads = (y.to_dtype(DType::F32).unwrap() * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (
            y.to_dtype(DType::F32).unwrap(),
            grads.get(qkv.as_tensor()).unwrap().clone(),
        )
    };
    for (mask, options) in &cases {
        for compute in [Compute::Kernels, Compute::Composition] {
            with_compute(compute, || {
                let (y, g) = run(true, *mask, options, DType::F32);
                let (y_split, g_split) = run(false, *mask, options, DType::F32);
                let tolerance = if compute == Compute::Kernels {
                    Tolerance::EXACT
                } else {
                    Tolerance::new(1e-5, 1e-6)
                };
                assert_close(&format!("{compute:?} {options:?}: output"), &y, &y_split, tolerance);
                assert_close(&format!("{compute:?} {options:?}: dqkv"), &g, &g_split, tolerance);
            });
        }
        let (y64, _) = run(
            true,
            mask.map(|m| m.to_dtype(DType::F64).unwrap()).as_ref(),
            options,
            DType::F64,
        );
        let (y, _) = run(true, *mask, options, DType::F32);
        assert_close(&format!("f64 {options:?}"), &y, &y64, Tolerance::new(1e-5, 1e-6));
    }
    let err = err_text(scaled_dot_product_attention_packed(
        qkv.as_tensor(),
        3,
        2,
        None,
        &SdpaOptions::default(),
    ));
    assert!(err.contains("is not (heads 3 + 2 × kv_heads 2)"), "{err}");
    let err = err_text(scaled_dot_product_attention_packed(
        qkv.as_tensor(),
        heads,
        kv_heads,
        None,
        &SdpaOptions {
            dropout_p: 1.0,
            ..Default::default()
        },
    ));
    assert!(err.contains("dropout_p must be in [0, 1)"), "{err}");
}

#[test]
fn dropout_applies_only_in_training() {
    let config = AttentionConfig {
        attention_dropout: 0.5,
        proj_dropout: 0.25,
        ..AttentionConfig::new(16, 4)
    };
    let (attention, varmap) = random_attention(&config);
    let x = randn(&[2, 5, 16], 9);
    let eval_a = attention.forward(&x, None, None).unwrap();
    let eval_b = attention.forward_t(&x, None, None, false).unwrap();
    assert_close("eval is deterministic", &eval_a, &eval_b, Tolerance::EXACT);
    let train = attention.forward_t(&x, None, None, true).unwrap();
    assert!(!compare(&train, &eval_a, Tolerance::default()).passed());
    // Each call says its mode: the training call changed nothing for the next one.
    let eval_c = attention.forward(&x, None, None).unwrap();
    assert_close("eval after training", &eval_a, &eval_c, Tolerance::EXACT);
    // Trainable with dropout on: every parameter receives a gradient.
    let grads = train.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for var in varmap.all_vars() {
        assert!(grads.get(var.as_tensor()).is_some());
    }
}

#[test]
fn cross_attention_reads_keys_and_values_from_the_context() {
    let config = AttentionConfig {
        context_dim: Some(12),
        qkv_bias: true,
        ..AttentionConfig::new(16, 4)
    };
    let (attention, _vars) = random_attention(&config);
    let x = randn(&[2, 3, 16], 1);
    let context = randn(&[2, 7, 12], 2);
    let (y, weights) = attention.forward_with_weights(&x, Some(&context), None, None).unwrap();
    assert_eq!(y.dims(), &[2, 3, 16]);
    assert_eq!(weights.dims(), &[2, 4, 3, 7]);
    let row_sums = weights
        .sum(D::Minus1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(row_sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    // Self-attention on x alone cannot read the 12-feature projections.
    assert!(attention.forward(&x, None, None).is_err());
}

#[test]
fn scale_norm_and_rms_qk_norm_load_under_their_names() {
    let config = AttentionConfig {
        qk_norm: true,
        scale_norm: true,
        norm: replica_blocks::NormKind::RmsNorm,
        ..AttentionConfig::timm(16, 4, false, true)
    };
    let varmap = VarMap::new();
    let attention = Attention::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &CPU)).unwrap();
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "k_norm.weight",
            "norm.weight",
            "proj.bias",
            "proj.weight",
            "q_norm.weight",
            "qkv.weight"
        ]
    );
    let x = randn(&[1, 3, 16], 4);
    let (_, recorded) = trace::record(|| attention.forward(&x, None, None).unwrap());
    let traced: Vec<&str> = recorded.names().collect();
    assert_eq!(traced, ["qkv", "q_norm", "k_norm", "norm", "proj", "proj_drop"]);
}

/// HF Qwen3 runs the QK-norm on `[batch, seq, heads, head_dim]` and records that
/// layout; timm on `[batch, heads, seq, head_dim]`. Same weights, same output, and
/// the recorded norms are each other's transposes.
#[test]
fn the_qk_norm_runs_in_either_layout_with_the_same_result() {
    let hf = AttentionConfig {
        kv_heads: Some(2),
        qk_norm: true,
        norm: replica_blocks::NormKind::RmsNorm,
        causal: true,
        rope_theta: Some(10_000.0),
        ..AttentionConfig::new(16, 4)
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let timm_layout = Attention::new(&hf, vb.clone()).unwrap();
    let seq_first = Attention::new(
        &AttentionConfig {
            qk_norm_seq_first: true,
            ..hf.clone()
        },
        vb,
    )
    .unwrap();
    // Norm weights other than ones, so that a skipped scale would show.
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.ends_with("_norm.weight") {
            var.set(&randn(var.dims(), 9)).unwrap();
        }
    }
    let x = randn(&[2, 5, 16], 7);
    let (a, first) = trace::record(|| timm_layout.forward(&x, None, None).unwrap());
    let (b, second) = trace::record(|| seq_first.forward(&x, None, None).unwrap());
    assert_close("output", &b, &a, Tolerance::default());
    let recorded = |t: &trace::Trace, name: &str| t.get(name).unwrap().clone();
    for (name, heads) in [("q_norm", 4), ("k_norm", 2)] {
        let heads_first = recorded(&first, name);
        let seq_first = recorded(&second, name);
        assert_eq!(heads_first.dims(), [2, heads, 5, 4]);
        assert_eq!(seq_first.dims(), [2, 5, heads, 4]);
        assert_close(
            name,
            &seq_first.transpose(1, 2).unwrap(),
            &heads_first,
            Tolerance::default(),
        );
    }
}

// ----------------------------------------------------------------- bad input

#[test]
fn bad_configurations_are_refused_at_construction() {
    let build = |config: AttentionConfig| {
        let varmap = VarMap::new();
        Attention::new(
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, &CPU).pp("layers.0.attn"),
        )
        .map(|_| ())
    };
    let text = err_text(build(AttentionConfig {
        kv_heads: Some(3),
        ..AttentionConfig::new(16, 4)
    }));
    assert!(text.contains("4 query heads cannot share 3 key/value heads"), "{text}");
    assert!(text.contains("attention `layers.0.attn`"), "{text}");

    let text = err_text(build(AttentionConfig::new(10, 4)));
    assert!(text.contains("dim 10 is not divisible by 4 heads"), "{text}");

    let text = err_text(build(AttentionConfig {
        rope: Some(RopeStyle::HalfSplit),
        rotary_dim: Some(5),
        ..AttentionConfig::new(32, 4)
    }));
    assert!(text.contains("rotated dimension must be even"), "{text}");

    let text = err_text(build(AttentionConfig {
        rope: Some(RopeStyle::HalfSplit),
        ..AttentionConfig::new(12, 4) // head_dim 3: odd
    }));
    assert!(text.contains("must be even"), "{text}");

    let text = err_text(build(AttentionConfig {
        rope: Some(RopeStyle::HalfSplit),
        alibi: true,
        ..AttentionConfig::new(16, 4)
    }));
    assert!(text.contains("not both"), "{text}");

    let text = err_text(build(AttentionConfig {
        attention_dropout: 1.0,
        ..AttentionConfig::new(16, 4)
    }));
    assert!(text.contains("attention_dropout must be in [0, 1)"), "{text}");

    let text = err_text(build(AttentionConfig {
        context_dim: Some(8),
        ..AttentionConfig::timm(16, 4, true, false)
    }));
    assert!(text.contains("fused qkv"), "{text}");

    assert!(build(AttentionConfig::new(16, 0)).is_err());
    assert!(build(AttentionConfig {
        kv_heads: Some(0),
        ..AttentionConfig::new(16, 4)
    })
    .is_err());
}

#[test]
fn bad_inputs_are_refused_at_call_time() {
    let (attention, _vars) = random_attention(&AttentionConfig {
        causal: true,
        rope: Some(RopeStyle::HalfSplit),
        max_positions: 8,
        ..AttentionConfig::new(16, 4)
    });
    let text = err_text(attention.forward(&randn(&[5, 16], 1), None, None));
    assert!(
        text.contains("input must be [batch, seq, dim], got shape [5, 16]"),
        "{text}"
    );
    let text = err_text(attention.forward(&randn(&[1, 5, 12], 1), None, None));
    assert!(text.contains("12 features"), "{text}");
    let text = err_text(attention.forward(&randn(&[1, 9, 16], 1), None, None));
    assert!(text.contains("exceed the table of 8 positions"), "{text}");
    let text = err_text(attention.forward(&randn(&[1, 2, 16], 1), Some(&randn(&[3, 5], 2)), None));
    assert!(text.contains("does not broadcast"), "{text}");
    let text = err_text(attention.forward_cross(&randn(&[1, 2, 16], 1), &randn(&[1, 2, 16], 2), None));
    assert!(text.contains("cross-attention takes no causal mask"), "{text}");

    let q = randn(&[1, 4, 3, 8], 1);
    let kv3 = randn(&[1, 3, 3, 8], 2);
    let text = err_text(scaled_dot_product_attention(
        &q,
        &kv3,
        &kv3,
        None,
        &SdpaOptions::default(),
    ));
    assert!(text.contains("4 query heads cannot share 3"), "{text}");
    let rank3 = randn(&[4, 3, 8], 3);
    let text = err_text(scaled_dot_product_attention(
        &rank3,
        &rank3,
        &rank3,
        None,
        &SdpaOptions::default(),
    ));
    assert!(
        text.contains("q must be [batch, heads, seq, head_dim], got shape [4, 3, 8]"),
        "{text}"
    );
    let k6 = randn(&[1, 4, 3, 6], 4);
    let text = err_text(scaled_dot_product_attention(
        &q,
        &k6,
        &k6,
        None,
        &SdpaOptions::default(),
    ));
    assert!(text.contains("q has 8 features per head, k has 6"), "{text}");
    let ids = Tensor::zeros((1, 4, 3, 8), DType::U32, &CPU).unwrap();
    assert!(scaled_dot_product_attention(&ids, &ids, &ids, None, &SdpaOptions::default()).is_err());
}

// ------------------------------------------------------------------- configs

#[test]
fn configs_deserialize_from_hf_and_timm_json() {
    // A transformers v4 LLaMA config.json (rope_theta at the top level).
    let llama: AttentionConfig = serde_json::from_str(
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 500000.0,
            "attention_bias": false, "attention_dropout": 0.0, "rms_norm_eps": 1e-05,
            "hidden_act": "silu", "vocab_size": 128256}"#,
    )
    .unwrap();
    assert_eq!((llama.dim, llama.heads, llama.kv_heads()), (4096, 32, 8));
    assert_eq!(llama.head_dim(), Some(128));
    let rope = llama.rope_config().unwrap().unwrap();
    assert_eq!(
        (rope.theta, rope.max_positions, rope.style),
        (500000.0, 8192, RopeStyle::HalfSplit)
    );

    // transformers v5 moves the theta into rope_parameters; GPT-NeoX's partial rotation.
    let neox: AttentionConfig = serde_json::from_str(
        r#"{"hidden_size": 2048, "num_attention_heads": 16, "attention_bias": true,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}}"#,
    )
    .unwrap();
    assert!(neox.qkv_bias);
    assert_eq!(neox.rope_config().unwrap().unwrap().rotary_dim(), 32);
    let old_neox: AttentionConfig = serde_json::from_str(
        r#"{"hidden_size": 2048, "num_attention_heads": 16, "rotary_pct": 0.25, "rotary_emb_base": 10000}"#,
    )
    .unwrap();
    assert_eq!(old_neox.rope_config().unwrap().unwrap().rotary_dim(), 32);

    // Gemma 2: head_dim apart from hidden_size / heads, softcap, query_pre_attn_scalar.
    let gemma: AttentionConfig = serde_json::from_str(
        r#"{"hidden_size": 2304, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
            "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
            "rope_theta": 10000.0, "sliding_window": 4096}"#,
    )
    .unwrap();
    assert_eq!(gemma.head_dim(), Some(256));
    assert_eq!(gemma.softcap, Some(50.0));
    assert_eq!(gemma.score_scale(), Some(1.0 / 16.0));

    // Unsupported RoPE scaling is refused, not silently ignored.
    let llama3: AttentionConfig = serde_json::from_str(
        r#"{"hidden_size": 64, "num_attention_heads": 4,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}}"#,
    )
    .unwrap();
    assert!(llama3.rope_config().unwrap_err().to_string().contains("llama3"));

    // timm Attention's arguments.
    let timm: AttentionConfig = serde_json::from_str(
        r#"{"dim": 768, "num_heads": 12, "qkv_bias": true, "qk_norm": true, "proj_bias": true,
            "attn_drop": 0.1, "proj_drop": 0.0}"#,
    )
    .unwrap();
    assert!(timm.qk_norm && timm.qkv_bias && timm.rope_config().unwrap().is_none());
    assert_eq!(timm.attention_dropout, 0.1);

    // Names and layouts round-trip.
    let config = AttentionConfig {
        names: Some(AttentionNames::timm()),
        ..AttentionConfig::timm(16, 4, true, false)
    };
    let json = serde_json::to_string(&config).unwrap();
    let back: AttentionConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
}
