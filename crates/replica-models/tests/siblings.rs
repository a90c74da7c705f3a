//! Configs of sibling models read by one port where the fields mean the same, and
//! refused where they do not: Mistral by the LLaMA decoder (every layer slides),
//! Gemma never; Qwen2's, Qwen3's and Gemma 2's sliding-window fields as HF reads them.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use replica_models::decoder::{DecoderConfig, SlidingLayers, SlidingWindow};
use replica_models::{
    Architecture, Gemma2Config, Llama, LlamaConfig, ModelConfig, Phi3Config, Qwen2Config, Qwen3Config,
};
use serde_json::json;

fn mistral(window: serde_json::Value) -> serde_json::Value {
    json!({
        "model_type": "mistral", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 8, "max_position_embeddings": 64,
        "sliding_window": window,
    })
}

#[test]
fn mistral_reads_as_llama_with_every_layer_sliding() {
    let config = LlamaConfig::from_value(&mistral(json!(8)), "mistral").unwrap();
    // HF's Mistral default: 8 key/value heads when the config does not say.
    assert_eq!(config.kv_heads(), 8);
    let spec = config.decoder_spec();
    assert_eq!(
        spec.sliding,
        Some(SlidingWindow {
            window: 8,
            layers: SlidingLayers::All
        })
    );
    assert_eq!(spec.layer(0).attention.window, Some(8));
    // Sequences longer than the window run: each query sees the last 8 tokens.
    let config = LlamaConfig {
        num_key_value_heads: Some(2),
        ..config
    };
    let varmap = VarMap::new();
    let model = Llama::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let ids = Tensor::arange(0u32, 12, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    assert_eq!(model.forward(&ids, None).unwrap().dims(), [1, 12, 32]);
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

fn sliding(window: usize, layers: SlidingLayers) -> Option<SlidingWindow> {
    Some(SlidingWindow { window, layers })
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
    let from_1 = window(json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1}));
    assert_eq!(from_1, sliding(8, SlidingLayers::From(1)));
    let from_1 = from_1.unwrap();
    assert!(!from_1.slides(0) && from_1.slides(1));
    // `layer_types` decides when given.
    let types = json!(["sliding_attention", "full_attention"]);
    assert_eq!(
        window(json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 2, "layer_types": types})),
        sliding(8, SlidingLayers::Listed(vec![true, false]))
    );
    // A Qwen3 config reads them the same way.
    let mut qwen3 = qwen2(json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 0}));
    qwen3["model_type"] = json!("qwen3");
    qwen3["head_dim"] = json!(8);
    let config = Qwen3Config::from_value(&qwen3, "q3").unwrap();
    assert_eq!(config.window().unwrap(), sliding(8, SlidingLayers::From(0)));
    let spec = config.decoder_spec();
    assert_eq!(
        (spec.layer(0).attention.window, spec.layer(1).attention.window),
        (Some(8), Some(8))
    );
}

