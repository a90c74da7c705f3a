//! The mixture-of-experts blocks against HF's modules, and proof that the checks
//! bite: routing in the other order (top-k, then softmax) or without Mixtral's
//! renormalisation is found at the router `gate` and named there.

use candle_core::{DType, Device, Tensor};
use replica_blocks::kv_cache::KvCache;
use replica_blocks::mla::{Mla, MlaConfig};
use replica_blocks::moe::{load_balancing_loss, Moe, MoeConfig, Routing};
use replica_blocks::rope::RopeStyle;
use replica_blocks::FeedForwardConfig;
use replica_check::{compare_trace, trace, Bundle, Namespace, Parity, Tolerance, TraceReport, WeightMap};
use replica_suite::moe::{cases, expert_activations, HfMixtralMoe, HfMla, UNSORTED_TOP_K};

mod common;

fn fixture(stem: &str) -> Bundle {
    common::fixture(&format!("moe/{stem}"))
}

/// The Mixtral block built with `config` on the fixture's weights, run traced.
fn traced_mixtral(config: &MoeConfig) -> TraceReport {
    let bundle = fixture("moe_mixtral");
    let run = Parity::new(&bundle).unwrap();
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin()).unwrap();
    let moe = weights
        .build(DType::F32, &Device::Cpu, |vb| Moe::new(config, vb))
        .unwrap();
    let x = run.input("0").unwrap();
    let (y, recorded) = trace::record(|| moe.forward(&x));
    y.unwrap();
    compare_trace(&recorded, &bundle, Tolerance::for_dtype(DType::F32))
}

fn mixtral_config() -> MoeConfig {
    fixture("moe_mixtral").config::<HfMixtralMoe>().unwrap().moe()
}

#[test]
fn every_moe_case_matches_its_reference() {
    common::assert_all_pass(&cases());
}

#[test]
fn every_stored_gradient_and_activation_is_checked() {
    for (bundle, report) in common::run(&cases()) {
        if bundle.metadata().activations.is_empty() {
            continue; // the generation bundle: token ids only
        }
        let stored = bundle.names(Namespace::ParamGrad).count() + bundle.names(Namespace::InputGrad).count();
        assert_eq!(common::rows(&report, "grad/"), stored, "{report}");
        for (name, _) in bundle.activations() {
            let checked = report.rows.iter().any(|row| row.name == format!("act/{name}"));
            // DeepSeek's unsorted top-k: set aside, with the reason, by the case.
            let unsorted = report.title.contains("deepseek") && UNSORTED_TOP_K.iter().any(|s| name.ends_with(s));
            let set_aside = unsorted || expert_activations(&bundle).contains(&name);
            assert!(
                checked || set_aside,
                "{}: activation {name} is not checked",
                report.title
            );
        }
        let float = bundle.metadata().dtype == "float32";
        let params = bundle.names(Namespace::Param).count();
        assert_eq!(
            bundle.names(Namespace::ParamGrad).count(),
            if float { params } else { 0 }
        );
        if !report.title.starts_with("mla") {
            assert!(report.rows.iter().any(|r| r.name.ends_with("gate:0")), "{report}");
        }
    }
}

#[test]
fn the_experts_are_fused_3d_parameters_as_hf_5_stores_them() {
    let bundle = fixture("moe_mixtral");
    let config = mixtral_config();
    let shape = |name: &str| bundle.get(Namespace::Param, name).unwrap().dims().to_vec();
    assert_eq!(
        shape("experts.gate_up_proj"),
        [config.num_experts, 2 * config.expert_dim, config.dim]
    );
    assert_eq!(
        shape("experts.down_proj"),
        [config.num_experts, config.dim, config.expert_dim]
    );
    assert_eq!(shape("gate.weight"), [config.num_experts, config.dim]);
}

#[test]
fn mixtral_routing_is_order_free_but_dropping_its_renormalisation_fails_at_the_router() {
    let right = mixtral_config();
    assert!(traced_mixtral(&right).passed());
    let wrong = MoeConfig {
        routing: Routing::TopKThenSoftmax,
        ..right.clone()
    };
    // Renormalised, both orders give p_i / Σ_topk p_j = exp(l_i) / Σ_topk exp(l_j) in
    // exact arithmetic, and in float32 they differ by rounding only: this order passes.
    let report = traced_mixtral(&wrong);
    assert!(report.passed(), "{report}");
    // The slip that changes Mixtral's numbers is dropping the renormalisation.
    let unnormalised = MoeConfig {
        norm_topk_prob: false,
        ..right
    };
    let report = traced_mixtral(&unnormalised);
    println!("{report}");
    assert_eq!(report.first_divergence.as_deref(), Some("gate:1"), "{report}");
    assert!(!report.passed());
}

