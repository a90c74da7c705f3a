//! Configs of sibling models read by one port where the fields mean the same, and
//! refused where they do not: Mistral by the LLaMA decoder (its window no shorter
//! than the sequence), Gemma never.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use replica_models::{Architecture, Llama, LlamaConfig, ModelConfig};
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
