//! Malformed files: every error names the file and what is wrong, and nothing panics.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{bundle_metadata, f32_bytes, metadata_entry, raw_safetensors, raw_with_header_bytes, ScratchDir};
use replica_check::tensor_file::parse_safetensors;
use replica_check::{read_safetensors, Bundle, BundleMetadata, Namespace, WeightMap};
use serde_json::{json, Value};

/// The error text of loading `bytes` as a bundle from a file, which must fail.
fn load_error(dir: &ScratchDir, bytes: &[u8]) -> (PathBuf, String) {
    let path = dir.write("bad.safetensors", bytes);
    let err = Bundle::load(&path, &Device::Cpu)
        .expect_err("a malformed bundle must be refused")
        .to_string();
    assert!(
        err.starts_with(&format!("{}: ", path.display())),
        "the error does not start with the path:\n{err}"
    );
    (path, err)
}

fn assert_contains(err: &str, needles: &[&str]) {
    for needle in needles {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

/// A header with valid bundle metadata and one entry per tensor.
fn header(metadata: &Value, tensors: &[(&str, Value)]) -> Value {
    let mut header = json!({ "__metadata__": metadata_entry(metadata) });
    for (key, entry) in tensors {
        header[*key] = entry.clone();
    }
    header
}

fn entry(dtype: &str, shape: &[usize], offsets: [usize; 2]) -> Value {
    json!({"dtype": dtype, "shape": shape, "data_offsets": offsets})
}

/// A valid one-tensor bundle: `param/w`, f32 [2, 2].
fn valid_bytes() -> Vec<u8> {
    raw_safetensors(
        &header(&bundle_metadata(&[]), &[("param/w", entry("F32", &[2, 2], [0, 16]))]),
        &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
    )
}

fn with_metadata(metadata: &Value) -> Vec<u8> {
    raw_safetensors(
        &header(metadata, &[("param/w", entry("F32", &[2, 2], [0, 16]))]),
        &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
    )
}

#[test]
fn the_hand_made_bundle_is_valid() {
    let dir = ScratchDir::new("bad-valid");
    let path = dir.write("ok.safetensors", &valid_bytes());
    let bundle = Bundle::load(&path, &Device::Cpu).unwrap();
    assert_eq!(
        bundle.param("w").unwrap().to_vec2::<f32>().unwrap(),
        vec![vec![1.0, 2.0], vec![3.0, 4.0]]
    );
    assert_eq!(bundle.metadata().component, "test.Module");
}

#[test]
fn a_file_shorter_than_the_length_prefix() {
    let dir = ScratchDir::new("bad-short");
    let (_, err) = load_error(&dir, &[1, 2, 3, 4, 5]);
    assert_contains(&err, &["file is 5 bytes", "at least 8", "truncated"]);
    let (_, err) = load_error(&dir, &[]);
    assert_contains(&err, &["file is 0 bytes"]);
}

#[test]
fn a_bundle_cut_in_half() {
    let dir = ScratchDir::new("bad-cut");
    let mut b = Bundle::new(BundleMetadata::new("m", ("torch", "2"), "float32"));
    b.insert(Namespace::Param, "w", common::seeded_tensor(&[64, 64], 1));
    let full_path = dir.join("full.safetensors");
    b.save(&full_path, false).unwrap();
    let bytes = std::fs::read(&full_path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cut = bytes.len() / 2;
    assert!(cut > 8 + header_len, "the cut must land in the data section");
    let (_, err) = load_error(&dir, &bytes[..cut]);
    let data_len = cut - 8 - header_len;
    assert_contains(
        &err,
        &[
            "tensor `param/w`",
            "data offsets [0, 16384]",
            &format!("outside the data section of {data_len} bytes"),
            "truncated",
        ],
    );
}

#[test]
fn a_bundle_cut_inside_its_header() {
    let dir = ScratchDir::new("bad-cut-header");
    let bytes = valid_bytes();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let (_, err) = load_error(&dir, &bytes[..20]);
    assert_contains(
        &err,
        &[&format!(
            "header length {header_len} is larger than the 12 bytes after the length prefix"
        )],
    );
}

#[test]
fn a_header_length_beyond_the_file() {
    let dir = ScratchDir::new("bad-header-len");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &["header length 1000 is larger than the 2 bytes"]);
    // A length near u64::MAX must not overflow anything.
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &[&format!("header length {}", u64::MAX)]);
}

#[test]
fn a_header_that_is_not_json() {
    let dir = ScratchDir::new("bad-header-json");
    let (_, err) = load_error(&dir, &raw_with_header_bytes(b"{\"param/w\": nope", &[]));
    assert_contains(&err, &["header is not valid JSON"]);
    let (_, err) = load_error(&dir, &raw_with_header_bytes(b"[1, 2]", &[]));
    assert_contains(&err, &["header is not a JSON object"]);
}

#[test]
fn data_offsets_outside_the_data() {
    let dir = ScratchDir::new("bad-offsets");
    let bytes = raw_safetensors(
        &header(&bundle_metadata(&[]), &[("param/w", entry("F32", &[16], [0, 64]))]),
        &f32_bytes(&[0.0; 4]),
    );
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(
        &err,
        &[
            "tensor `param/w`",
            "data offsets [0, 64] lie outside the data section of 16 bytes",
        ],
    );
    // Reversed offsets are outside too.
    let bytes = raw_safetensors(
        &header(&bundle_metadata(&[]), &[("param/w", entry("F32", &[1], [8, 4]))]),
        &f32_bytes(&[0.0; 4]),
    );
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &["tensor `param/w`", "data offsets [8, 4]"]);
}

