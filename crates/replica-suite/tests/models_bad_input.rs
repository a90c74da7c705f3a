//! Bad input gets a clear error, never a panic or a silent wrong answer: another
//! model's checkpoint, a config that lacks a field or contradicts the weights,
//! token ids outside the vocabulary, sequences longer than the position table,
//! images whose size the patch size does not divide.

use candle_core::{DType, Device, Tensor};
use replica_check::{Bundle, Namespace};
use replica_models::generation::{generate_greedy, GenerateOptions};
use replica_models::{
    Bert, BertConfig, Error, Gpt2, Gpt2Config, Llama, LlamaConfig, LoadCheckpoint, ModelConfig, Vit, VitConfig,
};
use replica_suite::fixtures_dir;
use serde_json::{json, Value};

fn fixture(name: &str) -> std::path::PathBuf {
    fixtures_dir().join(format!("{name}.safetensors"))
}

fn config_of(name: &str) -> Value {
    Bundle::load(fixture(name), &Device::Cpu)
        .unwrap()
        .metadata()
        .config
        .clone()
}

fn with(config: &Value, field: &str, value: Value) -> Value {
    let mut config = config.clone();
    config[field] = value;
    config
}

fn gpt2() -> Gpt2 {
    let config = Gpt2Config::from_value(&config_of("models/gpt2"), "gpt2").unwrap();
    Gpt2::load(&config, fixture("models/gpt2"), DType::F32, &Device::Cpu).unwrap()
}

fn message<T>(result: Result<T, impl std::fmt::Display>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(err) => err.to_string(),
    }
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "`{part}` not in:\n{text}");
    }
}

#[test]
fn another_models_checkpoint_is_named() {
    let gpt2_config = Gpt2Config::from_value(&config_of("models/gpt2"), "gpt2").unwrap();
    let err = Gpt2::load(&gpt2_config, fixture("models/vit"), DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err:?}");
    assert_contains(
        &err.to_string(),
        &[
            "vit.safetensors",
            "this is a ViT checkpoint",
            "blocks.",
            "not a GPT-2 one",
        ],
    );

    let llama_config = LlamaConfig::from_value(&config_of("models/llama"), "llama").unwrap();
    let text = message(Llama::load(
        &llama_config,
        fixture("models/bert"),
        DType::F32,
        &Device::Cpu,
    ));
    assert_contains(&text, &["this is a BERT checkpoint", "not a LLaMA one"]);

    let bert_config = BertConfig::from_value(&config_of("models/bert"), "bert").unwrap();
    let text = message(Bert::load(
        &bert_config,
        fixture("models/gpt2"),
        DType::F32,
        &Device::Cpu,
    ));
    assert_contains(&text, &["this is a GPT-2 checkpoint", "not a BERT one"]);

    let vit_config = VitConfig::from_value(&config_of("models/vit"), "vit").unwrap();
    let text = message(Vit::load(
        &vit_config,
        fixture("models/llama"),
        DType::F32,
        &Device::Cpu,
    ));
    assert_contains(&text, &["this is a LLaMA checkpoint", "not a ViT one"]);

    // Not a model at all: a single Linear layer's bundle.
    let text = message(Gpt2::load(
        &gpt2_config,
        fixture("blocks/linear"),
        DType::F32,
        &Device::Cpu,
    ));
    assert_contains(
        &text,
        &[
            "does not look like a GPT-2 checkpoint",
            "transformer.h.0.attn.c_attn.weight",
            "`weight`",
        ],
    );
}

