//! Resource limits, memory-mapped reading and safe writes: a file that claims
//! more than it holds, or more than the limits allow, is refused from its
//! header alone; a write is whole or absent and never replaces a file unasked.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{f32_bytes, raw_safetensors, raw_with_header_bytes, ScratchDir};
use replica_check::tensor_file::write_atomically;
use replica_check::{open_safetensors, write_safetensors, ReadLimits, SafetensorsFile};
use serde_json::{json, Value};

fn entry(dtype: &str, shape: &[u64], offsets: [u64; 2]) -> Value {
    json!({"dtype": dtype, "shape": shape, "data_offsets": offsets})
}

/// `a` f32 [4] then `b` f32 [2]: 24 bytes of data.
fn two_tensors() -> Vec<u8> {
    raw_safetensors(
        &json!({"a": entry("F32", &[4], [0, 16]), "b": entry("F32", &[2], [16, 24])}),
        &f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    )
}

fn open_error(dir: &ScratchDir, bytes: &[u8], limits: ReadLimits) -> String {
    let path = dir.write("x.safetensors", bytes);
    let err = SafetensorsFile::open(&path, limits)
        .expect_err("the file must be refused")
        .to_string();
    assert!(
        err.starts_with(&format!("{}: ", path.display())),
        "the error does not name the file:\n{err}"
    );
    err
}