#[test]
fn a_shape_that_does_not_match_the_byte_span() {
    let dir = ScratchDir::new("bad-shape-span");
    let bytes = raw_safetensors(
        &header(&bundle_metadata(&[]), &[("param/w", entry("F32", &[2, 3], [0, 16]))]),
        &f32_bytes(&[0.0; 4]),
    );
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(
        &err,
        &[
            "tensor `param/w`",
            "shape [2, 3] of F32 needs 24 bytes but its data offsets span 16",
        ],
    );
}

#[test]
fn an_overflowing_shape() {
    let dir = ScratchDir::new("bad-shape-overflow");
    let huge = json!({"dtype": "F32", "shape": [u64::MAX, 4], "data_offsets": [0, 16]});
    let bytes = raw_safetensors(&header(&bundle_metadata(&[]), &[("param/w", huge)]), &[0; 16]);
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &["tensor `param/w`", "overflows"]);
}

#[test]
fn an_unknown_dtype_names_the_tensor() {
    let dir = ScratchDir::new("bad-dtype");
    let bytes = raw_safetensors(
        &header(&bundle_metadata(&[]), &[("param/q.weight", entry("Q4", &[4], [0, 16]))]),
        &[0; 16],
    );
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &["tensor `param/q.weight`", "unknown dtype \"Q4\""]);
}

#[test]
fn a_dtype_candle_cannot_hold_names_the_tensor() {
    let dir = ScratchDir::new("bad-dtype-i8");
    let bytes = raw_safetensors(
        &header(&bundle_metadata(&[]), &[("param/codes", entry("I8", &[4], [0, 4]))]),
        &[1, 2, 3, 4],
    );
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &["tensor `param/codes`: dtype i8 cannot be loaded"]);
}

#[test]
fn a_header_entry_with_missing_or_wrong_fields() {
    let dir = ScratchDir::new("bad-entry");
    let no_dtype = json!({"shape": [4], "data_offsets": [0, 16]});
    let bytes = raw_safetensors(&header(&bundle_metadata(&[]), &[("param/w", no_dtype)]), &[0; 16]);
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &["tensor `param/w`", "header entry has no `dtype`"]);

    let bad_shape = json!({"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]});
    let bytes = raw_safetensors(&header(&bundle_metadata(&[]), &[("param/w", bad_shape)]), &[0; 16]);
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(
        &err,
        &["tensor `param/w`", "shape [-1] is not a list of non-negative integers"],
    );

    let bad_offsets = json!({"dtype": "F32", "shape": [4], "data_offsets": [0, 8, 16]});
    let bytes = raw_safetensors(&header(&bundle_metadata(&[]), &[("param/w", bad_offsets)]), &[0; 16]);
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &["tensor `param/w`", "data_offsets [0,8,16] is not a pair"]);
}

