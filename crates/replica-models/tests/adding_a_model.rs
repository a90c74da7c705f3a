//! docs/models.md, "Adding a model": the example model file compiles as the page
//! shows it, its one registry line registers it, and it is created, loaded
//! strictly and run in both modes like the built-in models.

// What `crate::` names inside crates/replica-models/src, where the file would live.
use replica_models::LoadCheckpoint;
pub use replica_models::{registry, Architecture, Family, ModelConfig, Preset};

#[path = "adding_a_model/perceptron.rs"]
mod perceptron;

use std::collections::HashMap;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use perceptron::Perceptron;
use replica_models::registry::{Descriptor, Registry, MODELS};
use serde_json::{json, Value};

/// The built-in table with the example's one line added, as the page writes it.
fn models() -> Vec<Descriptor> {
    let mut models = MODELS.to_vec();
    models.push(Descriptor::of::<crate::perceptron::Perceptron>());
    models
}

#[test]
fn the_page_shows_this_model_file_and_its_registry_line() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/models.md")).unwrap();
    let file = include_str!("adding_a_model/perceptron.rs");
    assert!(
        page.contains(file),
        "docs/models.md must show tests/adding_a_model/perceptron.rs as it is"
    );
    assert!(page.contains("    Descriptor::of::<crate::perceptron::Perceptron>(),\n"));
}

#[test]
fn one_line_registers_the_model_beside_the_built_in_ones() {
    let models = models();
    let registry = Registry(&models);
    assert_eq!(registry.list_models("perceptron*"), ["perceptron-tiny"]);
    assert_eq!(
        registry.list_models("").len(),
        replica_models::list_models("").len() + 1
    );

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = registry
        .create_model("perceptron-tiny", &json!({"out_features": 3}), vb)
        .unwrap();
    assert_eq!(model.family().name, "Perceptron");
    assert_eq!(model.downcast_ref::<Perceptron>().map(|_| ()), Some(()));
    assert_eq!(varmap.all_vars().len(), 4);

    // One train/eval convention: eval is deterministic, training drops features.
    let x = Tensor::ones((8, 4), DType::F32, &Device::Cpu).unwrap();
    let run = |train| model.forward_t(&x, train).unwrap().to_vec2::<f32>().unwrap();
    let eval = run(false);
    assert_eq!((eval.len(), eval[0].len()), (8, 3));
    assert_eq!(eval, run(false));
    assert_ne!(eval, run(true));

    // Strict config reading comes with the trait.
    let err = registry
        .create_model(
            "perceptron-tiny",
            &json!({"dropout": 1.5}),
            VarBuilder::zeros(DType::F32, &Device::Cpu),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("`dropout` must be in [0, 1), got 1.5"),
        "{err}"
    );
    let err = registry
        .create_model(
            "perceptron-tiny",
            &json!({"bias": false}),
            VarBuilder::zeros(DType::F32, &Device::Cpu),
        )
        .unwrap_err();
    assert!(err.to_string().contains("`bias`"), "{err}");
}

#[test]
fn the_provided_loaders_load_it_strictly() {
    let dir = std::env::temp_dir().join(format!("replica-adding-a-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let checkpoint = dir.join("model.safetensors");
    let ones = |shape: &[usize]| Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap();
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let tensors = HashMap::from([
        ("fc1.weight", ones(&[16, 4])),
        ("fc1.bias", zeros(&[16])),
        ("fc2.weight", ones(&[2, 16])),
        ("fc2.bias", zeros(&[2])),
    ]);
    candle_core::safetensors::save(&tensors, &checkpoint).unwrap();

    let models = models();
    let registry = Registry(&models);
    let model = registry
        .load_model("perceptron-tiny", &Value::Null, &checkpoint, DType::F32, &Device::Cpu)
        .unwrap();
    let x = Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap();
    // Each hidden feature is gelu(4) = 3.99987, each output 16 of them.
    let y = model.forward_t(&x, false).unwrap().to_vec2::<f32>().unwrap();
    assert!(y[0].iter().all(|v| (v - 63.998).abs() < 1e-3), "{y:?}");

    let config = json!({"in_features": 4, "hidden_features": 8, "out_features": 2});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = Perceptron::from_checkpoint(&checkpoint, None, DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("the Perceptron config (in_features 4, hidden_features 8, out_features 2) contradicts"),
        "{err}"
    );

    // Another model's checkpoint is named as such.
    let gpt2 = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models/gpt2.safetensors"
    );
    let err = registry
        .load_model("perceptron-tiny", &Value::Null, gpt2, DType::F32, &Device::Cpu)
        .unwrap_err();
    assert!(err.to_string().contains("this is a GPT-2 checkpoint"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
