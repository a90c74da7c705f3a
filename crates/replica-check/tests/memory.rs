//! Reading a file tensor by tensor keeps resident memory near one tensor, not
//! the file: each tensor is read into memory it owns, with nothing mapped, and
//! freed when dropped. One test in its own binary, so no other test's
//! allocations move this process's resident-set figures.

#![cfg(target_os = "linux")]

use candle_core::{DType, Device, Tensor};
use replica_check::tensor_file::{open_safetensors, write_safetensors};

const TENSORS: usize = 24;
const ELEMENTS: usize = 1 << 20; // 4 MiB of f32 each, 96 MiB in all

/// Resident memory (`VmRSS`: anonymous and file-backed) from /proc/self/status, in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("RssFile value")
}

#[test]
fn reading_every_tensor_keeps_resident_memory_near_one_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.safetensors");
    let names: Vec<String> = (0..TENSORS).map(|i| format!("layer.{i}.weight")).collect();
    {
        let tensors: Vec<Tensor> = (0..TENSORS)
            .map(|i| Tensor::full(i as f32, ELEMENTS, &Device::Cpu).unwrap())
            .collect();
        let pairs = names.iter().map(String::as_str).zip(tensors.iter());
        write_safetensors(&path, pairs, Default::default(), false).unwrap();
    }
    let file_kib = std::fs::metadata(&path).unwrap().len() / 1024;
    let tensor_kib = (ELEMENTS * 4 / 1024) as u64;

    let file = open_safetensors(&path).unwrap();
    let before = resident_kib();
    let mut peak = before;
    for (i, name) in names.iter().enumerate() {
        let tensor = file.load(name, &Device::Cpu).unwrap();
        // The data really was read: every element holds the tensor's index.
        let sum = tensor
            .to_dtype(DType::F64)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(sum, (i * ELEMENTS) as f64, "{name}");
        peak = peak.max(resident_kib());
    }
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 4 * tensor_kib,
        "resident memory grew by {grown} KiB while reading a {file_kib} KiB file of {tensor_kib} KiB tensors: \
         expected under {} KiB",
        4 * tensor_kib
    );
}