#[test]
fn gradients_reach_the_router_through_the_routing_weights() {
    let bundle = fixture("moe_mixtral");
    let grad = bundle.get(Namespace::ParamGrad, "gate.weight").unwrap();
    let norm: f32 = grad.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!(norm > 0.0, "HF's router gets a gradient");
    // and the port's matches it: the case compares grad/param/gate.weight.
    let report = cases()[0].run(&replica_suite::fixtures_dir(), &Device::Cpu).unwrap();
    let row = report.rows.iter().find(|r| r.name == "grad/param/gate.weight").unwrap();
    assert!(row.comparison.passed(), "{report}");
}

#[test]
fn load_balancing_loss_of_uniform_routing_is_top_k() {
    // Equal logits: every probability is 1/E, so num_experts · Σ_e f_e / E = Σ_e f_e = k
    // whichever experts the top-k picks (here 0 and 1 every time).
    let logits = Tensor::zeros((8, 4), DType::F32, &Device::Cpu).unwrap();
    let loss: f32 = load_balancing_loss(&[logits], 4, 2).unwrap().to_scalar().unwrap();
    assert!((loss - 2.0).abs() < 1e-6, "{loss}");
}

#[test]
fn bad_configs_are_refused_by_field() {
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    for (config, field) in [
        (MoeConfig::mixtral(16, 8, 4, 5), "top_k"),
        (MoeConfig::mixtral(16, 8, 0, 1), "num_experts"),
        (MoeConfig::mixtral(0, 8, 4, 2), "dim"),
        (
            MoeConfig {
                routed_scaling_factor: f64::NAN,
                ..MoeConfig::mixtral(16, 8, 4, 2)
            },
            "routed_scaling_factor",
        ),
    ] {
        let err = Moe::new(&config, vb.clone()).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn top_k_then_softmax_in_deepseek_routing_fails_at_the_experts() {
    // DeepSeek-V2 does not renormalise, so the order matters there; its per-slot
    // router outputs are set aside (unsorted top-k), and the experts' sum catches it.
    let bundle = fixture("moe_deepseek_v2");
    let right = bundle
        .config::<replica_suite::moe::HfDeepseekMoe>()
        .unwrap()
        .moe()
        .unwrap();
    let run = |config: &MoeConfig| {
        let parity = Parity::new(&bundle).unwrap();
        let weights = WeightMap::new()
            .apply(parity.params().clone(), bundle.origin())
            .unwrap();
        let moe = weights
            .build(DType::F32, &Device::Cpu, |vb| Moe::new(config, vb))
            .unwrap();
        let x = parity.input("0").unwrap();
        let unsorted = replica_check::TraceMap::new().ignore(r"^gate:[12]$");
        let (y, recorded) = trace::record(|| trace::mapped(&unsorted, || moe.forward(&x)));
        y.unwrap();
        compare_trace(&recorded, &bundle, Tolerance::for_dtype(DType::F32))
    };
    assert!(run(&right).passed());
    let wrong = MoeConfig {
        routing: Routing::TopKThenSoftmax,
        ..right
    };
    let report = run(&wrong);
    println!("{report}");
    assert_eq!(report.first_divergence.as_deref(), Some("experts"), "{report}");
}

#[test]
fn every_fixture_comes_from_the_script_and_stays_small() {
    let script = std::fs::read_to_string(replica_suite::fixtures_dir().join("../../python/fixtures_moe.py")).unwrap();
    for case in cases() {
        let path = case.fixture_path(&replica_suite::fixtures_dir());
        let file = case.fixture.strip_prefix("moe/").expect("under moe/");
        assert!(script.contains(&format!("\"{file}.safetensors\"")), "{}", case.name);
        let bytes = std::fs::metadata(&path).unwrap().len();
        // A block's bundle, or a whole model's (the models' fixtures hold every layer).
        let limit = if case.fixture.contains("/moe_") {
            60_000
        } else {
            320_000
        };
        assert!(bytes < limit, "{}: {bytes} bytes", case.name);
    }
}

/// The Mixtral fixture's decoder with `planted` applied to its spec, traced.
fn mixtral_with(planted: impl FnOnce(&mut replica_models::decoder::DecoderSpec)) -> TraceReport {
    use replica_models::decoder::{CausalDecoder, DecoderConfig};
    use replica_models::{MixtralConfig, ModelConfig};
    let bundle = fixture("mixtral");
    let config = MixtralConfig::from_value(&bundle.metadata().config, bundle.origin()).unwrap();
    let mut spec = config.decoder_spec();
    planted(&mut spec);
    let model = WeightMap::new()
        .apply(bundle.namespace(Namespace::Param), bundle.origin())
        .unwrap()
        .build(DType::F32, &Device::Cpu, |vb| CausalDecoder::new(&spec, vb))
        .unwrap();
    let (logits, recorded) = trace::record(|| model.logits_t(bundle.input("0").unwrap(), None, false));
    logits.unwrap();
    let report = compare_trace(&recorded, &bundle, Tolerance::for_dtype(DType::F32));
    println!("{report}");
    report
}

#[test]
fn mixtral_without_renormalised_routing_diverges_at_the_first_router() {
    assert!(mixtral_with(|_| {}).passed());
    let report = mixtral_with(|spec| {
        if let FeedForwardConfig::Moe(moe) = &mut spec.block.feed_forward {
            moe.norm_topk_prob = false;
        }
    });
    assert_eq!(
        report.first_divergence.as_deref(),
        Some("model.layers.0.mlp.gate:1"),
        "{report}"
    );
}

#[test]
fn mixtral_with_top_1_routing_diverges_at_the_first_router() {
    let report = mixtral_with(|spec| {
        if let FeedForwardConfig::Moe(moe) = &mut spec.block.feed_forward {
            moe.top_k = 1;
        }
    });
    assert_eq!(
        report.first_divergence.as_deref(),
        Some("model.layers.0.mlp.gate:1"),
        "{report}"
    );
}

#[test]
fn the_aux_loss_is_hf_load_balancing_loss() {
    // The f32 case compares `aux_loss`; here its value is also not trivial.
    let bundle = fixture("mixtral");
    let aux: f32 = bundle.output("aux_loss").unwrap().to_scalar().unwrap();
    let k = 2.0;
    assert!(aux > 0.0 && (aux - k).abs() > 1e-3, "{aux}");
    let report = cases()
        .into_iter()
        .find(|c| c.name == "mixtral_causal_lm")
        .unwrap()
        .run(&replica_suite::fixtures_dir(), &Device::Cpu)
        .unwrap();
    for name in ["output/aux_loss", "grad/param/model.layers.0.mlp.gate.weight"] {
        let row = report.rows.iter().find(|r| r.name == name).unwrap();
        assert!(row.comparison.passed(), "{report}");
    }
}

/// An MLA fixture's attention built with `config`, traced.
fn traced_mla(stem: &str, plant: impl FnOnce(&mut MlaConfig)) -> TraceReport {
    let bundle = fixture(stem);
    let mut config = bundle.config::<HfMla>().unwrap().mla().unwrap();
    plant(&mut config);
    let run = Parity::new(&bundle).unwrap();
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin()).unwrap();
    let mla = weights
        .build(DType::F32, &Device::Cpu, |vb| Mla::new(&config, vb.pp("self_attn")))
        .unwrap();
    let x = run.input("0").unwrap();
    let (y, recorded) = trace::record(|| mla.forward_with_weights_t(&x, None, false));
    y.unwrap();
    let report = compare_trace(&recorded, &bundle, Tolerance::for_dtype(DType::F32));
    println!("{report}");
    report
}

#[test]
fn mla_rotating_halves_instead_of_pairs_diverges_inside_self_attn() {
    assert!(traced_mla("mla", |_| {}).passed());
    // HF's DeepSeek rotates neighbouring features as complex numbers, not LLaMA's halves.
    let report = traced_mla("mla", |config| config.rope.style = RopeStyle::HalfSplit);
    // The projections and the latent match; the first module after the scores is o_proj.
    assert_eq!(report.first_divergence.as_deref(), Some("self_attn.o_proj"), "{report}");
}

#[test]
fn mla_without_the_yarn_mscale_on_the_softmax_diverges_inside_self_attn() {
    assert!(traced_mla("mla_yarn", |_| {}).passed());
    let report = traced_mla("mla_yarn", |config| {
        config.softmax_scale = Some((config.qk_head_dim() as f64).powf(-0.5));
    });
    assert_eq!(report.first_divergence.as_deref(), Some("self_attn.o_proj"), "{report}");
}

#[test]
fn mla_decodes_through_its_latent_cache_as_it_runs_whole() {
    let bundle = fixture("mla");
    let config = bundle.config::<HfMla>().unwrap().mla().unwrap();
    let run = Parity::new(&bundle).unwrap();
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin()).unwrap();
    let mla = weights
        .build(DType::F32, &Device::Cpu, |vb| Mla::new(&config, vb.pp("self_attn")))
        .unwrap();
    let x = run.input("0").unwrap();
    let whole = mla.forward_t(&x, None, false).unwrap();
    let mut cache = KvCache::new();
    let mut parts = vec![mla
        .forward_t(&x.narrow(1, 0, 2).unwrap(), Some(&mut cache), false)
        .unwrap()];
    for t in 2..x.dim(1).unwrap() {
        parts.push(
            mla.forward_t(&x.narrow(1, t, 1).unwrap(), Some(&mut cache), false)
                .unwrap(),
        );
    }
    // The cache holds the compressed latent and the shared rotary key, not per-head keys.
    assert_eq!(cache.keys().unwrap().dims(), [2, 1, 5, config.kv_lora_rank]);
    assert_eq!(cache.values().unwrap().dims(), [2, 1, 5, config.qk_rope_head_dim]);
    let stepped = Tensor::cat(&parts, 1).unwrap();
    let diff: f32 = (stepped - &whole)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
    // And the whole pass is the reference's output.
    let expected = bundle.output("0").unwrap();
    let err: f32 = (whole - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(err < 1e-5, "{err}");
}

#[test]
fn bad_mla_configs_are_refused_by_field() {
    let good = fixture("mla").config::<HfMla>().unwrap().mla().unwrap();
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    assert!(Mla::new(&good, vb.pp("self_attn")).is_ok());
    let odd_rope = MlaConfig {
        qk_rope_head_dim: 3,
        ..good.clone()
    };
    for (config, field) in [
        (
            MlaConfig {
                heads: 0,
                ..good.clone()
            },
            "heads",
        ),
        (
            MlaConfig {
                kv_lora_rank: 0,
                ..good.clone()
            },
            "kv_lora_rank",
        ),
        (
            MlaConfig {
                q_lora_rank: Some(0),
                ..good.clone()
            },
            "q_lora_rank",
        ),
        (odd_rope, "qk_rope_head_dim"),
        (
            MlaConfig {
                softmax_scale: Some(f64::NAN),
                ..good.clone()
            },
            "softmax_scale",
        ),
    ] {
        let err = Mla::new(&config, vb.pp("self_attn")).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

/// The DeepSeek-V2 fixture's model with `plant` applied to its config, traced with
/// the unsorted top-k's per-slot activations left out.
fn deepseek_with(plant: impl FnOnce(&mut serde_json::Value)) -> TraceReport {
    use replica_models::{DeepseekV2, DeepseekV2Config, LoadCheckpoint, ModelConfig};
    let bundle = fixture("deepseek_v2");
    let mut json = bundle.metadata().config.clone();
    plant(&mut json);
    let config = DeepseekV2Config::from_value(&json, bundle.origin()).unwrap();
    let model = DeepseekV2::from_tensors(
        &config,
        bundle.namespace(Namespace::Param),
        bundle.origin(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let unsorted = replica_check::TraceMap::new().ignore(r"\.mlp\.gate:[12]$");
    let ids = bundle.input("0").unwrap();
    let (logits, recorded) = trace::record(|| trace::mapped(&unsorted, || model.forward(ids, None)));
    logits.unwrap();
    let report = compare_trace(&recorded, &bundle, Tolerance::for_dtype(DType::F32));
    println!("{report}");
    report
}

#[test]
fn deepseek_v2_without_its_routed_scaling_factor_diverges_at_the_experts() {
    assert!(deepseek_with(|_| {}).passed());
    let report = deepseek_with(|config| config["routed_scaling_factor"] = 1.0.into());
    assert_eq!(
        report.first_divergence.as_deref(),
        Some("model.layers.1.mlp.experts"),
        "{report}"
    );
}

#[test]
fn deepseek_v2_without_yarn_diverges_in_the_first_self_attn() {
    let report = deepseek_with(|config| {
        config["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 10000.0});
    });
    // The projections and the latent match; the rotary part and the scale change the scores.
    assert_eq!(
        report.first_divergence.as_deref(),
        Some("model.layers.0.self_attn.o_proj"),
        "{report}"
    );
}

#[test]
fn deepseek_v2_ignores_norm_topk_prob_as_hf_5_does() {
    // HF 5's DeepSeek-V2 router never renormalises, whatever `norm_topk_prob` says.
    let report = deepseek_with(|config| config["norm_topk_prob"] = true.into());
    assert!(report.passed(), "{report}");
}
