//! The basic blocks on their own (their parity cases are in `replica-suite`): they
//! trace under their module path, bad inputs give clear errors, dropout and
//! drop-path behave in training and evaluation as torch/timm do, and
//! configurations load from reference `config.json` snippets.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use replica_blocks::class_token::{ClassToken, ClassTokenConfig};
use replica_blocks::drop_path::{DropPath, DropPathConfig};
use replica_blocks::dropout::{Dropout, DropoutConfig};
use replica_blocks::glu::{GluMlp, GluMlpConfig, GluMlpNames, GluProjections};
use replica_blocks::layer_scale::{LayerScale, LayerScaleConfig};
use replica_blocks::mlp::{Mlp, MlpConfig, MlpNames};
use replica_blocks::patch_embed::{PatchEmbed, PatchEmbedConfig, PatchEmbedNames, Size2};
use replica_blocks::{Activation, Embedding, EmbeddingConfig};
use replica_check::trace;

fn zeros() -> VarBuilder<'static> {
    VarBuilder::zeros(DType::F32, &Device::Cpu)
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

// --- Parity with the references ---------------------------------------------

// --- Planted bugs --------------------------------------------------------------

#[test]
fn a_block_under_a_path_traces_under_that_path() {
    let vb = zeros().pp("blocks").pp("0").pp("mlp");
    let mlp = Mlp::new(&MlpConfig::new(4, 8), vb).unwrap();
    let (y, recorded) = trace::record(|| mlp.forward(&randn(&[2, 4])));
    y.unwrap();
    let names: Vec<&str> = recorded.names().collect();
    assert_eq!(
        names,
        [
            "blocks.0.mlp.fc1",
            "blocks.0.mlp.act",
            "blocks.0.mlp.drop1",
            "blocks.0.mlp.norm",
            "blocks.0.mlp.fc2",
            "blocks.0.mlp.drop2",
            "blocks.0.mlp"
        ]
    );
}

// --- Dropout and DropPath ------------------------------------------------------

#[test]
fn linear_is_a_candle_module_under_either_compute() {
    let (w, b, x) = (randn(&[5, 3]), randn(&[5]), randn(&[2, 4, 3]));
    let layer = replica_blocks::Linear::from_weights(w.clone(), Some(b.clone()), "proj");
    let y = candle_core::Module::forward(&layer, &x).unwrap();
    assert_eq!(values(&y), values(&layer.forward(&x).unwrap()));
    // Kernels and composition compute the same sums: equal to rounding.
    let composed = replica_blocks::with_compute(replica_blocks::Compute::Composition, || layer.forward(&x)).unwrap();
    let expected = x.broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
    for (name, t) in [("kernels", &y), ("composition", &composed)] {
        for (a, e) in values(t).iter().zip(values(&expected)) {
            assert!((a - e).abs() <= 1e-5 * (1.0 + e.abs()), "{name}: {a} vs {e}");
        }
    }
}

#[test]
fn dropout_in_eval_is_the_identity_bit_for_bit() {
    let x = randn(&[64, 33]);
    let drop = Dropout::new(&DropoutConfig::new(0.5), zeros()).unwrap();
    let y = drop.forward_t(&x, false).unwrap();
    let bits = |t: &Tensor| values(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&y), bits(&x));
    let path = DropPath::new(&DropPathConfig::new(0.5), zeros()).unwrap();
    assert_eq!(bits(&path.forward_t(&x, false).unwrap()), bits(&x));
    // In f16 too (f16 -> f32 is exact, so equal f32 bits mean equal f16 bits).
    let half = x.to_dtype(DType::F16).unwrap();
    assert_eq!(bits(&drop.forward_t(&half, false).unwrap()), bits(&half));
}

#[test]
fn dropout_in_training_zeroes_about_p_and_scales_the_rest() {
    let p = 0.3;
    let x = (randn(&[100, 100]).abs().unwrap() + 0.5).unwrap();
    let drop = Dropout::new(&DropoutConfig::new(p), zeros()).unwrap();
    let (xs, a, b) = (
        values(&x),
        values(&drop.forward_t(&x, true).unwrap()),
        values(&drop.forward_t(&x, true).unwrap()),
    );
    let zeros_in = |y: &[f32]| y.iter().filter(|v| **v == 0.0).count() as f64 / y.len() as f64;
    // 10_000 Bernoulli(0.3) draws: the standard deviation of the fraction is 0.0046.
    assert!((zeros_in(&a) - p).abs() < 0.03, "{}", zeros_in(&a));
    for (y, x) in a.iter().zip(&xs).filter(|(y, _)| **y != 0.0) {
        let expected = x / (1.0 - p as f32);
        assert!((y - expected).abs() <= 1e-6 * expected.abs(), "{y} vs {expected}");
    }
    assert_ne!(a, b, "two training passes draw different masks");
}

