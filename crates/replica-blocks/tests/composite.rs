//! Whole transformer layers and differential attention on their own (the checks on
//! the reference fixtures are in `replica-suite`): module paths, nested recordings,
//! attention probabilities, and bad configurations that must give clear errors.

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use replica_blocks::activation::Activation;
use replica_blocks::attention::AttentionConfig;
use replica_blocks::diff_attention::{DiffAttention, DiffAttentionConfig};
use replica_blocks::glu::GluMlpConfig;
use replica_blocks::mlp::MlpConfig;
use replica_blocks::transformer_block::{
    BlockNames, FeedForwardConfig, ResidualLayout, TransformerBlock, TransformerBlockConfig,
};
use replica_check::{trace, TraceMap};

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

// --- Differential attention ---------------------------------------------------------

#[test]
fn diff_attention_refuses_bad_configs_clearly() {
    let error = |config: DiffAttentionConfig| {
        DiffAttention::new(&config, zeros().pp("layers").pp("0").pp("attn"))
            .unwrap_err()
            .to_string()
    };
    let err = error(DiffAttentionConfig::new(30, 4, 0));
    assert!(
        err.contains("diff_attention `layers.0.attn`") && err.contains("dim 30") && err.contains("two equal halves"),
        "{err}"
    );
    let err = error(DiffAttentionConfig {
        kv_heads: Some(3),
        ..DiffAttentionConfig::new(32, 4, 0)
    });
    assert!(err.contains("4 heads cannot share 3 key/value heads"), "{err}");
    let attention = DiffAttention::new(&DiffAttentionConfig::new(32, 2, 0), zeros()).unwrap();
    let err = attention.forward(&randn(&[2, 32]), None).unwrap_err().to_string();
    assert!(err.contains("[batch, seq, dim]"), "{err}");
    // Rotary off: still a valid layer.
    let plain = DiffAttentionConfig {
        rope_theta: None,
        ..DiffAttentionConfig::new(32, 2, 0)
    };
    let attention = DiffAttention::new(&plain, zeros()).unwrap();
    assert_eq!(attention.forward(&randn(&[1, 3, 32]), None).unwrap().dims(), [1, 3, 32]);
}

