//! Reading a component's config strictly.
//!
//! A component that silently ignores a config field it does not implement can
//! pass on a reference made with that field set: the worst bug a parity harness
//! can have. So a config is read into typed structs, and every field must be
//! either read by one of them or one of these two kinds of field, which are
//! *listed* (see [`Bundle::unused_config_fields`]) rather than refused:
//!
//! - **bookkeeping** ([`is_bookkeeping`]): fields that change no tensor any
//!   component computes from the bundle's weights and inputs (a HF config's
//!   `_name_or_path`, `id2label`, `use_cache`, ...), some only at their neutral
//!   value (`chunk_size_feed_forward` only when it is 0);
//! - fields the caller names as **not used by this component**: a block checked
//!   on a whole model's `config.json` does not use the vocabulary size.
//!
//! Any other unread field is an error naming it, and so is a value of the wrong
//! type (its path, via `serde_path_to_error`). A struct must honour every field it
//! declares, or refuse the values it does not implement with an error naming the
//! field ([`Bundle::config_error`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::budget::Workload;
use crate::config_check::{admit_read, ConfigCheck};
use crate::{Bundle, Error, Namespace, Result};

/// Whether the top-level config field `name` with `value` changes no computed tensor.
///
/// Fields that can change what a component computes are left out even where
/// they usually do not: `pad_token_id` (an embedding's `padding_idx` zeroes the
/// gradient of that row), `tie_word_embeddings` (which weights the head uses),
/// dropout probabilities (a component that implements training mode uses them),
/// `num_labels`, `model_type`, `attn_implementation` and generation settings
/// (`do_sample`, `num_beams`, ...). A component that does not use them names them.
pub fn is_bookkeeping(name: &str, value: &Value) -> bool {
    let neutral = |expected: &Value| value.is_null() || value == expected;
    match name {
        // Where the config came from, labels of a classifier's outputs, the
        // library that wrote it, a tokenizer's settings and token ids that only a
        // tokenizer or `generate`'s stopping rule reads (a generation case takes the
        // number of tokens from the reference output).
        "_name_or_path"
        | "_commit_hash"
        | "architectures"
        | "auto_map"
        | "transformers_version"
        | "id2label"
        | "label2id"
        | "finetuning_task"
        | "tokenizer_class"
        | "prefix"
        | "task_specific_params"
        | "problem_type"
        | "bos_token_id"
        | "eos_token_id"
        | "sep_token_id" => true,
        // What a forward pass returns besides its outputs, and how: not what it computes.
        "return_dict"
        | "output_hidden_states"
        | "output_attentions"
        | "output_scores"
        | "return_dict_in_generate"
        | "use_cache"
        | "torchscript" => true,
        // Initialisation (the weights come from the bundle), memory-saving recomputation,
        // the dtype weights are stored in (the bundle's `dtype` is what ran), TF-only flags.
        "initializer_range"
        | "initializer_factor"
        | "gradient_checkpointing"
        | "dtype"
        | "torch_dtype"
        | "use_bfloat16"
        | "tf_legacy_loss" => true,
        // Architecture switches, bookkeeping only at their neutral value.
        "chunk_size_feed_forward" => neutral(&Value::from(0)),
        "is_encoder_decoder" | "is_decoder" | "add_cross_attention" | "tie_encoder_decoder" => {
            neutral(&Value::Bool(false))
        }
        "pruned_heads" => value.is_null() || value.as_object().is_some_and(|m| m.is_empty()),
        "cross_attention_hidden_size" => value.is_null(),
        _ => false,
    }
}

/// A config read into `T`, with the fields it left unread that are allowed to be.
#[derive(Clone, Debug)]
pub struct ConfigRead<T> {
    /// The config, as the component reads it.
    pub config: T,
    /// Bookkeeping fields and fields not used by this component, sorted.
    pub unused: Vec<String>,
}

/// Several structs reading one config (a block's attention, MLP and norm settings
/// from one `config.json`): a tuple of `DeserializeOwned` types. A field is read
/// when any of them reads it; each part is checked ([`ConfigCheck`]).
pub trait ConfigParts: Sized + ConfigCheck {
    #[doc(hidden)]
    fn read_parts(config: &Value, unread: &mut Option<BTreeSet<String>>) -> std::result::Result<Self, String>;
}

macro_rules! config_parts {
    ($($part:ident),+) => {
        impl<$($part: DeserializeOwned + ConfigCheck),+> ConfigParts for ($($part,)+) {
            fn read_parts(config: &Value, unread: &mut Option<BTreeSet<String>>) -> std::result::Result<Self, String> {
                Ok(($(read_one::<$part>(config, unread)?,)+))
            }
        }
    };
}
config_parts!(A);
config_parts!(A, B);
config_parts!(A, B, C);
config_parts!(A, B, C, D);

