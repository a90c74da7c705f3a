//! A trace on disk, for comparing a run with a reference outside the process
//! that made it (`replica trace`): one safetensors file whose tensors are named
//! as a bundle names activations (`act/<module path>`), with the order they were
//! recorded in under the metadata key [`ORDER_KEY`] (a JSON list of names). Any
//! program that writes `act/` tensors writes a dump; without the order, the
//! reference's execution order is used.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;

use crate::bundle::Namespace;
use crate::tensor_file::{read_safetensors, write_safetensors};
use crate::trace::{Trace, TraceEntry};
use crate::{Error, Result};

/// The metadata key of a dump's recording order.
pub const ORDER_KEY: &str = "replica_trace_order";

impl Trace {
    /// Writes the trace to `path` as `act/<name>` tensors, with its order; an
    /// existing file is replaced only with `overwrite`.
    pub fn save(&self, path: impl AsRef<Path>, overwrite: bool) -> Result<()> {
        let keys: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{}{}", Namespace::Activation, e.name))
            .collect();
        let order = serde_json::to_string(&self.names().collect::<Vec<_>>()).expect("names serialise");
        let metadata = HashMap::from([(ORDER_KEY.to_string(), order)]);
        let tensors = keys
            .iter()
            .map(String::as_str)
            .zip(self.entries.iter().map(|e| &e.tensor));
        write_safetensors(path, tensors, metadata, overwrite)
    }

    /// Reads a dump: its `act/` tensors (other keys are not part of a trace), in
    /// the order its metadata lists, else by name. An order that does not list
    /// exactly the file's activations is an error.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let file = read_safetensors(path, device)?;
        let prefix = Namespace::Activation.prefix();
        let mut tensors: HashMap<String, candle_core::Tensor> = file
            .tensors
            .into_iter()
            .filter_map(|(key, tensor)| Some((key.strip_prefix(prefix)?.to_string(), tensor)))
            .collect();
        let order: Vec<String> = match file.metadata.get(ORDER_KEY) {
            Some(text) => serde_json::from_str(text).map_err(|err| {
                Error::file(
                    path,
                    format!("metadata `{ORDER_KEY}` is not a JSON list of names: {err}"),
                )
            })?,
            None => {
                let mut names: Vec<String> = tensors.keys().cloned().collect();
                names.sort();
                names
            }
        };
        let mut entries = Vec::with_capacity(order.len());
        for name in order {
            let tensor = tensors.remove(&name).ok_or_else(|| {
                Error::file(
                    path,
                    format!("metadata `{ORDER_KEY}` lists `{name}`, which is not an `{prefix}` tensor of the file (or is listed twice)"),
                )
            })?;
            entries.push(TraceEntry { name, tensor });
        }
        if let Some(name) = tensors.keys().min() {
            return Err(Error::file(
                path,
                format!(
                    "`{prefix}{name}` is not in the metadata's `{ORDER_KEY}` ({} tensors are not)",
                    tensors.len()
                ),
            ));
        }
        Ok(Self::from_entries(entries))
    }
}