#[test]
fn overlapping_tensors_name_a_tensor() {
    let dir = ScratchDir::new("bad-overlap");
    let bytes = raw_safetensors(
        &header(
            &bundle_metadata(&[]),
            &[
                ("param/a", entry("F32", &[2], [0, 8])),
                ("param/b", entry("F32", &[2], [4, 12])),
            ],
        ),
        &[0; 12],
    );
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(
        &err,
        &["tensor `param/b`: data offsets [4, 12] overlap those of `param/a` [0, 8]"],
    );
}

#[test]
fn metadata_that_maps_to_non_strings() {
    let dir = ScratchDir::new("bad-metadata-map");
    let header = json!({
        "__metadata__": {"replica": {"format_version": 1}},
        "param/w": entry("F32", &[1], [0, 4]),
    });
    let (_, err) = load_error(&dir, &raw_safetensors(&header, &[0; 4]));
    assert_contains(&err, &["`__metadata__` must map strings to strings"]);
}

#[test]
fn a_directory_instead_of_a_file() {
    let dir = ScratchDir::new("bad-dir");
    let err = Bundle::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert_contains(
        &err,
        &[&dir.path().display().to_string(), "is a directory, expected a file"],
    );
}

#[test]
fn a_missing_file() {
    let dir = ScratchDir::new("bad-missing");
    let path = dir.join("nowhere.safetensors");
    let err = Bundle::load(&path, &Device::Cpu).unwrap_err().to_string();
    assert_contains(&err, &[&path.display().to_string(), "cannot read"]);
    let err = read_safetensors(&path, &Device::Cpu).unwrap_err().to_string();
    assert_contains(&err, &[&path.display().to_string(), "cannot read"]);
    let err = WeightMap::new().load(&path, &Device::Cpu).unwrap_err().to_string();
    assert_contains(&err, &[&path.display().to_string(), "cannot read"]);
}

#[test]
fn plain_safetensors_is_not_a_bundle() {
    let dir = ScratchDir::new("bad-not-bundle");
    let no_metadata = raw_safetensors(&json!({"w": entry("F32", &[1], [0, 4])}), &[0; 4]);
    let (path, err) = load_error(&dir, &no_metadata);
    assert_contains(&err, &["not a reference bundle", "no `replica` entry"]);
    // ... though it is a fine safetensors file.
    assert!(read_safetensors(&path, &Device::Cpu).unwrap().tensors.contains_key("w"));

    let other_metadata = raw_safetensors(
        &json!({"__metadata__": {"format": "pt"}, "w": entry("F32", &[1], [0, 4])}),
        &[0; 4],
    );
    let (_, err) = load_error(&dir, &other_metadata);
    assert_contains(&err, &["not a reference bundle"]);
}

#[test]
fn metadata_that_is_not_json() {
    let dir = ScratchDir::new("bad-metadata-json");
    let header = json!({
        "__metadata__": {"replica": "{format_version: 1"},
        "param/w": entry("F32", &[1], [0, 4]),
    });
    let (_, err) = load_error(&dir, &raw_safetensors(&header, &[0; 4]));
    assert_contains(&err, &["metadata `replica` is not JSON"]);
    let (_, err) = load_error(&dir, &with_metadata(&json!([1, 2])));
    assert_contains(&err, &["metadata `replica` is not a JSON object"]);
}

#[test]
fn an_unknown_format_version() {
    let dir = ScratchDir::new("bad-version");
    let mut metadata = bundle_metadata(&[]);
    metadata["format_version"] = json!(2);
    let (_, err) = load_error(&dir, &with_metadata(&metadata));
    assert_contains(&err, &["unknown bundle format_version 2", "reads version 1"]);

    metadata["format_version"] = json!("1");
    let (_, err) = load_error(&dir, &with_metadata(&metadata));
    assert_contains(&err, &["no integer `format_version`"]);
    metadata.as_object_mut().unwrap().remove("format_version");
    let (_, err) = load_error(&dir, &with_metadata(&metadata));
    assert_contains(&err, &["no integer `format_version`"]);
}

