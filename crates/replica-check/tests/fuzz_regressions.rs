//! Replays the fuzz inputs of the harness's file readers (`fuzz/`): the
//! committed seeds, which must load, and every input that once made a target
//! fail (`fuzz/regressions/<target>/`), which must now end in a clean `Ok` or an
//! error naming the file. A panic fails the test.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use replica_check::tensor_file::parse_safetensors;
use replica_check::{Bundle, WeightMap};

#[path = "../../../fuzz/inputs.rs"]
mod fuzz_inputs;
use fuzz_inputs::{fuzz_dir, inputs};

/// The bundle_load target's input form, `header JSON, 0x00, data`, as a safetensors file.
fn frame(input: &[u8]) -> Vec<u8> {
    let split = input.iter().position(|&b| b == 0).unwrap_or(input.len());
    let (header, data) = (&input[..split], input.get(split + 1..).unwrap_or_default());
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(data);
    bytes
}

/// Parses `bytes` and reads them as a bundle; `Err` when either step refuses them.
fn load(bytes: &[u8], origin: &Path) -> Result<Bundle, String> {
    let file = parse_safetensors(bytes, origin, &Device::Cpu).map_err(|e| e.to_string())?;
    Bundle::from_tensor_file(file, origin).map_err(|e| e.to_string())
}

#[test]
fn committed_seeds_load() {
    let seeds = inputs("corpus", "safetensors_parse");
    assert!(
        seeds.len() >= 3,
        "expected the committed seeds under {}",
        fuzz_dir().display()
    );
    for (path, bytes) in &seeds {
        parse_safetensors(bytes, path, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    }
    let framed = inputs("corpus", "bundle_load");
    assert_eq!(framed.len(), seeds.len(), "one bundle_load seed per safetensors seed");
    for ((path, input), (_, bytes)) in framed.iter().zip(&seeds) {
        assert_eq!(
            &frame(input),
            bytes,
            "{}: framing differs from the raw seed",
            path.display()
        );
    }
    let bundles = framed
        .iter()
        .filter(|(path, input)| load(&frame(input), path).is_ok())
        .count();
    assert!(bundles >= 3, "only {bundles} seeds are valid bundles");
}

#[test]
fn inputs_that_once_failed_are_handled() {
    let raw = inputs("regressions", "safetensors_parse");
    let framed = inputs("regressions", "bundle_load");
    let cases = raw
        .into_iter()
        .chain(framed.into_iter().map(|(p, input)| (p, frame(&input))));
    for (path, bytes) in cases {
        if let Err(err) = load(&bytes, &path) {
            assert!(
                err.contains(&*path.to_string_lossy()),
                "{}: the error does not name the file: {err}",
                path.display()
            );
        }
    }
}

/// The weight_map target's inputs are structured, so its regressions are spelled out here.
fn apply(map: WeightMap, dims: &[usize]) -> Result<Vec<String>, String> {
    let tensor = Tensor::zeros(dims, DType::F32, &Device::Cpu).expect("a small tensor");
    let source = BTreeMap::from([("qkv.weight".to_string(), tensor)]);
    let origin = Path::new("weights.safetensors");
    let mapped = map.apply(source, origin).map_err(|e| e.to_string())?;
    Ok(mapped.tensors().keys().cloned().collect())
}

#[test]
fn split_sizes_that_overflow_are_refused() {
    // The sum of these sizes wraps to 1, the size of the dimension.
    let map = WeightMap::new().split_sized("^qkv", 0, &[("q", usize::MAX), ("k", 2)]);
    let err = apply(map, &[1, 2]).expect_err("sizes larger than the tensor");
    assert!(
        err.starts_with("weights.safetensors: `qkv.weight`: split sizes"),
        "{err}"
    );
    assert!(err.contains("do not add up to dim 0 of size 1"), "{err}");
}

#[test]
fn a_split_into_no_parts_is_refused() {
    // A zero-size dimension splits evenly into zero parts: the tensor used to vanish.
    let err = apply(WeightMap::new().split("^qkv", 0, &[]), &[0, 4]).expect_err("no parts");
    assert!(err.contains("`qkv.weight`: split into no parts"), "{err}");
    let kept = apply(WeightMap::new().split("^qkv", 0, &["q"]), &[0, 4]).expect("one part");
    assert_eq!(kept, ["q.weight"]);
}
