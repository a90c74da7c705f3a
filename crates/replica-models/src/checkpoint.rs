//! Reading reference checkpoints into models: which model a checkpoint belongs
//! to, and strict loading through a model's [`WeightMap`] with errors that say
//! what is wrong (another model's checkpoint, a config that contradicts the
//! weights, a missing or unused tensor).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use regex::Regex;
use replica_blocks::Paper;
use replica_check::bundle::METADATA_KEY;
use replica_check::{read_safetensors, Bundle, Namespace, WeightMap};
use serde::Serialize;

use crate::papers;
use crate::{Error, Result};

/// The model families this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Gpt2,
    Vit,
    Llama,
    Bert,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Gpt2, Family::Vit, Family::Llama, Family::Bert];

    pub fn name(self) -> &'static str {
        match self {
            Family::Gpt2 => "GPT-2",
            Family::Vit => "ViT",
            Family::Llama => "LLaMA",
            Family::Bert => "BERT",
        }
    }

    /// The reference implementation whose names and numerics the model follows.
    pub fn reference(self) -> &'static str {
        match self {
            Family::Gpt2 => "transformers.GPT2LMHeadModel",
            Family::Vit => "timm.models.vision_transformer.VisionTransformer",
            Family::Llama => "transformers.LlamaForCausalLM",
            Family::Bert => "transformers.BertModel",
        }
    }

    /// How the reference checkpoint names its tensors.
    pub fn checkpoint_naming(self) -> &'static str {
        match self {
            Family::Gpt2 => {
                "HF GPT-2: transformer.{wte,wpe,h.N.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj},ln_f}, \
                 Conv1D weights [in, out], lm_head tied to wte (the `transformer.` prefix may be absent)"
            }
            Family::Vit => {
                "timm vit_*: cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}, norm, head"
            }
            Family::Llama => {
                "HF LLaMA: model.{embed_tokens,layers.N.{input_layernorm,self_attn.{q,k,v,o}_proj,post_attention_layernorm,\
                 mlp.{gate,up,down}_proj},norm}, lm_head"
            }
            Family::Bert => {
                "HF BERT: embeddings.{word,position,token_type}_embeddings, embeddings.LayerNorm, \
                 encoder.layer.N.{attention.self.{query,key,value},attention.output.{dense,LayerNorm},intermediate.dense,\
                 output.{dense,LayerNorm}}, pooler.dense (a `bert.` prefix may be present)"
            }
        }
    }

    pub fn paper(self) -> Paper {
        match self {
            Family::Gpt2 => papers::GPT2,
            Family::Vit => replica_blocks::papers::VIT,
            Family::Llama => papers::LLAMA,
            Family::Bert => papers::BERT,
        }
    }

    /// A tensor name only this family's checkpoints have.
    fn signature(self) -> &'static Regex {
        static SIGNATURES: OnceLock<[Regex; 4]> = OnceLock::new();
        let all = SIGNATURES.get_or_init(|| {
            [
                r"(^|\.)h\.\d+\.attn\.c_attn\.weight$",
                r"^blocks\.\d+\.attn\.qkv\.weight$",
                r"(^|\.)layers\.\d+\.self_attn\.q_proj\.weight$",
                r"(^|\.)encoder\.layer\.\d+\.attention\.self\.query\.weight$",
            ]
            .map(|pattern| Regex::new(pattern).expect("valid signature"))
        });
        &all[self as usize]
    }

    /// A tensor name a checkpoint of this family has, for messages.
    fn example_name(self) -> &'static str {
        match self {
            Family::Gpt2 => "transformer.h.0.attn.c_attn.weight",
            Family::Vit => "blocks.0.attn.qkv.weight",
            Family::Llama => "model.layers.0.self_attn.q_proj.weight",
            Family::Bert => "encoder.layer.0.attention.self.query.weight",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The family a checkpoint's tensor names belong to, and the name that says so.
pub fn detect_family<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<(Family, &'a str)> {
    names.into_iter().find_map(|name| {
        Family::ALL
            .into_iter()
            .find(|f| f.signature().is_match(name))
            .map(|f| (f, name))
    })
}

/// The tensors of a checkpoint file: a plain safetensors checkpoint (HF
/// `model.safetensors`, a timm `.safetensors`), or a reference bundle, whose
/// `param/` tensors are taken.
pub fn read_checkpoint(path: impl AsRef<Path>, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let file = read_safetensors(path, device)?;
    if file.metadata.contains_key(METADATA_KEY) {
        let bundle = Bundle::from_tensor_file(file, path)?;
        return Ok(bundle.namespace(Namespace::Param));
    }
    Ok(file.tensors)
}

/// The `config` a bundle or checkpoint carries in its metadata, when it has one
/// (a bundle's metadata `config`).
pub fn embedded_config(path: impl AsRef<Path>) -> Result<Option<serde_json::Value>> {
    let path = path.as_ref();
    let file = read_safetensors(path, &Device::Cpu)?;
    if !file.metadata.contains_key(METADATA_KEY) {
        return Ok(None);
    }
    let bundle = Bundle::from_tensor_file(file, path)?;
    Ok(Some(bundle.metadata().config.clone()))
}

/// Builds a model of `family` from `tensors` through `map`, strictly: a
/// checkpoint of another family, a tensor whose shape contradicts the config,
/// and any missing or unused tensor are errors that say so. `config` describes
/// the configuration in messages.
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_strict<M>(
    family: Family,
    tensors: BTreeMap<String, Tensor>,
    origin: &Path,
    map: &WeightMap,
    dtype: DType,
    device: &Device,
    config: &str,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
) -> Result<M> {
    check_family(family, tensors.keys().map(String::as_str), origin)?;
    let weights = map.apply(tensors, origin)?;
    match weights.build(dtype, device, build) {
        Err(replica_check::Error::Load(report)) if !report.mismatched.is_empty() => Err(Error::checkpoint(
            origin,
            format!(
                "the {family} config ({config}) contradicts the checkpoint's tensor shapes ({} problems):\n{}",
                report.problem_count(),
                problems(&report)
            ),
        )),
        Err(replica_check::Error::Load(report)) => Err(Error::checkpoint(
            origin,
            format!(
                "the checkpoint does not fit the {family} model ({config}) ({} problems):\n{}",
                report.problem_count(),
                problems(&report)
            ),
        )),
        other => Ok(other?),
    }
}

/// The report's problem lines, without its heading (the caller's message has one).
fn problems(report: &replica_check::LoadReport) -> String {
    report.to_string().lines().skip(1).collect::<Vec<_>>().join("\n")
}

/// Refuses a checkpoint that belongs to another family, or to none.
pub(crate) fn check_family<'a>(
    family: Family,
    names: impl IntoIterator<Item = &'a str> + Clone,
    origin: &Path,
) -> Result<()> {
    match detect_family(names.clone()) {
        Some((found, _)) if found == family => Ok(()),
        Some((found, name)) => Err(Error::checkpoint(
            origin,
            format!(
                "this is a {found} checkpoint (it has `{name}`), not a {family} one: load it with the {found} model \
                 ({}), or pass the {family} checkpoint",
                found.reference()
            ),
        )),
        None => {
            let held: Vec<&str> = names.into_iter().take(5).collect();
            let held = if held.is_empty() {
                "it holds no tensors".to_string()
            } else {
                format!(
                    "it holds e.g. {}",
                    held.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                )
            };
            Err(Error::checkpoint(
                origin,
                format!(
                    "this does not look like a {family} checkpoint: no tensor is named like `{}` ({held})",
                    family.example_name()
                ),
            ))
        }
    }
}
