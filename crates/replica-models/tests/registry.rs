//! The model registry: named presets with their papers and checkpoint naming,
//! `list_models` with a glob, `create_model` with overrides, `load_model`.

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use replica_blocks::Activation;
use replica_models::decoder::DecoderConfig;
use replica_models::registry::{self, create_model, list_models, model_config, Registry, MODELS};
use replica_models::t5::T5FeedForward;
use replica_models::{
    BertConfig, GemmaConfig, Gpt2, Gpt2Config, ModelConfig, Qwen2Config, Qwen3Config, T5Config, Vit, VitConfig,
};
use serde_json::{json, Value};

#[test]
fn the_issue_presets_are_registered() {
    let all = list_models("");
    for name in [
        "gpt2",
        "gpt2-medium",
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "vit_small_patch14_reg4_dinov2",
        "vit_medium_patch16_reg4_gap_256",
        "deit3_small_patch16_224",
        "llama-tiny",
        "qwen2-0.5b",
        "qwen3-0.6b",
        "bert-base-uncased",
        "all-MiniLM-L6-v2",
    ] {
        assert!(all.contains(&name), "{name} missing from {all:?}");
    }
    assert_eq!(list_models("gpt2*"), ["gpt2", "gpt2-medium"]);
    assert_eq!(list_models("*patch16*").len(), 5);
    assert!(list_models("resnet*").is_empty());
}

#[test]
fn every_preset_cites_its_paper_and_names_its_checkpoint() {
    for (descriptor, preset) in Registry(MODELS).presets() {
        assert!(
            !preset.paper.arxiv.is_empty() && !preset.paper.title.is_empty(),
            "{}",
            preset.name
        );
        assert!(
            !preset.checkpoint.is_empty() && !preset.description.is_empty(),
            "{}",
            preset.name
        );
        assert!(descriptor.family.checkpoint_naming.len() > 20, "{}", preset.name);
        assert!(
            regex::Regex::new(descriptor.family.signature)
                .unwrap()
                .is_match(descriptor.family.example_tensor),
            "{}",
            preset.name
        );
    }
    assert_eq!(registry::presets().count(), 23);
    // Every preset's config is complete and consistent for its model, whatever this
    // machine's memory (Phi-3-mini's f32 weights alone take 14 GiB).
    replica_check::MemoryBudget::set_current(replica_check::MemoryBudget { bytes: 1 << 40 });
    for name in list_models("") {
        model_config(name, &Value::Null).unwrap();
    }
    assert_eq!(registry::preset("gpt2").unwrap().paper.arxiv, "2005.14165");
    assert_eq!(
        registry::preset("vit_base_patch16_224").unwrap().paper.arxiv,
        "2010.11929"
    );
    assert_eq!(registry::preset("llama-tiny").unwrap().paper.arxiv, "2302.13971");
    assert_eq!(registry::preset("gemma-2b").unwrap().paper.arxiv, "2403.08295");
    assert_eq!(registry::preset("gemma2-2b").unwrap().paper.arxiv, "2408.00118");
    assert_eq!(registry::preset("qwen2-0.5b").unwrap().paper.arxiv, "2407.10671");
    assert_eq!(registry::preset("qwen3-0.6b").unwrap().paper.arxiv, "2505.09388");
    assert_eq!(registry::preset("mixtral-8x7b").unwrap().paper.arxiv, "2401.04088");
    assert_eq!(registry::preset("deepseek-v2-lite").unwrap().paper.arxiv, "2405.04434");
    assert_eq!(registry::preset("bert-base-uncased").unwrap().paper.arxiv, "1810.04805");
    assert_eq!(
        registry::preset("swin_tiny_patch4_window7_224").unwrap().paper.arxiv,
        "2103.14030"
    );
    assert_eq!(registry::preset("t5-small").unwrap().paper.arxiv, "1910.10683");
}

