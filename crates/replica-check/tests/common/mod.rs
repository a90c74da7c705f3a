//! Helpers shared by the integration tests: scratch directories, seeded values,
//! and hand-made safetensors bytes for the malformed-input tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

/// A fresh directory under cargo's per-target scratch space, removed on drop.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("replica-check-tests")
            .join(format!("{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The names of the entries in the directory, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.path)
            .expect("read scratch dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, bytes).expect("write scratch file");
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Deterministic values in [-1, 1) from a 64-bit LCG (Knuth's MMIX constants).
pub fn seeded(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn seeded_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(seeded(n, seed), shape, &Device::Cpu).expect("seeded tensor")
}

pub fn flat_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F64))
        .and_then(|t| t.to_vec1())
        .expect("tensor values")
}

/// Safetensors bytes made by hand: 8-byte little-endian header length, the
/// header JSON, then the data section.
pub fn raw_safetensors(header: &Value, data: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(header).expect("header JSON");
    raw_with_header_bytes(&header, data)
}

pub fn raw_with_header_bytes(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(data);
    bytes
}

/// Valid bundle metadata JSON, to be tweaked by the malformed-input tests.
pub fn bundle_metadata(activations: &[&str]) -> Value {
    json!({
        "format_version": 1,
        "component": "test.Module",
        "config": {},
        "producer": {"name": "torch", "version": "2.5.1"},
        "dtype": "float32",
        "seed": 0,
        "activations": activations,
        "inputs": [],
        "outputs": [],
    })
}

/// The `__metadata__` header entry holding `metadata` as the `replica` string.
pub fn metadata_entry(metadata: &Value) -> Value {
    json!({ "replica": metadata.to_string() })
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