fn assert_contains(err: &str, needles: &[&str]) {
    for needle in needles {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn tensors_are_read_one_at_a_time_from_the_file() {
    let dir = ScratchDir::new("limits-lazy");
    let path = dir.write("x.safetensors", &two_tensors());
    let file = open_safetensors(&path).unwrap();
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(file.info("b").unwrap().shape, vec![2]);
    assert_eq!(file.info("b").unwrap().bytes(), 8);
    let b = file.load("b", &Device::Cpu).unwrap();
    assert_eq!(b.to_vec1::<f32>().unwrap(), vec![5.0, 6.0]);
    let err = file.load("c", &Device::Cpu).unwrap_err().to_string();
    assert_contains(&err, &["has no tensor `c`"]);
    let all = file.load_all(&Device::Cpu).unwrap();
    assert_eq!(all.tensors["a"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn a_header_over_the_header_limit() {
    let dir = ScratchDir::new("limits-header");
    let limits = ReadLimits {
        max_header_bytes: 16,
        ..ReadLimits::DEFAULT
    };
    let err = open_error(&dir, &two_tensors(), limits);
    assert_contains(
        &err,
        &["over the limit of 16 bytes (max_header_bytes)", "header length"],
    );
}

#[test]
fn a_header_length_claiming_exabytes_is_refused_before_allocating() {
    let dir = ScratchDir::new("limits-huge-header");
    let mut bytes = two_tensors();
    bytes[..8].copy_from_slice(&(u64::MAX - 7).to_le_bytes());
    let err = open_error(&dir, &bytes, ReadLimits::DEFAULT);
    assert_contains(&err, &[&format!("header length {}", u64::MAX - 7), "larger than the"]);
}

#[test]
fn a_tensor_over_the_tensor_limit_names_it_and_both_sizes() {
    let dir = ScratchDir::new("limits-tensor");
    let limits = ReadLimits {
        max_tensor_bytes: 8,
        ..ReadLimits::DEFAULT
    };
    let err = open_error(&dir, &two_tensors(), limits);
    assert_contains(
        &err,
        &["tensor `a`", "claims 16 bytes", "over the limit of 8 bytes per tensor"],
    );
    // At the limit exactly, it loads.
    let path = dir.write("ok.safetensors", &two_tensors());
    let at_limit = ReadLimits {
        max_tensor_bytes: 16,
        ..ReadLimits::DEFAULT
    };
    assert!(SafetensorsFile::open(&path, at_limit).is_ok());
}

#[test]
fn files_over_the_total_limit() {
    let dir = ScratchDir::new("limits-total");
    let limits = ReadLimits {
        max_total_bytes: 20,
        ..ReadLimits::DEFAULT
    };
    let err = open_error(&dir, &two_tensors(), limits);
    assert_contains(
        &err,
        &["claim 24 bytes in all", "over the limit of 20 bytes (max_total_bytes)"],
    );
}

#[test]
fn a_header_listing_more_tensors_than_the_limit() {
    let dir = ScratchDir::new("limits-count");
    let limits = ReadLimits {
        max_tensors: 1,
        ..ReadLimits::DEFAULT
    };
    let err = open_error(&dir, &two_tensors(), limits);
    assert_eq!(err.lines().count(), 1, "one line naming the file and the limit: {err}");
    assert_contains(
        &err,
        &["x.safetensors: the header lists more than 1 tensors, the limit (max_tensors)"],
    );
    // `__metadata__` is not a tensor: two tensors pass a limit of two.
    let path = dir.write("two.safetensors", &two_tensors());
    let two = ReadLimits {
        max_tensors: 2,
        ..ReadLimits::DEFAULT
    };
    assert!(SafetensorsFile::open(&path, two).is_ok());
}

#[test]
fn a_huge_claimed_tensor_is_refused_from_the_header() {
    let dir = ScratchDir::new("limits-claim");
    // 2^40 f32 elements in a 16-byte data section.
    let bytes = raw_safetensors(
        &json!({"w": entry("F32", &[1 << 20, 1 << 20], [0, 1 << 42])}),
        &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
    );
    let err = open_error(&dir, &bytes, ReadLimits::DEFAULT);
    assert_contains(&err, &["tensor `w`", "lie outside the data section of 16 bytes"]);
}

#[test]
fn an_element_count_that_overflows_behind_a_zero_dimension() {
    let dir = ScratchDir::new("limits-overflow");
    let bytes = raw_safetensors(&json!({"w": entry("F32", &[0, u64::MAX, u64::MAX], [0, 0])}), &[]);
    let err = open_error(&dir, &bytes, ReadLimits::DEFAULT);
    assert_contains(&err, &["tensor `w`", "overflows"]);
}

#[test]
fn a_gap_in_the_data_section_names_the_bytes() {
    let dir = ScratchDir::new("limits-gap");
    let bytes = raw_safetensors(
        &json!({"a": entry("F32", &[2], [0, 8]), "b": entry("F32", &[2], [12, 20])}),
        &[0; 20],
    );
    let err = open_error(&dir, &bytes, ReadLimits::DEFAULT);
    assert_contains(&err, &["tensor `b`", "leave bytes [8, 12] of the data section unused"]);
}

#[test]
fn trailing_bytes_after_the_last_tensor() {
    let dir = ScratchDir::new("limits-trailing");
    let bytes = raw_safetensors(&json!({"a": entry("F32", &[2], [0, 8])}), &[0; 12]);
    let err = open_error(&dir, &bytes, ReadLimits::DEFAULT);
    assert_contains(&err, &["the data section holds 12 bytes but the tensors cover 8"]);
}

#[test]
fn tensors_may_be_listed_in_any_order_and_zero_sized() {
    let dir = ScratchDir::new("limits-order");
    let bytes = raw_safetensors(
        &json!({
            "z": entry("F32", &[2], [0, 8]),
            "empty": entry("F32", &[0, 3], [8, 8]),
            "a": entry("F32", &[1], [8, 12]),
        }),
        &f32_bytes(&[1.0, 2.0, 3.0]),
    );
    let path = dir.write("x.safetensors", &bytes);
    let file = SafetensorsFile::open(&path, ReadLimits::DEFAULT).unwrap();
    let empty = file.load("empty", &Device::Cpu).unwrap();
    assert_eq!(empty.dims(), &[0, 3]);
    assert_eq!(
        file.load("a", &Device::Cpu).unwrap().to_vec1::<f32>().unwrap(),
        vec![3.0]
    );
}

#[test]
fn an_empty_file_is_refused_before_mapping() {
    let dir = ScratchDir::new("limits-empty");
    let err = open_error(&dir, &[], ReadLimits::DEFAULT);
    assert_contains(&err, &["file is 0 bytes, too short"]);
    // A header-only file with no tensors is valid.
    let path = dir.write("none.safetensors", &raw_with_header_bytes(b"{}", &[]));
    assert!(open_safetensors(&path).unwrap().is_empty());
}

#[test]
fn a_file_that_shrinks_while_open_is_refused_not_faulted() {
    let dir = ScratchDir::new("limits-shrink");
    let path = dir.write("x.safetensors", &two_tensors());
    let file = open_safetensors(&path).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(len - 8))
        .unwrap();
    let err = file.load("b", &Device::Cpu).unwrap_err().to_string();
    assert_contains(&err, &["tensor `b`", "cannot read bytes 134..142", "cut short"]);
    // What lies before the cut still loads.
    assert_eq!(file.load("a", &Device::Cpu).unwrap().dims(), &[4]);
}

fn tensors() -> Vec<(String, Tensor)> {
    vec![("w".to_string(), Tensor::ones(3, DType::F32, &Device::Cpu).unwrap())]
}

fn save(path: &std::path::Path, overwrite: bool) -> replica_check::Result<()> {
    let tensors = tensors();
    write_safetensors(
        path,
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        HashMap::new(),
        overwrite,
    )
}

#[test]
fn an_existing_file_is_kept_unless_overwrite() {
    let dir = ScratchDir::new("write-keep");
    let path = dir.write("x.safetensors", b"precious");
    let err = save(&path, false).unwrap_err().to_string();
    assert_contains(&err, &["x.safetensors", "already exists"]);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    assert_eq!(dir.entries(), ["x.safetensors"]);
    save(&path, true).unwrap();
    assert_eq!(open_safetensors(&path).unwrap().tensors().len(), 1);
    assert_eq!(dir.entries(), ["x.safetensors"]);
}

#[test]
fn the_final_placement_refuses_a_file_that_appeared_meanwhile() {
    // `write_atomically` is the last step; a file created after any earlier check
    // is still refused, and no temporary file is left behind.
    let dir = ScratchDir::new("write-race");
    let path = dir.write("x.json", b"the other writer");
    let err = write_atomically(&path, b"mine", false).unwrap_err().to_string();
    assert_contains(&err, &["x.json", "already exists"]);
    assert_eq!(std::fs::read(&path).unwrap(), b"the other writer");
    assert_eq!(dir.entries(), ["x.json"]);
    write_atomically(&path, b"mine", true).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"mine");
    let fresh = dir.join("new.json");
    write_atomically(&fresh, b"new", false).unwrap();
    assert_eq!(std::fs::read(&fresh).unwrap(), b"new");
    assert_eq!(dir.entries(), ["new.json", "x.json"]);
}

#[test]
fn concurrent_writers_of_one_path_leave_exactly_one_whole_file() {
    let dir = ScratchDir::new("write-concurrent");
    let path = dir.join("x.bin");
    let results: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let path = &path;
                scope.spawn(move || write_atomically(path, &vec![i; 4096], false).is_ok())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 4096);
    assert!(bytes.iter().all(|&b| b == bytes[0]));
    assert_eq!(dir.entries(), ["x.bin"]);
}

#[test]
fn a_failed_write_leaves_no_temporary_file() {
    let dir = ScratchDir::new("write-fail");
    // The target is a directory: refused, even with overwrite.
    std::fs::create_dir(dir.join("sub")).unwrap();
    let err = write_atomically(&dir.join("sub"), b"x", true).unwrap_err().to_string();
    assert_contains(&err, &["sub", "is a directory"]);
    // A directory that does not exist: nothing can be created.
    let err = write_atomically(&dir.join("missing/x.bin"), b"x", false)
        .unwrap_err()
        .to_string();
    assert_contains(&err, &["missing/x.bin", "cannot write"]);
    assert_eq!(dir.entries(), ["sub"]);
}