#[test]
fn gemma2_alternates_local_and_global_layers_as_hf_does() {
    let gemma2 = |fields: serde_json::Value| {
        let mut config = json!({
            "model_type": "gemma2", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        });
        for (field, value) in fields.as_object().unwrap() {
            config[field] = value.clone();
        }
        Gemma2Config::from_value(&config, "gemma2.json")
    };
    // Without layer_types: layers 0 and 2 slide over HF's default window, layer 1 attends globally.
    let spec = gemma2(json!({})).unwrap().decoder_spec();
    let windows: Vec<_> = (0..3).map(|i| spec.layer(i).attention.window).collect();
    assert_eq!(windows, [Some(4096), None, Some(4096)]);
    assert_eq!(spec.final_logit_softcap, Some(30.0));
    assert_eq!(spec.block.attention.softcap, Some(50.0));
    assert_eq!(spec.block.attention.score_scale(), Some(1.0 / 16.0));
    let types = json!({"layer_types": ["full_attention", "full_attention", "sliding_attention"], "sliding_window": 5});
    let spec = gemma2(types).unwrap().decoder_spec();
    let windows: Vec<_> = (0..3).map(|i| spec.layer(i).attention.window).collect();
    assert_eq!(windows, [None, None, Some(5)]);
    let err = gemma2(json!({"sliding_window": null})).unwrap_err().to_string();
    assert!(err.contains("sliding_window is null"), "{err}");
    let err = gemma2(json!({"final_logit_softcapping": 0.0})).unwrap_err().to_string();
    assert!(
        err.contains("final_logit_softcapping must be a positive number or null, got 0"),
        "{err}"
    );
    let err = gemma2(json!({"use_bidirectional_attention": true}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("use_bidirectional_attention"), "{err}");
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
        err.contains("sliding_window is null (sliding_window counts only with use_sliding_window, which is false)"),
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

fn phi3(fields: serde_json::Value) -> Result<Phi3Config, String> {
    let mut config = json!({
        "model_type": "phi3", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 64, "original_max_position_embeddings": 16, "pad_token_id": 0,
        "embd_pdrop": 0.1,
    });
    for (field, value) in fields.as_object().unwrap() {
        config[field] = value.clone();
    }
    Phi3Config::from_value(&config, "phi3.json").map_err(|e| e.to_string())
}

/// Phi-3's RoPE fields as HF's `Phi3Config` standardises them: v4's `su` (and
/// `yarn`) scaling is LongRoPE, the top-level `original_max_position_embeddings`
/// wins over the one in the RoPE parameters, a top-level `partial_rotary_factor`
/// applies; other rope types are refused.
#[test]
fn phi3_reads_its_rope_fields_as_hf_does() {
    let factors = json!({"type": "su", "short_factor": [1.0, 1.5], "long_factor": [2.0, 5.0],
                         "original_max_position_embeddings": 32});
    let config = phi3(json!({"rope_scaling": factors, "partial_rotary_factor": 0.5})).unwrap();
    let rope = config.rope().unwrap();
    assert_eq!(rope.rope_type(), "longrope");
    assert_eq!(rope.original_max_position_embeddings, Some(16));
    assert_eq!(rope.partial_rotary_factor, Some(0.5));
    let spec = config.decoder_spec();
    assert!(spec.block.attention.fused_qkv);
    assert_eq!(spec.block.attention.rope_parameters, Some(rope));
    // Half of an 8-wide head rotates: 2 frequencies, so 2 factors; 4 are refused.
    let err = phi3(json!({"rope_scaling": factors})).unwrap_err();
    assert!(err.contains("one factor per frequency (4), got 2"), "{err}");
    let yarn = json!({"rope_type": "yarn", "short_factor": [1.0, 1.5], "long_factor": [2.0, 5.0]});
    let config = phi3(json!({"rope_parameters": yarn, "partial_rotary_factor": 0.5})).unwrap();
    assert_eq!(config.rope().unwrap().rope_type(), "longrope");
    let err = phi3(json!({"rope_parameters": {"rope_type": "linear", "factor": 2.0}})).unwrap_err();
    assert!(
        err.contains("rope_type `linear`: Phi-3 has `default` or `longrope` RoPE only"),
        "{err}"
    );
    let err = phi3(json!({"resid_pdrop": 1.5})).unwrap_err();
    assert!(err.contains("resid_pdrop"), "{err}");
    assert_eq!(
        phi3(json!({"sliding_window": 4}))
            .unwrap()
            .decoder_spec()
            .layer(1)
            .attention
            .window,
        Some(4)
    );
}

/// The configs published with the checkpoints (their fields as on the HF hub, v4
/// style) are read, their bookkeeping accepted.
#[test]
fn the_hub_configs_of_gemma2_and_phi3_are_read() {
    replica_check::MemoryBudget::set_current(replica_check::MemoryBudget { bytes: 1 << 40 });
    let gemma2 = json!({
        "architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid",
        "eos_token_id": [1, 107], "final_logit_softcapping": 30.0, "head_dim": 256,
        "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
        "initializer_range": 0.02, "intermediate_size": 9216, "max_position_embeddings": 8192,
        "model_type": "gemma2", "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4,
        "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "sliding_window": 4096, "torch_dtype": "float32", "transformers_version": "4.42.4", "use_cache": true,
        "vocab_size": 256000,
    });
    let spec = Gemma2Config::from_value(&gemma2, "gemma-2-2b/config.json")
        .unwrap()
        .decoder_spec();
    assert_eq!(
        (spec.layer(0).attention.window, spec.layer(1).attention.window),
        (Some(4096), None)
    );
    let phi3 = json!({
        "_name_or_path": "Phi-3-mini-4k-instruct", "architectures": ["Phi3ForCausalLM"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config"}, "bos_token_id": 1, "embd_pdrop": 0.0,
        "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02,
        "intermediate_size": 8192, "max_position_embeddings": 4096, "model_type": "phi3",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
        "original_max_position_embeddings": 4096, "pad_token_id": 32000, "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0, "sliding_window": 2047,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.40.2",
        "use_cache": true, "attention_bias": false, "vocab_size": 32064,
    });
    let config = Phi3Config::from_value(&phi3, "Phi-3-mini-4k-instruct/config.json").unwrap();
    assert_eq!(config.decoder_spec().layer(31).attention.window, Some(2047));
}
