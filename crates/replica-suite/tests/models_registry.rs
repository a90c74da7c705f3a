//! `load_model` on a committed checkpoint: a preset with the checkpoint's sizes as
//! overrides, and the preset alone refused because its shapes contradict the weights.

use candle_core::{DType, Device};
use replica_models::registry::{load_model, model_config};
use replica_models::{Architecture, Llama};
use replica_suite::fixtures_dir;
use serde_json::{json, Value};

#[test]
fn load_model_reads_a_checkpoint_into_a_preset() {
    let fixture = fixtures_dir().join("models/llama.safetensors");
    let bundle = replica_check::Bundle::load(&fixture, &Device::Cpu).unwrap();
    // The tiny fixture is `llama-tiny` with its sizes overridden.
    let overrides = bundle.metadata().config.clone();
    let model = load_model("llama-tiny", &overrides, &fixture, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.family(), Llama::FAMILY);
    let config = model_config("llama-tiny", &json!({"num_hidden_layers": 3})).unwrap();
    assert_eq!(config["num_hidden_layers"], 3);
    assert_eq!(config["hidden_size"], 288);
    // Without the overrides, the preset's shapes contradict the checkpoint's.
    let err = load_model("llama-tiny", &Value::Null, &fixture, DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("contradicts the checkpoint's tensor shapes"),
        "{err}"
    );
}