#[test]
fn a_missing_required_metadata_field() {
    let dir = ScratchDir::new("bad-missing-field");
    for field in ["component", "config", "producer", "dtype", "seed"] {
        let mut metadata = bundle_metadata(&[]);
        metadata.as_object_mut().unwrap().remove(field);
        let (_, err) = load_error(&dir, &with_metadata(&metadata));
        assert_contains(&err, &["metadata `replica`", &format!("missing field `{field}`")]);
    }
    let mut metadata = bundle_metadata(&[]);
    metadata["producer"].as_object_mut().unwrap().remove("version");
    let (_, err) = load_error(&dir, &with_metadata(&metadata));
    assert_contains(&err, &["missing field `version`"]);
}

#[test]
fn a_wrongly_typed_metadata_field_is_named() {
    let dir = ScratchDir::new("bad-typed-field");
    let mut metadata = bundle_metadata(&[]);
    metadata["seed"] = json!("zero");
    let (_, err) = load_error(&dir, &with_metadata(&metadata));
    assert_contains(&err, &["metadata `replica`: field `seed`", "\"zero\""]);

    let mut metadata = bundle_metadata(&[]);
    metadata["activations"] = json!(["h.0", 3]);
    let (_, err) = load_error(&dir, &with_metadata(&metadata));
    assert_contains(&err, &["field `activations`", "integer `3`"]);

    let mut metadata = bundle_metadata(&[]);
    metadata["producer"]["version"] = json!(2.5);
    let (_, err) = load_error(&dir, &with_metadata(&metadata));
    assert_contains(&err, &["field `producer`", "2.5"]);
}

#[test]
fn a_key_outside_the_namespaces() {
    let dir = ScratchDir::new("bad-namespace");
    let bytes = raw_safetensors(
        &header(&bundle_metadata(&[]), &[("weights/x", entry("F32", &[1], [0, 4]))]),
        &[0; 4],
    );
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(
        &err,
        &[
            "key `weights/x` is outside the bundle namespaces",
            "param/, input/, output/, act/",
        ],
    );
}

#[test]
fn an_activation_tensor_missing_from_the_list() {
    let dir = ScratchDir::new("bad-act-unlisted");
    let bytes = raw_safetensors(
        &header(
            &bundle_metadata(&["h.0"]),
            &[
                ("act/h.0", entry("F32", &[1], [0, 4])),
                ("act/h.1", entry("F32", &[1], [4, 8])),
            ],
        ),
        &[0; 8],
    );
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &["tensor `act/h.1` is not listed in metadata `activations`"]);
}

#[test]
fn a_listed_activation_without_a_tensor() {
    let dir = ScratchDir::new("bad-act-ghost");
    let bytes = raw_safetensors(
        &header(
            &bundle_metadata(&["h.0", "ghost"]),
            &[("act/h.0", entry("F32", &[1], [0, 4]))],
        ),
        &[0; 4],
    );
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(
        &err,
        &["metadata `activations` lists `ghost` but the bundle has no `act/ghost`"],
    );
}

#[test]
fn an_activation_listed_twice() {
    let dir = ScratchDir::new("bad-act-twice");
    let bytes = raw_safetensors(
        &header(
            &bundle_metadata(&["h.0", "h.0"]),
            &[("act/h.0", entry("F32", &[1], [0, 4]))],
        ),
        &[0; 4],
    );
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &["metadata `activations` lists `h.0` twice"]);
}

#[test]
fn a_listed_input_without_a_tensor() {
    let dir = ScratchDir::new("bad-input-ghost");
    let mut metadata = bundle_metadata(&[]);
    metadata["inputs"] = json!(["0", "1"]);
    let bytes = raw_safetensors(&header(&metadata, &[("input/0", entry("F32", &[1], [0, 4]))]), &[0; 4]);
    let (_, err) = load_error(&dir, &bytes);
    assert_contains(&err, &["metadata `inputs` lists `1` but the bundle has no `input/1`"]);
}