/// Reads `config` as `T`; `unread` becomes the fields every part so far left unread.
fn read_one<T: DeserializeOwned>(
    config: &Value,
    unread: &mut Option<BTreeSet<String>>,
) -> std::result::Result<T, String> {
    let mut ignored = BTreeSet::new();
    let result = {
        let mut note = |path: serde_ignored::Path| {
            ignored.insert(path_string(&path));
        };
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(config, &mut note))
    };
    let value = result.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path.is_empty() || path == "." {
            format!("config: {inner}")
        } else {
            format!("config field `{path}`: {inner}")
        }
    })?;
    *unread = Some(match unread.take() {
        None => ignored,
        Some(before) => before.intersection(&ignored).cloned().collect(),
    });
    Ok(value)
}

/// `a.b.0`: map keys and sequence indices, without serde_ignored's `?` for options and newtypes.
fn path_string(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    let (parent, segment) = match path {
        Path::Root => return String::new(),
        Path::Seq { parent, index } => (*parent, index.to_string()),
        Path::Map { parent, key } => (*parent, key.clone()),
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            return path_string(parent)
        }
    };
    match path_string(parent) {
        prefix if prefix.is_empty() => segment,
        prefix => format!("{prefix}.{segment}"),
    }
}

/// The value at a dotted path of `config`, for messages.
fn value_at<'a>(config: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(config, |value, key| match value {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Reads `config` into the parts `P`. Unread fields are refused unless they are
/// bookkeeping or top-level fields named in `not_used` (fields of a larger
/// config that this component has no use for); those are returned as `unused`.
/// The error is one line, without the file: `config field `eps`: invalid type: ...`.
pub fn read_config_parts<P: ConfigParts>(
    config: &Value,
    not_used: &[&str],
) -> std::result::Result<ConfigRead<P>, String> {
    let mut unread = None;
    let parts = P::read_parts(config, &mut unread)?;
    let mut unused = Vec::new();
    let mut refused = Vec::new();
    for path in unread.unwrap_or_default() {
        let value = value_at(config, &path).unwrap_or(&Value::Null);
        let top_level = !path.contains('.');
        if top_level && (not_used.contains(&path.as_str()) || is_bookkeeping(&path, value)) {
            unused.push(path);
        } else {
            refused.push(format!("`{path}` (= {value})"));
        }
    }
    if !refused.is_empty() {
        let (noun, verb) = if refused.len() == 1 {
            ("field", "is")
        } else {
            ("fields", "are")
        };
        return Err(format!(
            "config {noun} {} {verb} neither read by this component nor bookkeeping: refused rather than \
             ignored, since {} could change the computation",
            refused.join(", "),
            if refused.len() == 1 { "it" } else { "they" }
        ));
    }
    Ok(ConfigRead { config: parts, unused })
}

/// [`read_config_parts`] for one struct.
pub fn read_config<T: DeserializeOwned + ConfigCheck>(
    config: &Value,
    not_used: &[&str],
) -> std::result::Result<ConfigRead<T>, String> {
    let read = read_config_parts::<(T,)>(config, not_used)?;
    Ok(ConfigRead {
        config: read.config.0,
        unused: read.unused,
    })
}

/// What a bundle records about reads of its config: where a replacement config
/// came from, and the fields its readers left unused.
#[derive(Debug, Default)]
pub(crate) struct ConfigState {
    inner: Mutex<ConfigStateInner>,
}

#[derive(Clone, Debug, Default)]
struct ConfigStateInner {
    origin: Option<PathBuf>,
    unused: BTreeSet<String>,
}

impl ConfigState {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConfigStateInner> {
        // The state is a set of names: a panic while it was held cannot leave it torn.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clone for ConfigState {
    // A clone records its own reads.
    fn clone(&self) -> Self {
        Self {
            inner: Mutex::new(self.lock().clone()),
        }
    }
}

impl Bundle {
    /// Reads the bundle's `config` as `T`, strictly: a field `T` does not read is an
    /// error naming it unless it is bookkeeping ([`is_bookkeeping`]), and a value of
    /// the wrong type is an error naming its path. The bookkeeping fields are
    /// recorded ([`Bundle::unused_config_fields`]). The config is then admitted
    /// ([`admit`]): validated, and weighed against the memory budget on the bundle's
    /// inputs ([`Bundle::workload`]), before the caller builds anything from it.
    pub fn config<T: DeserializeOwned + ConfigCheck>(&self) -> Result<T> {
        self.config_parts::<(T,)>(&[]).map(|(config,)| config)
    }

