//! One train/eval convention for every model: candle's `ModuleT::forward_t(x, train)`.
//! A model holds no mode: eval is deterministic and equals the inference
//! `forward`, training applies the config's dropout, and a training call leaves
//! nothing behind.

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use replica_models::{create_model, Bert, Gpt2, Llama, Model, Vit};
use serde_json::{json, Value};

fn create(name: &str, overrides: Value) -> Model {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    create_model(name, &overrides, vb).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 2, 3, 4, 5, 6, 7, 8]], &Device::Cpu).unwrap()
}

/// Eval, train, eval again: eval repeats exactly; training differs when `drops`.
fn check_modes(model: &Model, x: &Tensor, drops: bool) -> Vec<f32> {
    let run = |train| values(&model.forward_t(x, train).unwrap());
    let eval = run(false);
    let trained = run(true);
    assert_eq!(eval, run(false), "{}", model.family());
    assert_eq!(eval != trained, drops, "{}: does training drop out?", model.family());
    eval
}

#[test]
fn gpt2_drops_out_only_in_training() {
    let model = create(
        "gpt2",
        json!({"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 50, "n_positions": 16}),
    );
    let eval = check_modes(&model, &ids(), true);
    let gpt2 = model.downcast_ref::<Gpt2>().unwrap();
    assert_eq!(eval, values(&gpt2.forward(&ids(), None).unwrap()));
}

#[test]
fn llama_drops_attention_probabilities_only_in_training() {
    let small = json!({
        "num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
        "num_key_value_heads": 1, "vocab_size": 50, "attention_dropout": 0.5,
    });
    let model = create("llama-tiny", small.clone());
    let eval = check_modes(&model, &ids(), true);
    let llama = model.downcast_ref::<Llama>().unwrap();
    assert_eq!(eval, values(&llama.forward(&ids(), None).unwrap()));
    // HF's default: no dropout at all, so training computes what eval does.
    let mut plain = small;
    plain["attention_dropout"] = json!(0.0);
    check_modes(&create("llama-tiny", plain), &ids(), false);
}

#[test]
fn bert_drops_out_only_in_training() {
    let model = create(
        "bert-base-uncased",
        json!({"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
               "vocab_size": 50, "max_position_embeddings": 16}),
    );
    let eval = check_modes(&model, &ids(), true);
    let bert = model.downcast_ref::<Bert>().unwrap();
    assert_eq!(
        eval,
        values(&bert.forward(&ids(), None, None).unwrap().last_hidden_state)
    );
    // The padded, two-segment form takes `train` too.
    let mask = ids().ones_like().unwrap();
    let trained = bert.encode_t(&ids(), None, Some(&mask), true).unwrap();
    assert_ne!(eval, values(&trained.last_hidden_state));
}

#[test]
fn vit_has_no_dropout_to_turn_on() {
    // timm's VisionTransformer defaults every drop rate to 0, and VitConfig sets none.
    let model = create(
        "vit_tiny_patch16_224",
        json!({"img_size": 32, "embed_dim": 16, "depth": 1, "num_heads": 2, "num_classes": 5}),
    );
    let images = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
    let eval = check_modes(&model, &images, false);
    let vit = model.downcast_ref::<Vit>().unwrap();
    assert_eq!(eval, values(&vit.forward(&images).unwrap()));
}
