//! Bundles built in code, saved, and loaded back.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{seeded_tensor, ScratchDir};
use half::{bf16, f16};
use replica_check::{Bundle, BundleMetadata, Namespace, FORMAT_VERSION};
use serde_json::json;

fn metadata() -> BundleMetadata {
    let mut m = BundleMetadata::new("test.Block", ("torch", "2.5.1"), "float32");
    m.config = json!({"hidden": 4, "eps": 1e-5, "act": "gelu"});
    m.seed = Some(42);
    m.producer.extra.insert("transformers".into(), json!("4.46.0"));
    m.extra.insert("note".into(), json!("made by a test"));
    m.extra.insert("nested".into(), json!({"a": [1, 2, 3]}));
    m
}

/// A bundle with a tensor in every namespace, several dtypes, and activations
/// inserted in an order that is not alphabetical.
fn full_bundle() -> Bundle {
    let dev = Device::Cpu;
    let mut b = Bundle::new(metadata());
    b.insert(Namespace::Param, "fc.weight", seeded_tensor(&[3, 4], 1));
    b.insert(
        Namespace::Param,
        "fc.bias_bf16",
        seeded_tensor(&[3], 2).to_dtype(DType::BF16).unwrap(),
    );
    b.insert(
        Namespace::Param,
        "ln.weight_f16",
        seeded_tensor(&[2, 2], 3).to_dtype(DType::F16).unwrap(),
    );
    b.insert(
        Namespace::Param,
        "double",
        seeded_tensor(&[5], 4).to_dtype(DType::F64).unwrap(),
    );
    b.insert(Namespace::Param, "mask_u8", Tensor::new(&[0u8, 1, 1], &dev).unwrap());
    b.insert(
        Namespace::Input,
        "input_ids",
        Tensor::new(&[[5i64, -1, i64::MAX]], &dev).unwrap(),
    );
    b.insert(Namespace::Input, "0", seeded_tensor(&[2, 4], 5));
    b.insert(Namespace::Output, "0", seeded_tensor(&[2, 3], 6));
    for name in ["z.last", "b.mid", "a.first#1", "b.mid:0", "m"] {
        b.insert(Namespace::Activation, name, seeded_tensor(&[2, 3], 7));
    }
    b.insert(Namespace::OutputGrad, "0", seeded_tensor(&[2, 3], 8));
    b.insert(Namespace::ParamGrad, "fc.weight", seeded_tensor(&[3, 4], 9));
    b.insert(Namespace::InputGrad, "0", seeded_tensor(&[2, 4], 10));
    b
}

fn assert_tensors_equal(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dtype(), b.dtype(), "{what}: dtype");
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    // Compare raw values in the widest type of each kind, so any bit change shows.
    if a.dtype().is_int() {
        let x: Vec<i64> = a
            .flatten_all()
            .unwrap()
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1()
            .unwrap();
        let y: Vec<i64> = b
            .flatten_all()
            .unwrap()
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(x, y, "{what}");
    } else {
        let x: Vec<f64> = a
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap();
        let y: Vec<f64> = b
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(x, y, "{what}");
    }
}

fn save_and_load(bundle: &Bundle, dir: &ScratchDir) -> Bundle {
    let path = dir.join("case.safetensors");
    bundle.save(&path, false).expect("save");
    Bundle::load(&path, &Device::Cpu).expect("load")
}

#[test]
fn round_trip_keeps_every_tensor_in_every_namespace() {
    let dir = ScratchDir::new("bundle-round-trip");
    let original = full_bundle();
    let loaded = save_and_load(&original, &dir);
    for ns in Namespace::ALL {
        let before = original.namespace(ns);
        let after = loaded.namespace(ns);
        assert!(!before.is_empty(), "{ns} should be exercised");
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{ns}"
        );
        for (name, tensor) in &before {
            assert_tensors_equal(&after[name], tensor, &format!("{ns}{name}"));
        }
    }
    assert_eq!(loaded.param("fc.bias_bf16").unwrap().dtype(), DType::BF16);
    assert_eq!(loaded.param("ln.weight_f16").unwrap().dtype(), DType::F16);
    assert_eq!(loaded.param("double").unwrap().dtype(), DType::F64);
    assert_eq!(loaded.param("mask_u8").unwrap().dtype(), DType::U8);
    let ids = loaded.input("input_ids").unwrap();
    assert_eq!(ids.dtype(), DType::I64);
    assert_eq!(ids.to_vec2::<i64>().unwrap(), vec![vec![5, -1, i64::MAX]]);
    assert_eq!(loaded.origin(), dir.join("case.safetensors"));
}