    /// Reads the bundle's `config` into several structs (a tuple), strictly as
    /// [`Bundle::config`] does: a field is read when any part reads it. The
    /// top-level fields in `not_used` are ones this component has no use for (a
    /// block on a whole model's `config.json`): accepted, and recorded with the
    /// bookkeeping.
    pub fn config_parts<P: ConfigParts>(&self, not_used: &[&str]) -> Result<P> {
        let read = read_config_parts::<P>(&self.metadata().config, not_used).map_err(|m| self.config_file_error(m))?;
        self.config_state.lock().unused.extend(read.unused);
        admit_read(&read.config, &self.workload(), &self.metadata().config).map_err(|m| self.config_file_error(m))?;
        Ok(read.config)
    }

    /// What a component runs on here: the shapes of the `input/` tensors, in the
    /// bundle's dtype (for [`ConfigCheck::footprint`]).
    pub fn workload(&self) -> Workload {
        let inputs = self.namespace(Namespace::Input);
        let element_bytes = self.dtype().map_or(4, |dtype| dtype.size_in_bytes());
        Workload::of_shapes(inputs.values().map(|t| t.dims()), element_bytes)
    }

    /// The config fields that reads of this bundle's config left unused
    /// (bookkeeping, or not used by the component), sorted.
    pub fn unused_config_fields(&self) -> Vec<String> {
        self.config_state.lock().unused.iter().cloned().collect()
    }

    /// This bundle with `config` as its `config`, read from the file `origin`
    /// (a user's `config.json`), which config errors then name.
    pub fn with_config_file(self, config: Value, origin: impl AsRef<Path>) -> Self {
        let bundle = self.with_config(config);
        *bundle.config_state.lock() = ConfigStateInner {
            origin: Some(origin.as_ref().to_path_buf()),
            unused: BTreeSet::new(),
        };
        bundle
    }

    /// A refusal of a config value: ``<file>: config field `<field>`: <message>``,
    /// naming the file the config came from.
    pub fn config_error(&self, field: &str, message: impl std::fmt::Display) -> Error {
        self.config_file_error(format!("config field `{field}`: {message}"))
    }

    /// The file the config came from: the one given to [`Bundle::with_config_file`],
    /// else the bundle's.
    pub fn config_origin(&self) -> PathBuf {
        let origin = self.config_state.lock().origin.clone();
        origin.unwrap_or_else(|| self.origin().to_path_buf())
    }

    fn config_file_error(&self, message: String) -> Error {
        Error::file(self.config_origin(), message)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Norm {
        eps: f64,
        #[serde(default)]
        #[allow(dead_code)] // read so that its fields are checked
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    struct Inner {
        #[allow(dead_code)]
        theta: f64,
    }

    #[derive(Debug, Deserialize)]
    struct Heads {
        heads: usize,
    }

    impl ConfigCheck for Norm {
        fn footprint(&self, _: &Workload) -> crate::Footprint {
            crate::Footprint::NONE
        }
    }

    impl ConfigCheck for Heads {
        fn footprint(&self, _: &Workload) -> crate::Footprint {
            crate::Footprint::NONE
        }
    }

    #[test]
    fn nested_unread_fields_are_refused_with_their_path() {
        let err = read_config::<Norm>(&json!({"eps": 1e-5, "inner": {"theta": 1.0, "factor": 0.5}}), &[]).unwrap_err();
        assert!(err.contains("`inner.factor` (= 0.5)"), "{err}");
    }

    #[test]
    fn bookkeeping_is_neutral_values_only() {
        assert!(is_bookkeeping("chunk_size_feed_forward", &json!(0)));
        assert!(!is_bookkeeping("chunk_size_feed_forward", &json!(64)));
        assert!(is_bookkeeping("is_decoder", &json!(false)));
        assert!(!is_bookkeeping("is_decoder", &json!(true)));
        assert!(!is_bookkeeping("pad_token_id", &json!(0)));
        assert!(!is_bookkeeping("tie_word_embeddings", &json!(true)));
    }

    #[test]
    fn a_field_read_by_any_part_is_read() {
        let config = json!({"eps": 1e-6, "heads": 4, "vocab_size": 10, "use_cache": true});
        let read = read_config_parts::<(Norm, Heads)>(&config, &["vocab_size"]).unwrap();
        assert_eq!((read.config.0.eps, read.config.1.heads), (1e-6, 4));
        assert_eq!(read.unused, ["use_cache", "vocab_size"]);
        // Without the second part, `heads` is unread and refused.
        let err = read_config_parts::<(Norm,)>(&config, &["vocab_size"]).unwrap_err();
        assert!(err.contains("`heads` (= 4)") && !err.contains("vocab_size"), "{err}");
    }
}