#[test]
fn the_preset_configs_are_the_published_sizes() {
    let gpt2 = Gpt2Config::from_value(&registry::preset("gpt2").unwrap().config(), "gpt2").unwrap();
    assert_eq!(
        (gpt2.n_layer, gpt2.n_embd, gpt2.n_head, gpt2.vocab_size),
        (12, 768, 12, 50257)
    );
    let medium = Gpt2Config::from_value(&registry::preset("gpt2-medium").unwrap().config(), "m").unwrap();
    assert_eq!((medium.n_layer, medium.n_embd, medium.n_head), (24, 1024, 16));
    let tiny = VitConfig::from_value(&registry::preset("vit_tiny_patch16_224").unwrap().config(), "t").unwrap();
    assert_eq!(
        (tiny.embed_dim, tiny.depth, tiny.num_heads, tiny.num_tokens()),
        (192, 12, 3, 197)
    );
    let gemma = GemmaConfig::from_value(&registry::preset("gemma-2b").unwrap().config(), "g").unwrap();
    assert_eq!(
        (gemma.num_hidden_layers, gemma.hidden_size, gemma.num_attention_heads),
        (18, 2048, 8)
    );
    assert_eq!(
        (gemma.num_key_value_heads, gemma.head_dim, gemma.vocab_size),
        (1, 256, 256_000)
    );
    let qwen2 = Qwen2Config::from_value(&registry::preset("qwen2-0.5b").unwrap().config(), "q2").unwrap();
    assert_eq!(
        (qwen2.num_hidden_layers, qwen2.hidden_size, qwen2.num_attention_heads),
        (24, 896, 14)
    );
    assert_eq!(
        (qwen2.num_key_value_heads, qwen2.intermediate_size, qwen2.vocab_size),
        (Some(2), 4864, 151_936)
    );
    // Its `sliding_window` is set but off (`use_sliding_window: false`), and the head tied.
    assert_eq!(qwen2.window(), Ok(None));
    assert!(qwen2.tie_word_embeddings);
    let qwen3 = Qwen3Config::from_value(&registry::preset("qwen3-0.6b").unwrap().config(), "q3").unwrap();
    assert_eq!(
        (qwen3.num_hidden_layers, qwen3.hidden_size, qwen3.num_attention_heads),
        (28, 1024, 16)
    );
    assert_eq!(
        (qwen3.num_key_value_heads, qwen3.head_dim, qwen3.intermediate_size),
        (Some(8), 128, 3072)
    );
    assert!(qwen3.tie_word_embeddings && qwen3.decoder_spec().block.attention.qk_norm);
    let minilm = BertConfig::from_value(&registry::preset("all-MiniLM-L6-v2").unwrap().config(), "m").unwrap();
    assert_eq!(
        (minilm.hidden_size, minilm.num_hidden_layers, minilm.intermediate_size),
        (384, 6, 1536)
    );
    let t5 = T5Config::from_value(&registry::preset("t5-small").unwrap().config(), "t5").unwrap();
    assert_eq!(
        (t5.d_model, t5.num_layers, t5.num_heads, t5.d_kv, t5.d_ff, t5.vocab_size),
        (512, 6, 8, 64, 2048, 32128)
    );
    assert_eq!(t5.feed_forward(), Ok(T5FeedForward::Dense(Activation::Relu)));
    let v1_1 = T5Config::from_value(&registry::preset("t5-v1_1-small").unwrap().config(), "t5").unwrap();
    assert_eq!(
        (v1_1.d_model, v1_1.num_layers, v1_1.num_heads, v1_1.d_kv, v1_1.d_ff),
        (512, 8, 6, 64, 1024)
    );
    assert_eq!(v1_1.feed_forward(), Ok(T5FeedForward::Gated(Activation::GeluTanh)));
}

#[test]
fn unknown_names_get_suggestions() {
    let err = registry::preset("vit_large_patch16_224").unwrap_err().to_string();
    assert!(
        err.contains("no model named `vit_large_patch16_224`") && err.contains("vit_base_patch16_224"),
        "{err}"
    );
    let err = registry::preset("resnet50").unwrap_err().to_string();
    assert!(err.contains("the registry has"), "{err}");
}

#[test]
fn create_model_builds_a_trainable_model_with_overrides() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let overrides = json!({"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100, "n_positions": 16});
    let model = create_model("gpt2", &overrides, vb).unwrap();
    assert!(model.downcast_ref::<Vit>().is_none());
    let gpt2 = model.downcast_ref::<Gpt2>().unwrap();
    assert_eq!(gpt2.config().n_embd, 64);
    // Every parameter is a variable to train: wte, wpe, 2 x 12 block tensors, ln_f (tied head).
    assert_eq!(varmap.all_vars().len(), 2 + 2 * 12 + 2);
    let logits = gpt2
        .forward(&Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap(), None)
        .unwrap();
    assert_eq!(logits.dims(), [1, 3, 100]);

    let err = create_model(
        "gpt2",
        &json!({"n_head": 7}),
        VarBuilder::zeros(DType::F32, &Device::Cpu),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("n_embd 768 is not divisible by n_head 7"),
        "{err}"
    );
    let err = create_model("gpt2", &json!([1, 2]), VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap_err();
    assert!(err.to_string().contains("overrides must be a JSON object"), "{err}");
}

/// timm's parameter counts of its register, average-pooling and DeiT III presets
/// (`sum(p.numel() for p in timm.create_model(name).parameters())`, timm 1.0).
#[test]
fn create_model_builds_the_vit_variants_at_their_real_sizes() {
    for (name, count, tokens) in [
        ("vit_small_patch14_reg4_dinov2", 22_057_344, 1 + 4 + 37 * 37),
        ("vit_medium_patch16_reg4_gap_256", 38_881_768, 4 + 16 * 16),
        ("deit3_small_patch16_224", 22_059_496, 1 + 14 * 14),
    ] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let config = VitConfig::from_value(&registry::preset(name).unwrap().config(), name).unwrap();
        <Vit as replica_models::Architecture>::new(&config, vb).unwrap();
        let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(params, count, "{name}: timm's parameter count");
        assert_eq!(
            config.num_prefix_tokens() + config.grid().height * config.grid().width,
            tokens,
            "{name}"
        );
    }
}

#[test]
fn create_model_builds_vit_tiny_at_its_real_size() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = create_model("vit_tiny_patch16_224", &Value::Null, vb).unwrap();
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(
        params, 5_717_416,
        "timm's vit_tiny_patch16_224 has 5,717,416 parameters"
    );
    let images = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &Device::Cpu).unwrap();
    let vit = model.downcast_ref::<Vit>().unwrap();
    assert_eq!(model.forward_t(&images, false).unwrap().dims(), [1, 1000]);
    assert_eq!(vit.forward(&images).unwrap().dims(), [1, 1000]);
    assert_eq!(vit.forward_features(&images).unwrap().dims(), [1, 197, 192]);
}