#[test]
fn a_missing_config_field_is_named() {
    let mut config = config_of("models/gpt2");
    config.as_object_mut().unwrap().remove("n_embd");
    let text = message(Gpt2Config::from_value(&config, "gpt2/config.json"));
    assert_contains(&text, &["gpt2/config.json", "missing field `n_embd`"]);

    let dir = std::env::temp_dir().join(format!("replica-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, r#"{"vocab_size": 30522, "hidden_size": 384}"#).unwrap();
    let text = message(BertConfig::from_file(&path));
    assert_contains(&text, &["config.json", "missing field `num_hidden_layers`"]);
    std::fs::write(&path, "{not json").unwrap();
    assert_contains(&message(BertConfig::from_file(&path)), &["config.json", "not JSON"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_config_that_contradicts_itself_is_refused() {
    let config = with(&config_of("models/gpt2"), "n_head", json!(5));
    assert_contains(
        &message(Gpt2Config::from_value(&config, "x")),
        &["n_embd 32 is not divisible by n_head 5"],
    );
    let config = with(&config_of("models/llama"), "num_key_value_heads", json!(3));
    assert_contains(
        &message(LlamaConfig::from_value(&config, "x")),
        &["num_attention_heads 4 is not a multiple of num_key_value_heads 3"],
    );
    let config = with(
        &config_of("models/llama"),
        "rope_scaling",
        json!({"type": "su", "factor": 2.0}),
    );
    assert_contains(
        &message(LlamaConfig::from_value(&config, "x")),
        &["rope_scaling.rope_type `su` is not implemented (expected one of default, linear, dynamic, yarn, llama3, longrope)"],
    );
    let config = with(&config_of("models/gpt2"), "model_type", json!("llama"));
    assert_contains(&message(Gpt2Config::from_value(&config, "x")), &["not a GPT-2 config"]);
}

#[test]
fn a_config_that_contradicts_the_weights_says_where() {
    let wider = Gpt2Config::from_value(&with(&config_of("models/gpt2"), "n_embd", json!(64)), "x").unwrap();
    let err = Gpt2::load(&wider, fixture("models/gpt2"), DType::F32, &Device::Cpu).unwrap_err();
    assert_contains(
        &err.to_string(),
        &[
            "the GPT-2 config (vocab_size 96, n_positions 32, n_embd 64",
            "contradicts the checkpoint's tensor shapes",
            "shape mismatch: `transformer.wte.weight`: the model expects [96, 64], the weights have [96, 32]",
        ],
    );

    let deeper = Gpt2Config::from_value(&with(&config_of("models/gpt2"), "n_layer", json!(3)), "x").unwrap();
    let text = message(Gpt2::load(&deeper, fixture("models/gpt2"), DType::F32, &Device::Cpu));
    assert_contains(
        &text,
        &["does not fit the GPT-2 model", "missing: `transformer.h.2.ln_1.weight`"],
    );

    let shallower = Gpt2Config::from_value(&with(&config_of("models/gpt2"), "n_layer", json!(1)), "x").unwrap();
    let text = message(Gpt2::load(&shallower, fixture("models/gpt2"), DType::F32, &Device::Cpu));
    assert_contains(&text, &["unused: `transformer.h.1.ln_1.weight`"]);

    let vocab = BertConfig::from_value(&with(&config_of("models/bert"), "vocab_size", json!(100)), "x").unwrap();
    let text = message(Bert::load(&vocab, fixture("models/bert"), DType::F32, &Device::Cpu));
    assert_contains(
        &text,
        &["`embeddings.word_embeddings.weight`: the model expects [100, 16]"],
    );
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    let model = gpt2();
    let ids = Tensor::new(&[[1u32, 2, 200]], &Device::Cpu).unwrap();
    assert_contains(
        &message(model.forward(&ids, None)),
        &["transformer.wte", "token id 200 is out of range for a table of 96 rows"],
    );
    let ids = Tensor::new(&[[1i64, -3]], &Device::Cpu).unwrap();
    assert_contains(&message(model.forward(&ids, None)), &["token id -3"]);

    let bert_config = BertConfig::from_value(&config_of("models/bert"), "bert").unwrap();
    let bert = Bert::load(&bert_config, fixture("models/bert"), DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let types = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
    assert_contains(
        &message(bert.forward(&ids, Some(&types), None)),
        &[
            "embeddings.token_type_embeddings",
            "token id 2 is out of range for a table of 2 rows",
        ],
    );
    let short_mask = Tensor::new(&[[1u32, 1]], &Device::Cpu).unwrap();
    assert_contains(
        &message(bert.forward(&ids, None, Some(&short_mask))),
        &["attention_mask has shape [1, 2], input_ids [1, 3]"],
    );
}

#[test]
fn sequences_longer_than_the_position_table_are_refused() {
    let model = gpt2();
    let ids = Tensor::zeros((1, 40), DType::U32, &Device::Cpu).unwrap();
    assert_contains(
        &message(model.forward(&ids, None)),
        &["a sequence of 40 tokens is longer than the position table (n_positions 32)"],
    );
    let text = message(generate_greedy(
        &model,
        &[1, 2, 3, 4, 5],
        GenerateOptions::greedy(40),
        |_| {},
    ));
    assert_contains(
        &text,
        &["5 prompt tokens + 40 new tokens = 45 positions, more than the model's 32"],
    );

    let llama_config = LlamaConfig::from_value(&config_of("models/llama"), "llama").unwrap();
    let llama = Llama::load(&llama_config, fixture("models/llama"), DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::zeros((1, 65), DType::U32, &Device::Cpu).unwrap();
    assert_contains(
        &message(llama.forward(&ids, None)),
        &["a sequence of 65 tokens is longer than max_position_embeddings 64"],
    );

    let bert_config = BertConfig::from_value(&config_of("models/bert"), "bert").unwrap();
    let bert = Bert::load(&bert_config, fixture("models/bert"), DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::ones((2, 33), DType::U32, &Device::Cpu).unwrap();
    assert_contains(
        &message(bert.forward(&ids, None, None)),
        &["a sequence of 33 tokens is longer than the position table (max_position_embeddings 32)"],
    );
}

#[test]
fn images_the_patch_size_does_not_divide_are_refused() {
    let config = with(&config_of("models/vit"), "img_size", json!(30));
    assert_contains(
        &message(VitConfig::from_value(&config, "vit/config.json")),
        &["vit/config.json", "img_size 30x30 is not divisible by patch_size 8x8"],
    );
    let config = VitConfig::from_value(&config_of("models/vit"), "vit").unwrap();
    let vit = Vit::load(&config, fixture("models/vit"), DType::F32, &Device::Cpu).unwrap();
    let images = Tensor::zeros((1, 3, 30, 30), DType::F32, &Device::Cpu).unwrap();
    assert_contains(
        &message(vit.forward(&images)),
        &["ViT (16x16 images, 8x8 patches)", "the input is 30x30"],
    );
    let gray = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert_contains(
        &message(vit.forward(&gray)),
        &["the input has 1 channels, the projection expects 3"],
    );
}

#[test]
fn the_kv_cache_must_have_one_entry_per_layer() {
    let model = gpt2();
    let ids = Tensor::new(&[[1u32, 2]], &Device::Cpu).unwrap();
    let mut cache = vec![replica_blocks::kv_cache::KvCache::new()];
    assert_contains(
        &message(model.forward(&ids, Some(&mut cache))),
        &["1 layer caches given, the model has 2 layers"],
    );
}

#[test]
fn bundle_params_load_like_a_checkpoint() {
    // A bundle's param/ namespace is a checkpoint too (the generate example relies on it).
    let bundle = Bundle::load(fixture("models/gpt2_generate"), &Device::Cpu).unwrap();
    assert!(bundle.names(Namespace::Param).count() > 0);
    let config = Gpt2Config::from_value(&bundle.metadata().config, bundle.origin()).unwrap();
    Gpt2::load(&config, bundle.origin(), DType::F32, &Device::Cpu).unwrap();
}

/// A model config is read strictly: a field the model does not implement is refused
/// by name, and a real `config.json`'s bookkeeping is accepted.
#[test]
fn config_fields_the_model_does_not_implement_are_refused() {
    let config = with(&config_of("models/gpt2"), "reorder_and_upcast_attn", json!(true));
    assert_contains(
        &message(Gpt2Config::from_value(&config, "x")),
        &["reorder_and_upcast_attn"],
    );
    let config = with(&config_of("models/llama"), "sliding_window", json!(4));
    assert_contains(
        &message(LlamaConfig::from_value(&config, "llama/config.json")),
        &[
            "llama/config.json",
            "sliding_window is set; LLaMA attends to every earlier token",
        ],
    );
    let config = with(&config_of("models/bert"), "hidden_size", json!("32"));
    assert_contains(
        &message(BertConfig::from_value(&config, "x")),
        &["config field `hidden_size`: invalid type: string \"32\""],
    );
    // sentence-transformers/all-MiniLM-L6-v2's config.json.
    let minilm = json!({
        "_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": false, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02, "intermediate_size": 1536,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
        "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute",
        "transformers_version": "4.8.2", "type_vocab_size": 2, "use_cache": true, "vocab_size": 30522
    });
    let config = BertConfig::from_value(&minilm, "minilm").unwrap();
    assert_eq!(config.pad_token_id, Some(0));
}

/// RoPE scaling is read as transformers v5 reads it: v4's `rope_scaling` (with `type`
/// or `rope_type`) and top-level `rope_theta` give what v5's `rope_parameters` give;
/// an unknown type, a key the type does not use and a missing one are refused by name.
#[test]
fn rope_scaling_is_read_as_hf_reads_it_and_refused_by_name() {
    let llama = config_of("models/llama");
    let mut v5 = with(
        &llama,
        "rope_parameters",
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0}),
    );
    v5.as_object_mut().unwrap().remove("rope_theta");
    let mut v4 = with(
        &llama,
        "rope_scaling",
        json!({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}),
    );
    v4["rope_theta"] = json!(500000.0);
    v4.as_object_mut().unwrap().remove("rope_parameters");
    let (v4, v5) = (
        LlamaConfig::from_value(&v4, "v4").unwrap(),
        LlamaConfig::from_value(&v5, "v5").unwrap(),
    );
    assert_eq!(v4.rope().unwrap(), v5.rope().unwrap());
    assert_eq!(v4.block_config(), v5.block_config());
    assert_eq!(v5.theta(), 500000.0);

    let refused = |parameters: Value, parts: &[&str]| {
        let config = with(&llama, "rope_parameters", parameters);
        assert_contains(&message(LlamaConfig::from_value(&config, "x")), parts);
    };
    refused(
        json!({"rope_type": "yarn", "factor": 4.0, "low_freq_factor": 1.0}),
        &["rope_parameters.low_freq_factor is not used by rope_type `yarn`"],
    );
    refused(
        json!({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}),
        &["rope_parameters.low_freq_factor is required by rope_type `llama3`, got none"],
    );
    refused(
        json!({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
        &["rope_parameters.short_factor must hold one factor per frequency (4), got 1"],
    );
    refused(
        json!({"rope_type": "yarn", "factor": 4.0, "mrope_section": [2, 2]}),
        &["unknown field `mrope_section`"],
    );
    refused(
        json!({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}),
        &["rope_parameters.partial_rotary_factor must be 1 for rope_type `linear`"],
    );
}

/// With dynamic NTK a LLaMA runs past `max_position_embeddings`, up to `factor`
/// times it; longer is refused with that limit named.
#[test]
fn dynamic_rope_runs_past_max_position_embeddings_up_to_factor_times_it() {
    let config = with(
        &config_of("models/llama"),
        "rope_parameters",
        json!({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    );
    let config = LlamaConfig::from_value(&config, "x").unwrap();
    assert_eq!((config.max_position_embeddings, config.max_positions()), (64, 128));
    let model = Llama::load(&config, fixture("models/llama"), DType::F32, &Device::Cpu).unwrap();
    let ids = |n: usize| Tensor::zeros((1, n), DType::U32, &Device::Cpu).unwrap();
    model.forward(&ids(100), None).unwrap();
    assert_contains(
        &message(model.forward(&ids(129), None)),
        &["128 positions (max_position_embeddings times the dynamic RoPE factor)"],
    );
}