#[test]
fn dropout_gradients_follow_the_mask() {
    let x = Var::ones((50, 40), DType::F32, &Device::Cpu).unwrap();
    let drop = Dropout::new(&DropoutConfig::new(0.25), zeros()).unwrap();
    let y = drop.forward_t(x.as_tensor(), true).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    // With x = 1, y is the scaled mask, and so is dy/dx.
    assert_eq!(values(grads.get(x.as_tensor()).unwrap()), values(&y));
}

#[test]
fn dropout_extremes_and_bad_probabilities() {
    let x = randn(&[8, 8]);
    let all = Dropout::new(&DropoutConfig::new(1.0), zeros()).unwrap();
    assert!(values(&all.forward_t(&x, true).unwrap()).iter().all(|v| *v == 0.0));
    let none = Dropout::new(&DropoutConfig::new(0.0), zeros()).unwrap();
    assert_eq!(values(&none.forward_t(&x, true).unwrap()), values(&x));
    for p in [-0.1, 1.5, f64::NAN] {
        let err = Dropout::new(&DropoutConfig::new(p), zeros().pp("drop"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dropout `drop`") && err.contains("[0, 1]"), "{err}");
        let err = DropPath::new(&DropPathConfig::new(p), zeros()).unwrap_err().to_string();
        assert!(err.contains("drop_path") && err.contains("[0, 1]"), "{err}");
    }
}

#[test]
fn drop_path_in_training_drops_whole_samples() {
    let p = 0.25;
    let x = (randn(&[2000, 3, 4]).abs().unwrap() + 0.5).unwrap();
    let block = DropPath::new(&DropPathConfig::new(p), zeros()).unwrap();
    let y = block.forward_t(&x, true).unwrap();
    let ratio = values(&(y / &x).unwrap());
    let mut dropped = 0;
    for sample in ratio.chunks(12) {
        // One draw per sample: all zero, or all scaled by 1 / keep_prob.
        if sample[0] == 0.0 {
            dropped += 1;
            assert!(sample.iter().all(|r| *r == 0.0), "{sample:?}");
        } else {
            assert!(sample.iter().all(|r| (r - 1.0 / 0.75).abs() < 1e-5), "{sample:?}");
        }
    }
    let fraction = dropped as f64 / 2000.0;
    // Standard deviation of the fraction: 0.0097.
    assert!((fraction - p).abs() < 0.05, "{fraction}");
    let again = block.forward_t(&x, true).unwrap();
    assert_ne!(values(&again), values(&block.forward_t(&x, true).unwrap()));

    let unscaled = DropPath::new(
        &DropPathConfig {
            scale_by_keep: false,
            ..DropPathConfig::new(p)
        },
        zeros(),
    )
    .unwrap();
    let ratio = values(&(unscaled.forward_t(&x, true).unwrap() / &x).unwrap());
    assert!(ratio.iter().all(|r| *r == 0.0 || *r == 1.0));
    let err = block
        .forward_t(&Tensor::new(1f32, &Device::Cpu).unwrap(), true)
        .unwrap_err();
    assert!(err.to_string().contains("batch dimension"), "{err}");
}

#[test]
fn mlp_dropout_is_active_only_in_training() {
    let config = MlpConfig {
        dropout: 0.5,
        ..MlpConfig::new(8, 32)
    };
    let mlp = Mlp::new(
        &config,
        VarBuilder::from_varmap(&candle_nn::VarMap::new(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = randn(&[4, 8]);
    assert_eq!(
        values(&mlp.forward_t(&x, false).unwrap()),
        values(&mlp.forward(&x).unwrap())
    );
    assert_ne!(
        values(&mlp.forward_t(&x, true).unwrap()),
        values(&mlp.forward(&x).unwrap())
    );
}

// --- Bad inputs: clear errors, never panics -----------------------------------------

fn patch_embed(config: &PatchEmbedConfig) -> PatchEmbed {
    PatchEmbed::new(config, zeros().pp("patch_embed")).unwrap()
}

#[test]
fn patch_embed_refuses_bad_images_clearly() {
    let config = PatchEmbedConfig {
        strict_img_size: false,
        ..PatchEmbedConfig::new(4, 3, 8)
    };
    let block = patch_embed(&config);
    let error = |x: Tensor| block.forward(&x).unwrap_err().to_string();

    let err = error(randn(&[1, 3, 9, 8]));
    assert!(
        err.contains("patch_embed `patch_embed`") && err.contains("9x8 is not divisible by the patch size 4x4"),
        "{err}"
    );
    let err = error(randn(&[1, 2, 8, 8]));
    assert!(err.contains("2 channels") && err.contains("expects 3"), "{err}");
    let err = error(randn(&[3, 8, 8]));
    assert!(
        err.contains("[batch, channels, height, width]") && err.contains("[3, 8, 8]"),
        "{err}"
    );
    assert_eq!(block.forward(&randn(&[2, 3, 8, 12])).unwrap().dims(), [2, 6, 8]);

    let strict = patch_embed(&PatchEmbedConfig {
        img_size: Some(Size2::square(8)),
        ..PatchEmbedConfig::new(4, 3, 8)
    });
    let err = strict.forward(&randn(&[1, 3, 12, 8])).unwrap_err().to_string();
    assert!(err.contains("12x8") && err.contains("built for 8x8"), "{err}");

    let err = PatchEmbed::new(&PatchEmbedConfig::new(0, 3, 8), zeros())
        .unwrap_err()
        .to_string();
    assert!(err.contains("patch size must be positive"), "{err}");
}

#[test]
fn patch_embed_grid_output_and_hf_names() {
    let config = PatchEmbedConfig {
        flatten: false,
        names: PatchEmbedNames::hf_vit(),
        ..PatchEmbedConfig::new((2, 4), 3, 8)
    };
    let vb = zeros().pp("embeddings").pp("patch_embeddings");
    let block = PatchEmbed::new(&config, vb).unwrap();
    let (y, recorded) = trace::record(|| block.forward(&randn(&[2, 3, 8, 8])));
    assert_eq!(y.unwrap().dims(), [2, 8, 4, 2]);
    let names: Vec<&str> = recorded.names().collect();
    assert_eq!(
        names,
        ["embeddings.patch_embeddings.projection", "embeddings.patch_embeddings"]
    );
}

#[test]
fn other_blocks_refuse_bad_shapes_clearly() {
    let token = ClassToken::new(&ClassTokenConfig { dim: 8 }, zeros()).unwrap();
    assert_eq!(token.forward(&randn(&[2, 5, 8])).unwrap().dims(), [2, 6, 8]);
    let err = token.forward(&randn(&[2, 8])).unwrap_err().to_string();
    assert!(err.contains("[batch, tokens, 8]") && err.contains("[2, 8]"), "{err}");
    let err = token.forward(&randn(&[2, 5, 4])).unwrap_err().to_string();
    assert!(err.contains("8 features") && err.contains("has 4"), "{err}");

    let scale = LayerScale::new(&LayerScaleConfig::new(8), zeros().pp("ls1")).unwrap();
    let err = scale.forward(&randn(&[2, 5, 4])).unwrap_err().to_string();
    assert!(err.contains("layer_scale `ls1`") && err.contains("8 channels"), "{err}");
    assert!(scale.forward(&Tensor::new(1f32, &Device::Cpu).unwrap()).is_err());

    let mlp = Mlp::new(&MlpConfig::new(8, 16), zeros().pp("mlp")).unwrap();
    let err = mlp.forward(&randn(&[2, 5])).unwrap_err().to_string();
    assert!(err.contains("mlp.fc1") && err.contains("expects 8"), "{err}");
    let glu = GluMlp::new(&GluMlpConfig::swiglu(8, 16), zeros().pp("mlp")).unwrap();
    let err = glu.forward(&randn(&[2, 5])).unwrap_err().to_string();
    assert!(err.contains("mlp.gate_proj") && err.contains("expects 8"), "{err}");

    let config = MlpConfig {
        norm: Some(replica_blocks::NormKind::LayerNorm),
        names: MlpNames::gpt2(),
        ..MlpConfig::new(8, 16)
    };
    let err = Mlp::new(&config, zeros()).unwrap_err().to_string();
    assert!(err.contains("needs a name"), "{err}");
}

// --- Configurations from reference config.json snippets -------------------------------

#[test]
fn llama_mlp_config_reads_a_hf_config() {
    let config: GluMlpConfig =
        serde_json::from_str(r#"{"hidden_size": 8, "intermediate_size": 16, "hidden_act": "silu"}"#).unwrap();
    assert_eq!((config.dim, config.hidden_dim, config.out_dim()), (8, 16, 8));
    assert_eq!(config.activation, Activation::Silu);
    assert!(!config.bias);
    assert_eq!(config.names, GluMlpNames::llama());
    let mlp = GluMlp::new(&config, zeros()).unwrap();
    assert_eq!(mlp.forward(&randn(&[2, 3, 8])).unwrap().dims(), [2, 3, 8]);

    // A whole LLaMA config.json: unrelated fields are ignored.
    let config: GluMlpConfig = serde_json::from_str(
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
            "hidden_act": "gelu_pytorch_tanh", "mlp_bias": true, "num_attention_heads": 2, "rms_norm_eps": 1e-6}"#,
    )
    .unwrap();
    assert_eq!(config.activation, Activation::GeluTanh);
    assert!(config.bias);
}

#[test]
fn mlp_config_reads_gpt2_and_timm_configs() {
    let gpt2: MlpConfig = serde_json::from_str(
        r#"{"n_embd": 8, "n_inner": null, "activation_function": "gelu_new", "resid_pdrop": 0.1}"#,
    )
    .unwrap();
    assert_eq!((gpt2.dim, gpt2.hidden_dim(), gpt2.out_dim()), (8, 32, 8));
    assert_eq!(gpt2.activation, Activation::GeluTanh);
    assert_eq!(gpt2.dropout, 0.1);

    let timm: MlpConfig = serde_json::from_str(
        r#"{"in_features": 8, "hidden_features": 24, "out_features": 4, "act_layer": "quick_gelu", "drop": 0.2, "bias": false}"#,
    )
    .unwrap();
    assert_eq!((timm.dim, timm.hidden_dim(), timm.out_dim()), (8, 24, 4));
    assert_eq!(timm.activation, Activation::QuickGelu);
    assert!(!timm.bias);
    assert_eq!(timm.names, MlpNames::timm());

    let err = serde_json::from_str::<MlpConfig>(r#"{"n_embd": 8, "activation_function": "mish"}"#).unwrap_err();
    assert!(err.to_string().contains("mish"), "{err}");
}

#[test]
fn glu_names_round_trip_through_json() {
    let names = GluMlpNames::timm_glu_mlp(false);
    let json = serde_json::to_string(&names).unwrap();
    assert!(json.contains(r#""fused":{"name":"fc1","gate_last":false}"#), "{json}");
    assert_eq!(serde_json::from_str::<GluMlpNames>(&json).unwrap(), names);
    assert!(matches!(
        GluMlpNames::timm_swiglu().projections,
        GluProjections::Split { .. }
    ));
}

#[test]
fn patch_embed_config_reads_hf_vit_and_timm_configs() {
    let hf: PatchEmbedConfig = serde_json::from_str(
        r#"{"image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_size": 768, "layer_norm_eps": 1e-12}"#,
    )
    .unwrap();
    assert_eq!(hf.img_size, Some(Size2::square(224)));
    assert_eq!((hf.patch_size, hf.in_chans, hf.embed_dim), (Size2::square(16), 3, 768));
    assert_eq!(hf.num_patches(), Some(196));

    let timm: PatchEmbedConfig = serde_json::from_str(
        r#"{"img_size": [32, 48], "patch_size": [8, 16], "embed_dim": 64, "norm_layer": "layer_norm", "bias": false}"#,
    )
    .unwrap();
    assert_eq!(timm.grid_size(), Some(Size2::new(4, 3)));
    assert_eq!(timm.in_chans, 3);
    assert_eq!(timm.norm, Some(replica_blocks::NormKind::LayerNorm));
    assert_eq!(
        serde_json::to_value(timm.patch_size).unwrap(),
        serde_json::json!([8, 16])
    );

    let err = serde_json::from_str::<PatchEmbedConfig>(r#"{"patch_size": "big", "embed_dim": 8}"#).unwrap_err();
    assert!(err.to_string().contains("an integer or a pair"), "{err}");
}

#[test]
fn small_configs_read_reference_fields() {
    let drop: DropoutConfig = serde_json::from_str(r#"{"hidden_dropout_prob": 0.1}"#).unwrap();
    assert_eq!(drop.p, 0.1);
    let drop: DropoutConfig = serde_json::from_str(r#"{"p": 0.2, "inplace": false}"#).unwrap();
    assert_eq!(drop.p, 0.2);
    let path: DropPathConfig = serde_json::from_str(r#"{"drop_prob": 0.1}"#).unwrap();
    assert!(path.scale_by_keep && path.drop_prob == 0.1);
    let scale: LayerScaleConfig = serde_json::from_str(r#"{"hidden_size": 8, "layerscale_value": 1.0}"#).unwrap();
    assert_eq!((scale.dim, scale.init_values), (8, 1.0));
    let scale: LayerScaleConfig = serde_json::from_str(r#"{"dim": 8}"#).unwrap();
    assert_eq!(scale.init_values, 1e-5);
    // A fresh LayerScale starts at init_values.
    let block = LayerScale::new(
        &scale,
        VarBuilder::from_varmap(&candle_nn::VarMap::new(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    assert!(values(block.gamma()).iter().all(|g| *g == 1e-5));
    let token: ClassTokenConfig = serde_json::from_str(r#"{"hidden_size": 8}"#).unwrap();
    assert_eq!(token.dim, 8);
}

/// Torch's `padding_idx` (HF's `pad_token_id`): the padding row embeds as any other,
/// and no gradient reaches it.
#[test]
fn the_padding_row_gets_no_gradient() {
    let table = Var::from_tensor(&randn(&[5, 3])).unwrap();
    let vb = VarBuilder::from_tensors(
        [("weight".to_string(), table.as_tensor().clone())].into(),
        DType::F32,
        &Device::Cpu,
    );
    let ids = Tensor::new(&[[1u32, 0, 0, 3]], &Device::Cpu).unwrap();
    let config = EmbeddingConfig {
        padding_idx: Some(0),
        ..EmbeddingConfig::new(5, 3)
    };
    let padded = Embedding::new(&config, vb.clone()).unwrap();
    let plain = Embedding::new(&EmbeddingConfig::new(5, 3), vb).unwrap();
    let y = padded.forward(&ids).unwrap();
    assert_eq!(values(&y), values(&plain.forward(&ids).unwrap()));
    let grads = y.sum_all().unwrap().backward().unwrap();
    let grad = grads.get(table.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(grad[0], [0.0; 3], "the padding row");
    assert_eq!(grad[1], [1.0; 3]);
    assert_eq!(grad[3], [1.0; 3]);
}

// --- Configs built in code ------------------------------------------------------

/// A block's `new` admits its config (`replica_check::admit`) before it asks for a
/// tensor: a value it cannot take is refused by name, and a size over the memory
/// budget before anything is allocated (the zeros backend would allocate it).
#[test]
fn configs_built_in_code_are_refused_before_anything_is_allocated() {
    use replica_blocks::{Attention, AttentionConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
    let err = |result: candle_core::Result<()>| result.unwrap_err().to_string();
    let nan_eps = LayerNormConfig {
        eps: f64::NAN,
        ..LayerNormConfig::new(16)
    };
    let message = err(LayerNorm::new(&nan_eps, zeros().pp("ln")).map(drop));
    assert_eq!(message, "layer_norm `ln`: `eps` must be a finite number >= 0, got NaN");
    let message = err(Attention::new(&AttentionConfig::new(16, 0), zeros().pp("attn")).map(drop));
    assert_eq!(message, "attention `attn`: heads must be positive");
    let nan_dropout = MlpConfig {
        dropout: f64::NAN,
        ..MlpConfig::new(16, 32)
    };
    let message = err(Mlp::new(&nan_dropout, zeros()).map(drop));
    assert!(message.contains("`dropout` must be in [0, 1], got NaN"), "{message}");
    let message = err(Linear::new(&LinearConfig::new(1 << 40, 1 << 40), zeros().pp("fc")).map(drop));
    assert!(
        message.starts_with("linear `fc`: config field `in_features` = 1099511627776 needs ")
            && message.ends_with("memory budget (--max-memory / REPLICA_MAX_MEMORY)"),
        "{message}"
    );
    let message = err(Embedding::new(&EmbeddingConfig::new(0, 8), zeros()).map(drop));
    assert!(message.contains("`vocab` must be positive, got 0"), "{message}");
}