#[test]
fn round_trip_keeps_exact_bf16_and_f16_bits() {
    let dir = ScratchDir::new("bundle-bits");
    let bf: Vec<bf16> = [0x0001u16, 0x7f7f, 0x8000, 0x3f81, 0xff80]
        .iter()
        .map(|&b| bf16::from_bits(b))
        .collect();
    let hf: Vec<f16> = [0x0001u16, 0x7bff, 0x8000, 0x3c01, 0xfc00]
        .iter()
        .map(|&b| f16::from_bits(b))
        .collect();
    let mut b = Bundle::new(metadata());
    b.insert(
        Namespace::Param,
        "bf",
        Tensor::new(bf.as_slice(), &Device::Cpu).unwrap(),
    );
    b.insert(
        Namespace::Param,
        "hf",
        Tensor::new(hf.as_slice(), &Device::Cpu).unwrap(),
    );
    let loaded = save_and_load(&b, &dir);
    let bf_back: Vec<u16> = loaded
        .param("bf")
        .unwrap()
        .to_vec1::<bf16>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let hf_back: Vec<u16> = loaded
        .param("hf")
        .unwrap()
        .to_vec1::<f16>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(bf_back, bf.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    assert_eq!(hf_back, hf.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
}

#[test]
fn round_trip_keeps_metadata_and_extra_fields() {
    let dir = ScratchDir::new("bundle-metadata");
    let original = full_bundle();
    let loaded = save_and_load(&original, &dir);
    let m = loaded.metadata();
    assert_eq!(m, original.metadata());
    assert_eq!(m.format_version, FORMAT_VERSION);
    assert_eq!(m.component, "test.Block");
    assert_eq!(m.config, json!({"hidden": 4, "eps": 1e-5, "act": "gelu"}));
    assert_eq!(m.producer.name, "torch");
    assert_eq!(m.producer.version, "2.5.1");
    assert_eq!(m.producer.extra["transformers"], json!("4.46.0"));
    assert_eq!(m.dtype, "float32");
    assert_eq!(m.seed, Some(42));
    assert_eq!(m.extra["note"], json!("made by a test"));
    assert_eq!(m.extra["nested"], json!({"a": [1, 2, 3]}));
    assert_eq!(m.inputs, vec!["input_ids", "0"]);
    assert_eq!(m.outputs, vec!["0"]);
}

#[test]
fn activation_order_is_insertion_order() {
    let dir = ScratchDir::new("bundle-order");
    let order = ["z.last", "b.mid", "a.first#1", "b.mid:0", "m"];
    let original = full_bundle();
    assert_eq!(original.metadata().activations, order);
    let loaded = save_and_load(&original, &dir);
    assert_eq!(loaded.metadata().activations, order);
    let names: Vec<&str> = loaded.activations().map(|(name, _)| name).collect();
    assert_eq!(names, order);
    // `names` is the sorted view; `activations` the execution order.
    let sorted: Vec<&str> = loaded.names(Namespace::Activation).collect();
    assert_eq!(sorted, ["a.first#1", "b.mid", "b.mid:0", "m", "z.last"]);
}

#[test]
fn inserting_an_activation_twice_lists_it_once() {
    let mut b = Bundle::new(metadata());
    b.insert(Namespace::Activation, "x", seeded_tensor(&[2], 1));
    b.insert(Namespace::Activation, "x", seeded_tensor(&[3], 2));
    assert_eq!(b.metadata().activations, vec!["x"]);
    assert_eq!(b.activation("x").unwrap().dims(), &[3]);
}

#[test]
fn seed_null_and_empty_config_round_trip() {
    let dir = ScratchDir::new("bundle-null-seed");
    let mut b = Bundle::new(BundleMetadata::new("free label", ("jax", "0.4"), "bfloat16"));
    b.insert(Namespace::Output, "0", seeded_tensor(&[1], 1));
    let loaded = save_and_load(&b, &dir);
    assert_eq!(loaded.metadata().seed, None);
    assert_eq!(loaded.metadata().config, json!({}));
    assert!(loaded.metadata().extra.is_empty());
    assert!(loaded.metadata().activations.is_empty());
}

#[test]
fn saving_over_an_existing_file_needs_overwrite() {
    let dir = ScratchDir::new("bundle-overwrite");
    let path = dir.join("case.safetensors");
    let mut first = Bundle::new(metadata());
    first.insert(Namespace::Output, "0", seeded_tensor(&[2], 1));
    first.save(&path, false).unwrap();

    let mut second = Bundle::new(metadata());
    second.insert(Namespace::Output, "0", seeded_tensor(&[4], 2));
    let err = second.save(&path, false).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("already exists"), "{err}");
    // The refused save left the first file alone.
    let kept = Bundle::load(&path, &Device::Cpu).unwrap();
    assert_eq!(kept.output("0").unwrap().dims(), &[2]);

    second.save(&path, true).unwrap();
    let replaced = Bundle::load(&path, &Device::Cpu).unwrap();
    assert_eq!(replaced.output("0").unwrap().dims(), &[4]);
    assert_eq!(dir.entries(), vec!["case.safetensors"]);
}

#[test]
fn save_leaves_no_temporary_files() {
    let dir = ScratchDir::new("bundle-no-temp");
    full_bundle().save(dir.join("a.safetensors"), false).unwrap();
    full_bundle().save(dir.join("a.safetensors"), true).unwrap();
    let _ = full_bundle().save(dir.join("a.safetensors"), false);
    assert_eq!(dir.entries(), vec!["a.safetensors"]);
}

#[test]
fn saving_into_a_missing_directory_fails_cleanly() {
    let dir = ScratchDir::new("bundle-missing-dir");
    let path = dir.join("no/such/dir/case.safetensors");
    let err = full_bundle().save(&path, false).unwrap_err().to_string();
    assert!(
        err.contains("case.safetensors") && err.contains("cannot write"),
        "{err}"
    );
    assert!(dir.entries().is_empty());
}

#[test]
fn saving_an_inconsistent_bundle_is_refused() {
    let dir = ScratchDir::new("bundle-inconsistent");
    let mut m = metadata();
    m.activations = vec!["ghost".into()];
    let b = Bundle::new(m);
    let path = dir.join("bad.safetensors");
    let err = b.save(&path, false).unwrap_err().to_string();
    assert!(err.contains("bad.safetensors"), "{err}");
    assert!(err.contains("`ghost`") && err.contains("act/ghost"), "{err}");
    assert!(dir.entries().is_empty());
}

#[test]
fn get_of_a_missing_key_names_it_and_what_the_namespace_holds() {
    let b = full_bundle();
    let err = b.param("fc.wieght").unwrap_err().to_string();
    assert!(err.starts_with("<memory>: "), "{err}");
    assert!(err.contains("bundle has no `param/fc.wieght`"), "{err}");
    assert!(err.contains("it holds double, fc.bias_bf16, fc.weight"), "{err}");

    let empty = Bundle::new(metadata());
    let err = empty.output("0").unwrap_err().to_string();
    assert!(err.contains("`output/0`") && err.contains("it holds none"), "{err}");
    let err = b.input_grad("input_ids").unwrap_err().to_string();
    assert!(
        err.contains("`grad/input/input_ids`") && err.contains("it holds 0"),
        "{err}"
    );
}

#[test]
fn get_on_a_loaded_bundle_names_the_file() {
    let dir = ScratchDir::new("bundle-get-file");
    let loaded = save_and_load(&full_bundle(), &dir);
    let err = loaded.activation("nope").unwrap_err().to_string();
    assert!(
        err.contains(&dir.join("case.safetensors").display().to_string()),
        "{err}"
    );
    assert!(err.contains("`act/nope`"), "{err}");
}

#[test]
fn accessors_reach_every_namespace() {
    let b = full_bundle();
    assert_eq!(b.param("fc.weight").unwrap().dims(), &[3, 4]);
    assert_eq!(b.input("0").unwrap().dims(), &[2, 4]);
    assert_eq!(b.output("0").unwrap().dims(), &[2, 3]);
    assert_eq!(b.activation("b.mid:0").unwrap().dims(), &[2, 3]);
    assert_eq!(b.output_grad("0").unwrap().dims(), &[2, 3]);
    assert_eq!(b.param_grad("fc.weight").unwrap().dims(), &[3, 4]);
    assert_eq!(b.input_grad("0").unwrap().dims(), &[2, 4]);
    assert!(b.contains(Namespace::ParamGrad, "fc.weight"));
    assert!(!b.contains(Namespace::Param, "0"));
    assert_eq!(b.origin().to_str(), Some("<memory>"));
}

#[test]
fn namespace_split_picks_the_exact_prefix() {
    assert_eq!(Namespace::split("param/h.0.w"), Some((Namespace::Param, "h.0.w")));
    assert_eq!(Namespace::split("grad/output/0"), Some((Namespace::OutputGrad, "0")));
    assert_eq!(Namespace::split("grad/param/w"), Some((Namespace::ParamGrad, "w")));
    assert_eq!(Namespace::split("grad/input/x"), Some((Namespace::InputGrad, "x")));
    assert_eq!(Namespace::split("act/h.0:1"), Some((Namespace::Activation, "h.0:1")));
    assert_eq!(Namespace::split("grad/x"), None);
    assert_eq!(Namespace::split("param/"), None);
    assert_eq!(Namespace::split("weights/x"), None);
    assert_eq!(Namespace::OutputGrad.to_string(), "grad/output/");
}

#[test]
fn saved_file_uses_the_documented_keys_and_metadata_entry() {
    let dir = ScratchDir::new("bundle-keys");
    let path = dir.join("case.safetensors");
    full_bundle().save(&path, false).unwrap();
    let file = replica_check::read_safetensors(&path, &Device::Cpu).unwrap();
    for key in [
        "param/fc.weight",
        "input/input_ids",
        "output/0",
        "act/z.last",
        "grad/output/0",
        "grad/param/fc.weight",
        "grad/input/0",
    ] {
        assert!(file.tensors.contains_key(key), "{key}");
    }
    let meta: serde_json::Value = serde_json::from_str(&file.metadata["replica"]).unwrap();
    assert_eq!(meta["format_version"], json!(1));
    assert_eq!(meta["producer"]["transformers"], json!("4.46.0"));
    assert_eq!(meta["note"], json!("made by a test"));
    assert_eq!(meta["activations"][0], json!("z.last"));
}

#[test]
fn python_fixtures_load() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&fixtures).expect("tests/fixtures") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let bundle = Bundle::load(&path, &Device::Cpu).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert_eq!(bundle.metadata().format_version, FORMAT_VERSION);
        assert!(!bundle.metadata().outputs.is_empty(), "{}", path.display());
        for name in &bundle.metadata().outputs {
            bundle.output(name).unwrap();
        }
        loaded += 1;
    }
    assert!(loaded > 0, "no fixtures under {}", fixtures.display());
}

#[test]
fn concurrent_saves_to_one_path_each_publish_a_whole_file() {
    let dir = ScratchDir::new("bundle-concurrent");
    let path = dir.join("shared.safetensors");
    let bundles: Vec<Bundle> = (0..8)
        .map(|i| {
            let mut b = Bundle::new(metadata());
            b.insert(Namespace::Output, "0", seeded_tensor(&[64 + i, 256], i as u64));
            b
        })
        .collect();
    std::thread::scope(|s| {
        for b in &bundles {
            let path = &path;
            s.spawn(move || {
                for _ in 0..20 {
                    b.save(path, true).expect("save");
                    // Whatever is at the path must always be one whole bundle.
                    let seen = Bundle::load(path, &Device::Cpu).expect("load while saving");
                    let rows = seen.output("0").unwrap().dims()[0];
                    assert!((64..72).contains(&rows));
                }
            });
        }
    });
    assert_eq!(dir.entries(), vec!["shared.safetensors"]);
}
