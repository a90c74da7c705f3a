//! Configs of sibling models read by one port where the fields mean the same, and
//! refused where they do not: Mistral by the LLaMA decoder (its window no shorter
//! than the sequence), Gemma never; Qwen2's and Qwen3's sliding-window fields as HF
//! reads them.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use replica_models::{Architecture, Llama, LlamaConfig, ModelConfig, Qwen2, Qwen2Config, Qwen3Config};
use serde_json::json;

fn mistral(window: serde_json::Value) -> serde_json::Value {
    json!({
        "model_type": "mistral", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 8, "max_position_embeddings": 64,
        "sliding_window": window,
    })
}

#[test]
fn mistral_reads_as_llama_within_its_window_and_refuses_longer_sequences() {
    let config = LlamaConfig::from_value(&mistral(json!(8)), "mistral").unwrap();
    // HF's Mistral default: 8 key/value heads when the config does not say.
    assert_eq!(config.kv_heads(), 8);
    let config = LlamaConfig {
        num_key_value_heads: Some(2),
        ..config
    };
    let varmap = VarMap::new();
    let model = Llama::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let ids = |n: u32| Tensor::arange(0, n, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    assert!(model.forward(&ids(8), None).is_ok());
    let err = model.forward(&ids(9), None).unwrap_err().to_string();
    assert!(
        err.contains("longer than the attention window (sliding_window 8)"),
        "{err}"
    );
    // Absent, the window is HF's default; null, there is none.
    assert_eq!(
        LlamaConfig::from_value(&mistral_without_window(), "m")
            .unwrap()
            .window(),
        Some(4096)
    );
    assert_eq!(
        LlamaConfig::from_value(&mistral(json!(null)), "m").unwrap().window(),
        None
    );
}

fn mistral_without_window() -> serde_json::Value {
    let mut config = mistral(json!(null));
    config.as_object_mut().unwrap().remove("sliding_window");
    config
}

#[test]
fn what_llama_cannot_honour_is_refused() {
    let mut llama = mistral(json!(8));
    llama["model_type"] = json!("llama");
    let err = LlamaConfig::from_value(&llama, "llama").unwrap_err().to_string();
    assert!(err.contains("sliding_window is set"), "{err}");
    let mut gemma = mistral(json!(null));
    gemma["model_type"] = json!("gemma");
    let err = LlamaConfig::from_value(&gemma, "gemma").unwrap_err().to_string();
    assert!(err.contains("model_type is `gemma`"), "{err}");
    let err = LlamaConfig::from_value(&mistral(json!(0)), "m")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`sliding_window` must be positive"), "{err}");
}

fn qwen2(fields: serde_json::Value) -> serde_json::Value {
    let mut config = json!({
        "model_type": "qwen2", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    });
    for (field, value) in fields.as_object().unwrap() {
        config[field] = value.clone();
    }
    config
}

fn qwen2_refusal(fields: serde_json::Value) -> String {
    Qwen2Config::from_value(&qwen2(fields), "qwen2.json")
        .unwrap_err()
        .to_string()
}

#[test]
fn qwen_sliding_windows_are_read_as_hf_reads_them() {
    let window = |fields| Qwen2Config::from_value(&qwen2(fields), "q").unwrap().window().unwrap();
    // Qwen2-0.5B's own fields: a window that `use_sliding_window: false` turns off.
    assert_eq!(
        window(json!({"use_sliding_window": false, "sliding_window": 131072, "max_window_layers": 24})),
        None
    );
    // On, for the layers from `max_window_layers` on: none of two layers from 2 on, the second from 1.
    assert_eq!(
        window(json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 2})),
        None
    );
    assert_eq!(
        window(json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1})),
        Some(8)
    );
    // `layer_types` decides when given.
    let types = json!(["sliding_attention", "full_attention"]);
    assert_eq!(
        window(json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 2, "layer_types": types})),
        Some(8)
    );
    // A Qwen3 config reads them the same way.
    let mut qwen3 = qwen2(json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 0}));
    qwen3["model_type"] = json!("qwen3");
    qwen3["head_dim"] = json!(8);
    assert_eq!(
        Qwen3Config::from_value(&qwen3, "q3").unwrap().window().unwrap(),
        Some(8)
    );
}

#[test]
fn a_qwen_window_shorter_than_the_sequence_is_refused() {
    let config = Qwen2Config::from_value(
        &qwen2(json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1})),
        "q",
    )
    .unwrap();
    let varmap = VarMap::new();
    let model = Qwen2::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let ids = |n: u32| Tensor::arange(0, n, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    assert_eq!(model.forward(&ids(8), None).unwrap().dims(), [1, 8, 32]);
    let err = model.forward(&ids(9), None).unwrap_err().to_string();
    assert!(err.contains("Qwen2: a sequence of 9 tokens"), "{err}");
    assert!(err.contains("(sliding_window 8)"), "{err}");
}

#[test]
fn what_the_qwen_ports_cannot_honour_is_refused_by_name() {
    let err = qwen2_refusal(json!({"layer_types": ["full_attention", "chunked_attention"]}));
    assert!(
        err.contains("layer_types[1] is `chunked_attention`; expected `full_attention` or `sliding_attention`"),
        "{err}"
    );
    let err = qwen2_refusal(json!({"layer_types": ["full_attention"]}));
    assert!(
        err.contains("layer_types has 1 entries, expected one per layer (num_hidden_layers 2)"),
        "{err}"
    );
    // HF has no window to build the sliding mask with: refused, not run as full attention.
    let err = qwen2_refusal(json!({"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 8}));
    assert!(
        err.contains("no window applies (use_sliding_window false, sliding_window 8)"),
        "{err}"
    );
    let err = qwen2_refusal(json!({"use_sliding_window": true, "sliding_window": 0}));
    assert!(err.contains("`sliding_window` must be positive, got 0"), "{err}");
    let err = qwen2_refusal(json!({"model_type": "qwen3"}));
    assert!(err.contains("model_type is `qwen3`, not `qwen2`"), "{err}");
    // Qwen2's heads are hidden_size / num_attention_heads: a `head_dim` is not read, so refused.
    let err = qwen2_refusal(json!({"head_dim": 8}));
    assert!(err.contains("head_dim"), "{err}");
    // HF's rope types are read as LLaMA reads them; one HF does not have is refused.
    let err = qwen2_refusal(json!({"rope_scaling": {"rope_type": "su", "factor": 4.0}}));
    assert!(err.contains("`su`"), "{err}");
    let err = qwen2_refusal(json!({"num_key_value_heads": 3}));
    assert!(err.contains("not a multiple of num_key_value_heads 3"), "{err}");

    let mut qwen3 = qwen2(json!({"head_dim": 0}));
    qwen3["model_type"] = json!("qwen3");
    let err = Qwen3Config::from_value(&qwen3, "q3").unwrap_err().to_string();
    assert!(err.contains("`head_dim` must be positive, got 0"), "{err}");
    qwen3["head_dim"] = json!(8);
    qwen3["layer_types"] = json!(["full_attention", "sliding"]);
    let err = Qwen3Config::from_value(&qwen3, "q3").unwrap_err().to_string();
    assert!(err.contains("layer_types[1] is `sliding`"), "{err}");
}
