//! Reading and writing safetensors files with errors that say what is wrong
//! and where: the file, the tensor key, what was expected and what was found.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::{Error, Result};

/// The tensors of one safetensors file, sorted by key, and its `__metadata__`.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Reads a whole safetensors file onto `device`.
pub fn read_safetensors(path: impl AsRef<Path>, device: &Device) -> Result<TensorFile> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    parse_safetensors(&bytes, path, device)
}

/// Reads a file's bytes, with the path in every error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    if path.is_dir() {
        return Err(Error::file(path, "is a directory, expected a file"));
    }
    std::fs::read(path).map_err(|err| Error::file(path, format!("cannot read: {err}")))
}

/// Parses safetensors bytes; `origin` names them in errors.
pub fn parse_safetensors(bytes: &[u8], origin: &Path, device: &Device) -> Result<TensorFile> {
    let fail = |message: String| Error::file(origin, message);
    check_layout(bytes).map_err(fail)?;
    let parsed = SafeTensors::deserialize(bytes).map_err(|err| fail(format!("not a valid safetensors file: {err}")))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|err| fail(format!("not a valid safetensors file: {err}")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in parsed.tensors() {
        let loaded = match view.dtype() {
            // candle has no bool dtype: masks are read as their 0/1 bytes.
            Dtype::BOOL => Tensor::from_raw_buffer(view.data(), DType::U8, view.shape(), device),
            _ => view.load(device),
        };
        let tensor = loaded.map_err(|err| {
            fail(format!(
                "tensor `{name}`: cannot load {:?} {:?}: {err}",
                view.dtype(),
                view.shape()
            ))
        })?;
        tensors.insert(name, tensor);
    }
    Ok(TensorFile {
        tensors,
        metadata: header.metadata().clone().unwrap_or_default(),
    })
}

/// Checks the framing and every header entry before handing the bytes to the
/// safetensors crate, so that errors name the key and the numbers involved.
fn check_layout(bytes: &[u8]) -> std::result::Result<(), String> {
    const PREFIX: usize = 8;
    if bytes.len() < PREFIX {
        return Err(format!(
            "file is {} bytes, too short for a safetensors header (at least {PREFIX}): truncated or not safetensors",
            bytes.len()
        ));
    }
    let header_len = u64::from_le_bytes(bytes[..PREFIX].try_into().expect("8 bytes"));
    let available = (bytes.len() - PREFIX) as u64;
    if header_len > available {
        return Err(format!(
            "header length {header_len} is larger than the {available} bytes after the length prefix: truncated or not safetensors"
        ));
    }
    let header_end = PREFIX + header_len as usize;
    let header: Value =
        serde_json::from_slice(&bytes[PREFIX..header_end]).map_err(|err| format!("header is not valid JSON: {err}"))?;
    let Value::Object(entries) = header else {
        return Err("header is not a JSON object".into());
    };
    let data_len = (bytes.len() - header_end) as u64;
    for (name, entry) in &entries {
        if name == "__metadata__" {
            if !entry.as_object().is_some_and(|m| m.values().all(Value::is_string)) {
                return Err("`__metadata__` must map strings to strings".into());
            }
            continue;
        }
        check_entry(name, entry, data_len).map_err(|err| format!("tensor `{name}`: {err}"))?;
    }
    Ok(())
}

fn check_entry(name: &str, entry: &Value, data_len: u64) -> std::result::Result<(), String> {
    let _ = name;
    let field = |key: &str| entry.get(key).ok_or(format!("header entry has no `{key}`"));
    let dtype_value = field("dtype")?;
    let dtype: Dtype =
        serde_json::from_value(dtype_value.clone()).map_err(|_| format!("unknown dtype {dtype_value}"))?;
    let shape: Vec<u64> = serde_json::from_value(field("shape")?.clone()).map_err(|_| {
        format!(
            "shape {} is not a list of non-negative integers",
            field("shape").unwrap()
        )
    })?;
    let offsets: [u64; 2] = serde_json::from_value(field("data_offsets")?.clone()).map_err(|_| {
        format!(
            "data_offsets {} is not a pair of non-negative integers",
            field("data_offsets").unwrap()
        )
    })?;
    let [begin, end] = offsets;
    if begin > end || end > data_len {
        return Err(format!(
            "data offsets [{begin}, {end}] lie outside the data section of {data_len} bytes: truncated or corrupt file"
        ));
    }
    let bits = shape
        .iter()
        .try_fold(dtype.bitsize() as u64, |acc, &d| acc.checked_mul(d))
        .ok_or(format!("shape {shape:?} overflows"))?;
    let needed = bits.div_ceil(8);
    if needed != end - begin {
        return Err(format!(
            "shape {shape:?} of {dtype:?} needs {needed} bytes but its data offsets span {}",
            end - begin
        ));
    }
    Ok(())
}

/// Writes tensors and metadata to `path` atomically: the bytes go to a temporary
/// file beside it, renamed into place once complete, so an interrupted run never
/// leaves half a file. An existing file is replaced only when `overwrite` is set.
pub fn write_safetensors<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: HashMap<String, String>,
    overwrite: bool,
) -> Result<()> {
    let path = path.as_ref();
    let fail = |message: String| Error::file(path, message);
    if !overwrite && path.exists() {
        return Err(fail("already exists (pass overwrite to replace it)".into()));
    }
    let mut contiguous = Vec::new();
    for (name, tensor) in tensors {
        contiguous.push((name.to_string(), tensor.contiguous()?));
    }
    let bytes = safetensors::serialize(contiguous.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
        .map_err(|err| fail(format!("cannot serialise: {err}")))?;
    write_atomically(path, &bytes)
}

/// Writes `bytes` to a temporary file in `path`'s directory and renames it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let fail = |message: String| Error::file(path, message);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| fail("is not a file path".into()))?
        .to_string_lossy();
    // Unique per call, not only per process: two threads saving the same path
    // must not share (and truncate) one temporary file.
    static NEXT_TEMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = NEXT_TEMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = dir.join(format!(".{file_name}.{}.{serial}.tmp", std::process::id()));
    let result = std::fs::File::create(&temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temp, path));
    result.map_err(|err| {
        let _ = std::fs::remove_file(&temp);
        fail(format!("cannot write: {err}"))
    })
}