#[test]
fn diff_attention_config_reads_the_reference_arguments() {
    let config: DiffAttentionConfig =
        serde_json::from_str(r#"{"embed_dim": 64, "depth": 1, "num_heads": 4, "num_kv_heads": null}"#).unwrap();
    assert_eq!(config, DiffAttentionConfig::new(64, 4, 1));
    assert_eq!((config.head_dim(), config.kv_heads()), (8, 4));
}

// --- The residual layout ------------------------------------------------------------

// --- Training and evaluation ----------------------------------------------------------

// --- Traces ---------------------------------------------------------------------------

#[test]
fn an_mlp_on_the_layers_own_path_does_not_collide_with_the_layer() {
    let config = TransformerBlockConfig::torch_encoder(8, 2, 16, 0.0, Activation::Relu, 1e-5, false);
    let block = TransformerBlock::new(&config, zeros().pp("layers").pp("3")).unwrap();
    // torch's `MultiheadAttention` returns `(output, None)`.
    let torch = TraceMap::new().element(r"\.self_attn$", 0);
    let (y, recorded) = trace::record(|| trace::mapped(&torch, || block.forward(&randn(&[1, 3, 8]), None, None)));
    y.unwrap();
    let names: Vec<&str> = recorded.names().collect();
    assert_eq!(
        names,
        [
            "layers.3.self_attn.q_proj",
            "layers.3.self_attn.k_proj",
            "layers.3.self_attn.v_proj",
            "layers.3.self_attn.out_proj",
            "layers.3.self_attn:0",
            "layers.3.dropout1",
            "layers.3.norm1",
            "layers.3.linear1",
            "layers.3.dropout",
            "layers.3.linear2",
            "layers.3.dropout2",
            "layers.3.norm2",
            "layers.3",
        ]
    );
}

#[test]
fn a_mapped_layer_traced_inside_a_nested_recording_is_recorded_once() {
    let config = TransformerBlockConfig {
        names: BlockNames::gpt2(),
        ..TransformerBlockConfig::timm(8, 2, 2.0, true, false, None)
    };
    let block = TransformerBlock::new(&config, zeros().pp("h").pp("0")).unwrap();
    let x = randn(&[1, 4, 8]);
    // HF's eager attention returns `(output, probabilities)`; the layer records the pair
    // when it computes both, and the map names a plain output as the tuple's element 0.
    let hf = TraceMap::new().element(r"\.attn$", 0);
    let eager = || trace::mapped(&hf, || block.forward_with_weights(&x, None, None).unwrap());
    let (_, plain) = trace::record(eager);
    let ((), nested) = trace::record_nested(|| {
        let _ = trace::record(eager);
    });
    let names: Vec<&str> = nested.names().collect();
    assert_eq!(names, plain.names().collect::<Vec<_>>());
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    assert!(
        names.contains(&"h.0.attn:0") && names.contains(&"h.0.attn:1"),
        "{names:?}"
    );
    assert!(!names.contains(&"h.0.attn"), "{names:?}");
    // Without the probabilities (HF's sdpa), the output alone, as element 0.
    let (_, sdpa) = trace::record(|| trace::mapped(&hf, || block.forward(&x, None, None).unwrap()));
    assert!(sdpa.get("h.0.attn:0").is_some() && sdpa.get("h.0.attn:1").is_none());
    // Unmapped, the block records its own output under its own path.
    let (_, own) = trace::record(|| block.forward(&x, None, None).unwrap());
    assert!(own.get("h.0.attn").is_some() && own.get("h.0.attn:0").is_none());
    // A second call of the same layer in one trace is numbered, as torch's hooks number it.
    let (_, twice) = trace::record(|| {
        eager();
        eager();
    });
    assert!(twice.get("h.0.attn#1:1").is_some() && twice.get("h.0#1").is_some());
}

#[test]
fn forward_with_weights_returns_the_probabilities() {
    let config = TransformerBlockConfig::timm(8, 2, 2.0, true, false, None);
    let block = TransformerBlock::new(&config, zeros()).unwrap();
    let x = randn(&[2, 5, 8]);
    let (y, weights) = block.forward_with_weights(&x, None, None).unwrap();
    assert_eq!(values(&y), values(&block.forward(&x, None, None).unwrap()));
    assert_eq!(weights.dims(), [2, 2, 5, 5]);
    for sum in values(&weights.sum(D::Minus1).unwrap()) {
        assert!((sum - 1.0).abs() < 1e-5);
    }
}

// --- Bad configurations: clear errors -------------------------------------------------

fn block_error(config: &TransformerBlockConfig) -> String {
    TransformerBlock::new(config, zeros().pp("blocks").pp("2"))
        .unwrap_err()
        .to_string()
}

#[test]
fn an_attention_of_another_width_is_refused() {
    let config = TransformerBlockConfig {
        attention: AttentionConfig::timm(8, 2, true, false),
        ..TransformerBlockConfig::timm(16, 4, 2.0, true, false, None)
    };
    let err = block_error(&config);
    assert!(
        err.contains("transformer block `blocks.2`") && err.contains("attention dim 8 differs from the block's dim 16"),
        "{err}"
    );
    let config = TransformerBlockConfig {
        attention: AttentionConfig {
            out_dim: Some(12),
            ..AttentionConfig::timm(16, 4, true, false)
        },
        ..TransformerBlockConfig::timm(16, 4, 2.0, true, false, None)
    };
    assert!(
        block_error(&config).contains("attention out_dim 12"),
        "{}",
        block_error(&config)
    );
}

#[test]
fn post_norm_without_norm2_is_refused() {
    let mut config = TransformerBlockConfig::torch_encoder(16, 4, 32, 0.0, Activation::Gelu, 1e-5, false);
    config.names.norm2 = None;
    let err = block_error(&config);
    assert!(
        err.contains("transformer block `blocks.2`")
            && err.contains("post-norm")
            && err.contains("names.norm2 is None"),
        "{err}"
    );
    config.layout = ResidualLayout::PreNorm;
    assert!(block_error(&config).contains("pre-norm"), "{}", block_error(&config));
    config.layout = ResidualLayout::Parallel;
    TransformerBlock::new(&config, zeros()).expect("a parallel layer may share norm1");
}

#[test]
fn other_bad_configs_are_refused_clearly() {
    let base = TransformerBlockConfig::timm(16, 4, 2.0, true, false, None);
    let config = TransformerBlockConfig {
        feed_forward: FeedForwardConfig::Glu(GluMlpConfig::swiglu(12, 24)),
        ..base.clone()
    };
    assert!(
        block_error(&config).contains("maps 12 to 12 features"),
        "{}",
        block_error(&config)
    );
    let config = TransformerBlockConfig {
        feed_forward: FeedForwardConfig::Mlp(MlpConfig {
            out_dim: Some(8),
            ..MlpConfig::new(16, 32)
        }),
        ..base.clone()
    };
    assert!(
        block_error(&config).contains("maps 16 to 8 features"),
        "{}",
        block_error(&config)
    );
    let mut config = TransformerBlockConfig {
        layer_scale: Some(1e-5),
        ..base.clone()
    };
    config.names.ls1 = None;
    assert!(
        block_error(&config).contains("names.ls1/ls2"),
        "{}",
        block_error(&config)
    );
    let mut config = base.clone();
    config.names.attn = String::new();
    assert!(
        block_error(&config).contains("names.attn is empty"),
        "{}",
        block_error(&config)
    );
    let config = TransformerBlockConfig { drop_path: 1.5, ..base };
    assert!(block_error(&config).contains("[0, 1]"), "{}", block_error(&config));
}

#[test]
fn configs_round_trip_through_json() {
    let config = TransformerBlockConfig::torch_encoder(16, 4, 32, 0.1, Activation::Gelu, 1e-5, false);
    let json = serde_json::to_string(&config).unwrap();
    let back: TransformerBlockConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    // Older configs without the new name fields still read.
    let mut value = serde_json::to_value(TransformerBlockConfig::timm(16, 4, 2.0, true, false, None)).unwrap();
    let names = value["names"].as_object_mut().unwrap();
    for field in ["dropout1", "attn_output"] {
        names.remove(field);
    }
    let back: TransformerBlockConfig = serde_json::from_value(value).unwrap();
    assert_eq!(back.names, BlockNames::timm());
}

/// A norm of the caller's own sits in the block's norm slots: built from the slot's
/// `VarBuilder`, run where the library's would run, and recorded under its path.
#[test]
fn a_block_takes_a_norm_of_the_callers_own() {
    use replica_blocks::norm::{LayerNorm, LayerNormConfig, Norm};
    let config = TransformerBlockConfig::timm(8, 2, 2.0, true, false, None);
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let library = TransformerBlock::new(&config, vb.clone()).unwrap();
    // The same LayerNorm, given as a custom module over the same variables.
    let own = TransformerBlock::with_norms(&config, vb.clone(), |vb| {
        let norm = LayerNorm::new(
            &LayerNormConfig {
                eps: 1e-6,
                ..LayerNormConfig::new(8)
            },
            vb.pp("inner"),
        )?;
        Ok(Norm::custom(norm, &vb))
    });
    // The custom norm reads its weights at `norm1.inner.*`, which the varmap now has too.
    let own = own.unwrap();
    let x = randn(&[2, 3, 8]);
    let (y_library, _) = trace::record(|| library.forward(&x, None, None).unwrap());
    let (y_own, recorded) = trace::record(|| own.forward(&x, None, None).unwrap());
    // Both start from the same initial values (ones and zeros), so they agree exactly.
    assert_eq!(values(&y_library), values(&y_own));
    assert!(recorded.get("norm1").is_some() && recorded.get("norm2").is_some());
    // And the slot runs the caller's module: a norm that doubles changes the output.
    struct Doubling;
    impl candle_core::Module for Doubling {
        fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
            x.affine(2.0, 0.0)
        }
    }
    let doubling = TransformerBlock::with_norms(&config, vb, |vb| Ok(Norm::custom(Doubling, &vb))).unwrap();
    let y_doubling = doubling.forward(&x, None, None).unwrap();
    assert_ne!(values(&y_library), values(&y_doubling));
}