#[test]
fn bool_masks_load_as_u8() {
    let dir = ScratchDir::new("bool-mask");
    let bytes = raw_safetensors(
        &header(&bundle_metadata(&[]), &[("param/mask", entry("BOOL", &[2, 2], [0, 4]))]),
        &[1, 0, 0, 1],
    );
    let path = dir.write("mask.safetensors", &bytes);
    let bundle = Bundle::load(&path, &Device::Cpu).expect("a BOOL mask loads");
    let mask = bundle.param("mask").unwrap();
    assert_eq!(mask.dtype(), DType::U8);
    assert_eq!(mask.to_vec2::<u8>().unwrap(), vec![vec![1, 0], vec![0, 1]]);
}

/// Every strict prefix of a valid bundle is refused with an error, never a panic.
#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = valid_bytes();
    let origin = Path::new("cut.safetensors");
    for len in 0..bytes.len() {
        let result = std::panic::catch_unwind(|| {
            parse_safetensors(&bytes[..len], origin, &Device::Cpu)
                .and_then(|file| Bundle::from_tensor_file(file, origin))
        });
        let err = result
            .unwrap_or_else(|_| panic!("panicked at length {len}"))
            .expect_err("a truncated file must be refused");
        assert!(err.to_string().starts_with("cut.safetensors: "), "{err}");
    }
    let file = parse_safetensors(&bytes, origin, &Device::Cpu).unwrap();
    assert!(Bundle::from_tensor_file(file, origin).is_ok());
}

/// Single-byte corruptions of a valid bundle never panic.
#[test]
fn corrupted_bytes_never_panic() {
    let bytes = valid_bytes();
    let origin = Path::new("corrupt.safetensors");
    for i in 0..bytes.len() {
        for value in [0u8, b'"', b'}', b'9', 0xff] {
            let mut corrupt = bytes.clone();
            corrupt[i] = value;
            let result = std::panic::catch_unwind(|| {
                parse_safetensors(&corrupt, origin, &Device::Cpu)
                    .and_then(|file| Bundle::from_tensor_file(file, origin))
                    .map(|_| ())
            });
            assert!(result.is_ok(), "panicked with byte {i} set to {value}");
        }
    }
}

#[test]
fn tensors_load_onto_the_device_with_their_values() {
    let dir = ScratchDir::new("bad-values");
    let path = dir.write("ok.safetensors", &valid_bytes());
    let file = read_safetensors(&path, &Device::Cpu).unwrap();
    let w: &Tensor = &file.tensors["param/w"];
    assert_eq!(w.dtype(), DType::F32);
    assert_eq!(
        w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![1.0, 2.0, 3.0, 4.0]
    );
    assert!(file.metadata.contains_key("replica"));
}

/// Dtypes candle has no type for are refused by name, in one line naming the
/// file and the key, rather than read as something else.
#[test]
fn dtypes_candle_cannot_hold_are_refused_by_name() {
    let dir = ScratchDir::new("unloadable");
    const NO_TYPE: &str = "candle has no such dtype";
    for (tag, bytes, name, why) in [
        ("I8", 1, "i8", NO_TYPE),
        ("U64", 8, "u64", NO_TYPE),
        ("F8_E5M2", 1, "f8_e5m2", NO_TYPE),
        ("F8_E4M3FNUZ", 1, "f8_e4m3fnuz", NO_TYPE),
        ("C64", 8, "c64", NO_TYPE),
        // Loaded, `inspect` would hang on it (candle's f8e4m3 to_f64 recursion).
        (
            "F8_E4M3",
            1,
            "f8_e4m3",
            "candle 0.11 never finishes converting it to f64",
        ),
    ] {
        let header = json!({ "w": entry(tag, &[2], [0, 2 * bytes]) });
        let path = dir.write(
            &format!("{name}.safetensors"),
            &raw_safetensors(&header, &vec![0; 2 * bytes]),
        );
        let expected = format!("{}: tensor `w`: dtype {name} cannot be loaded: {why}", path.display());
        // The header alone is fine: the file opens, and says what it holds.
        let file = replica_check::open_safetensors(&path).unwrap();
        assert_eq!(file.info("w").unwrap().dtype_name(), name);
        assert_eq!(file.load("w", &Device::Cpu).unwrap_err().to_string(), expected);
        assert_eq!(read_safetensors(&path, &Device::Cpu).unwrap_err().to_string(), expected);
    }
}
