//! Weight maps and strict loading into a candle `VarBuilder`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use common::{flat_f64, seeded_tensor, ScratchDir};
use replica_check::{Error, LoadReport, MappedWeights, ShapeMismatch, WeightMap};

fn origin() -> &'static Path {
    Path::new("ckpt.safetensors")
}

fn source(entries: &[(&str, Tensor)]) -> BTreeMap<String, Tensor> {
    entries.iter().map(|(k, t)| (k.to_string(), t.clone())).collect()
}

fn arange(n: usize, shape: &[usize]) -> Tensor {
    Tensor::arange(0f32, n as f32, &Device::Cpu)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

fn names(mapped: &MappedWeights) -> Vec<&str> {
    mapped.tensors().keys().map(String::as_str).collect()
}

fn apply_err(map: &WeightMap, src: BTreeMap<String, Tensor>) -> String {
    map.apply(src, origin()).expect_err("the map must fail").to_string()
}

#[test]
fn rename_rewrites_names_and_keeps_values() {
    let w = seeded_tensor(&[2, 3], 1);
    let map = WeightMap::new()
        .rename(r"^transformer\.", "")
        .rename(r"^h\.(\d+)\.", "layers.$1.");
    let mapped = map
        .apply(
            source(&[("transformer.h.0.w", w.clone()), ("lm_head.w", w.clone())]),
            origin(),
        )
        .unwrap();
    assert_eq!(names(&mapped), ["layers.0.w", "lm_head.w"]);
    assert_eq!(flat_f64(&mapped.tensors()["layers.0.w"]), flat_f64(&w));
}

#[test]
fn ignore_drops_matching_tensors() {
    let t = seeded_tensor(&[2], 1);
    let map = WeightMap::new().ignore(r"\.attn\.(masked_)?bias$");
    let mapped = map
        .apply(
            source(&[
                ("h.0.attn.bias", t.clone()),
                ("h.0.attn.masked_bias", t.clone()),
                ("h.0.attn.c_attn.bias", t.clone()),
            ]),
            origin(),
        )
        .unwrap();
    assert_eq!(names(&mapped), ["h.0.attn.c_attn.bias"]);
}

#[test]
fn transpose_swaps_the_two_dimensions() {
    let w = arange(6, &[2, 3]);
    let map = WeightMap::new().transpose(r"\.c_fc\.weight$");
    let mapped = map
        .apply(
            source(&[("mlp.c_fc.weight", w.clone()), ("mlp.other.weight", w.clone())]),
            origin(),
        )
        .unwrap();
    let t = &mapped.tensors()["mlp.c_fc.weight"];
    assert_eq!(t.dims(), &[3, 2]);
    let before = w.to_vec2::<f32>().unwrap();
    let after = t.to_vec2::<f32>().unwrap();
    for (i, row) in before.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            assert_eq!(after[j][i], *v, "[{j}][{i}]");
        }
    }
    assert!(t.is_contiguous());
    // A name the pattern does not match is left as it was.
    assert_eq!(mapped.tensors()["mlp.other.weight"].dims(), &[2, 3]);
}

#[test]
fn transpose_of_a_non_matrix_names_the_source_key() {
    let map = WeightMap::new().rename("^model\\.", "").transpose(r"weight$");
    let err = apply_err(&map, source(&[("model.conv.weight", arange(8, &[2, 2, 2]))]));
    for needle in [
        "ckpt.safetensors",
        "`model.conv.weight`",
        "transpose needs a 2-D tensor, got shape [2, 2, 2]",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
}

#[test]
fn split_into_equal_parts() {
    let fused = arange(12, &[6, 2]);
    let map = WeightMap::new().split(r"^(.*)\.c_attn\.(weight|bias)$", 0, &["$1.q.$2", "$1.k.$2", "$1.v.$2"]);
    let mapped = map.apply(source(&[("h.0.c_attn.weight", fused)]), origin()).unwrap();
    assert_eq!(names(&mapped), ["h.0.k.weight", "h.0.q.weight", "h.0.v.weight"]);
    let t = mapped.tensors();
    assert_eq!(t["h.0.q.weight"].to_vec2::<f32>().unwrap(), [[0.0, 1.0], [2.0, 3.0]]);
    assert_eq!(t["h.0.k.weight"].to_vec2::<f32>().unwrap(), [[4.0, 5.0], [6.0, 7.0]]);
    assert_eq!(t["h.0.v.weight"].to_vec2::<f32>().unwrap(), [[8.0, 9.0], [10.0, 11.0]]);
}

#[test]
fn split_along_the_last_dimension() {
    // HF GPT-2 Conv1D: c_attn.weight is [in, 3 * out].
    let fused = arange(12, &[2, 6]);
    let map = WeightMap::new().split(r"^c_attn$", 1, &["q", "k", "v"]);
    let mapped = map.apply(source(&[("c_attn", fused)]), origin()).unwrap();
    let t = mapped.tensors();
    assert_eq!(t["q"].to_vec2::<f32>().unwrap(), [[0.0, 1.0], [6.0, 7.0]]);
    assert_eq!(t["v"].to_vec2::<f32>().unwrap(), [[4.0, 5.0], [10.0, 11.0]]);
    assert!(t["k"].is_contiguous());
}

#[test]
fn split_sized_gives_unequal_parts() {
    let fused = arange(8, &[8]);
    let map = WeightMap::new().split_sized(r"^qkv$", 0, &[("q", 4), ("k", 2), ("v", 2)]);
    let mapped = map.apply(source(&[("qkv", fused)]), origin()).unwrap();
    let t = mapped.tensors();
    assert_eq!(t["q"].to_vec1::<f32>().unwrap(), [0.0, 1.0, 2.0, 3.0]);
    assert_eq!(t["k"].to_vec1::<f32>().unwrap(), [4.0, 5.0]);
    assert_eq!(t["v"].to_vec1::<f32>().unwrap(), [6.0, 7.0]);
}

#[test]
fn a_split_that_does_not_divide_evenly_is_an_error() {
    let map = WeightMap::new().split(r"^qkv$", 0, &["q", "k", "v"]);
    let err = apply_err(&map, source(&[("qkv", arange(14, &[7, 2]))]));
    assert!(err.contains("`qkv`"), "{err}");
    assert!(err.contains("cannot split dim 0 of size 7 into 3 equal parts"), "{err}");

    let map = WeightMap::new().split_sized(r"^qkv$", 0, &[("q", 4), ("k", 2)]);
    let err = apply_err(&map, source(&[("qkv", arange(7, &[7]))]));
    assert!(
        err.contains("split sizes [4, 2] do not add up to dim 0 of size 7"),
        "{err}"
    );

    let map = WeightMap::new().split(r"^qkv$", 2, &["q", "k"]);
    let err = apply_err(&map, source(&[("qkv", arange(4, &[4]))]));
    assert!(err.contains("split along dim 2, but the tensor has shape [4]"), "{err}");
}

#[test]
fn two_sources_for_one_name_is_an_error() {
    let t = seeded_tensor(&[2], 1);
    let map = WeightMap::new().rename(r"^(encoder|decoder)\.", "");
    let err = apply_err(&map, source(&[("decoder.w", t.clone()), ("encoder.w", t)]));
    assert!(
        err.contains("weight map sends both `decoder.w` and `encoder.w` to `w`"),
        "{err}"
    );
}

#[test]
fn dtype_converts_floats_and_leaves_integers_alone() {
    let map = WeightMap::new().dtype(DType::F16);
    let ids = Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[0u8, 1], &Device::Cpu).unwrap();
    let mapped = map
        .apply(
            source(&[
                ("w", seeded_tensor(&[2], 1)),
                ("d", seeded_tensor(&[2], 2).to_dtype(DType::F64).unwrap()),
                ("ids", ids),
                ("mask", mask),
            ]),
            origin(),
        )
        .unwrap();
    let t = mapped.tensors();
    assert_eq!(t["w"].dtype(), DType::F16);
    assert_eq!(t["d"].dtype(), DType::F16);
    assert_eq!(t["ids"].dtype(), DType::I64);
    assert_eq!(t["ids"].to_vec1::<i64>().unwrap(), [1, 2, 3]);
    assert_eq!(t["mask"].dtype(), DType::U8);
}

#[test]
fn an_invalid_pattern_is_reported_not_a_panic() {
    let map = WeightMap::new().rename("(unclosed", "x").ignore("fine");
    let err = apply_err(&map, source(&[("w", seeded_tensor(&[1], 1))]));
    assert!(err.contains("ckpt.safetensors"), "{err}");
    assert!(err.contains("invalid pattern `(unclosed`"), "{err}");
    // Even with no tensors at all the map refuses to run.
    let err = apply_err(&WeightMap::new().transpose("[z-a]"), BTreeMap::new());
    assert!(err.contains("invalid pattern `[z-a]`"), "{err}");
}

#[test]
fn rules_run_in_order() {
    // The transpose sees the renamed name; the ignore sees the original one only
    // if it runs first.
    let w = arange(6, &[2, 3]);
    let map = WeightMap::new().rename("^old$", "new").transpose("^new$");
    let mapped = map.apply(source(&[("old", w.clone())]), origin()).unwrap();
    assert_eq!(mapped.tensors()["new"].dims(), &[3, 2]);

    let map = WeightMap::new().rename("^old$", "new").ignore("^old$");
    let mapped = map.apply(source(&[("old", w)]), origin()).unwrap();
    assert_eq!(names(&mapped), ["new"]);
}

fn small_weights() -> MappedWeights {
    WeightMap::new()
        .rename("^model\\.", "")
        .apply(
            source(&[
                ("model.a.weight", seeded_tensor(&[4, 3], 1)),
                ("model.a.bias", seeded_tensor(&[4], 2)),
            ]),
            origin(),
        )
        .unwrap()
}

#[test]
fn strict_build_succeeds_when_everything_fits() {
    let weights = small_weights();
    let (w, b) = weights
        .build(DType::F32, &Device::Cpu, |vb| {
            Ok((vb.get((4, 3), "a.weight")?, vb.pp("a").get(4, "bias")?))
        })
        .expect("clean load");
    assert_eq!(flat_f64(&w), flat_f64(&seeded_tensor(&[4, 3], 1)));
    assert_eq!(flat_f64(&b), flat_f64(&seeded_tensor(&[4], 2)));
}

#[test]
fn build_converts_to_the_requested_dtype() {
    let w = small_weights()
        .build(DType::F64, &Device::Cpu, |vb| {
            let w = vb.get((4, 3), "a.weight")?;
            vb.get(4, "a.bias")?;
            Ok(w)
        })
        .unwrap();
    assert_eq!(w.dtype(), DType::F64);
}

fn load_report(err: Error) -> LoadReport {
    match err {
        Error::Load(report) => *report,
        other => panic!("expected a load report, got {other}"),
    }
}

#[test]
fn strict_build_reports_missing_mismatched_and_unused_together() {
    let weights = WeightMap::new()
        .rename("^model\\.", "")
        .apply(
            source(&[
                ("model.a.weight", seeded_tensor(&[4, 3], 1)),
                ("model.a.bias", seeded_tensor(&[4], 2)),
                ("model.c.extra", seeded_tensor(&[5], 3)),
            ]),
            origin(),
        )
        .unwrap();
    let err = weights
        .build(DType::F32, &Device::Cpu, |vb| {
            let a = vb.get((3, 4), "a.weight")?; // stored as [4, 3]
            vb.get(4, "a.bias")?;
            let b = vb.get((2, 2), "b.weight")?; // absent
                                                 // The builder got zeros in the right shapes, so it could go on.
            assert_eq!(a.dims(), &[3, 4]);
            assert_eq!(b.dims(), &[2, 2]);
            Ok(())
        })
        .unwrap_err();
    let text = err.to_string();
    let report = load_report(err);
    assert_eq!(report.missing, vec![("b.weight".to_string(), vec![2, 2])]);
    assert_eq!(
        report.mismatched,
        vec![ShapeMismatch {
            name: "a.weight".into(),
            source: "model.a.weight".into(),
            expected: vec![3, 4],
            actual: vec![4, 3],
        }]
    );
    assert_eq!(
        report.unused,
        vec![("c.extra".to_string(), "model.c.extra".to_string())]
    );
    assert_eq!(report.problem_count(), 3);
    assert!(!report.is_clean());
    for needle in [
        "ckpt.safetensors: the weights do not fit the model (3 problems)",
        "missing: `b.weight` (the model expects shape [2, 2])",
        "shape mismatch: `a.weight`: the model expects [3, 4], the weights have [4, 3] (from `model.a.weight`)",
        "unused: `c.extra` (the model never asks for it) (from `model.c.extra`)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn lenient_maps_accept_unused_but_not_missing() {
    let weights = WeightMap::new()
        .lenient()
        .apply(
            source(&[
                ("a.weight", seeded_tensor(&[4, 3], 1)),
                ("unused", seeded_tensor(&[1], 2)),
            ]),
            origin(),
        )
        .unwrap();
    let w = weights
        .build(DType::F32, &Device::Cpu, |vb| vb.get((4, 3), "a.weight"))
        .expect("unused tensors are fine when lenient");
    assert_eq!(w.dims(), &[4, 3]);

    let err = weights
        .build(DType::F32, &Device::Cpu, |vb| {
            vb.get((4, 3), "a.weight")?;
            vb.get(7, "a.bias")
        })
        .unwrap_err();
    let report = load_report(err);
    assert_eq!(report.missing, vec![("a.bias".to_string(), vec![7])]);
    assert!(report.unused.is_empty());
}

#[test]
fn unchecked_requests_are_recorded() {
    let weights = small_weights();
    let err = weights
        .build(DType::F32, &Device::Cpu, |vb| {
            vb.get_unchecked("a.weight")?;
            vb.get_unchecked("a.bias")?;
            vb.get_unchecked("nowhere")
        })
        .unwrap_err();
    let report = load_report(err);
    assert_eq!(report.missing, vec![("nowhere".to_string(), vec![])]);
    assert!(report.unused.is_empty() && report.mismatched.is_empty());
    let text = report.to_string();
    assert!(
        text.contains("missing: `nowhere`") && !text.contains("expects shape"),
        "{text}"
    );
}

#[test]
fn a_builder_error_on_clean_weights_is_passed_through() {
    let err = small_weights()
        .build(DType::F32, &Device::Cpu, |vb| -> candle_core::Result<()> {
            vb.get((4, 3), "a.weight")?;
            vb.get(4, "a.bias")?;
            candle_core::bail!("the model refused")
        })
        .unwrap_err();
    assert!(matches!(err, Error::Candle(_)), "{err}");
    assert!(err.to_string().contains("the model refused"));
}

#[test]
fn a_candle_linear_loads_through_a_gpt2_style_map() {
    // HF GPT-2 Conv1D stores [in, out]; candle's Linear wants [out, in].
    let w_in_out = seeded_tensor(&[3, 4], 1);
    let bias = seeded_tensor(&[4], 2);
    let weights = WeightMap::new()
        .rename(r"^transformer\.", "")
        .transpose(r"\.c_fc\.weight$")
        .apply(
            source(&[
                ("transformer.mlp.c_fc.weight", w_in_out.clone()),
                ("transformer.mlp.c_fc.bias", bias.clone()),
            ]),
            origin(),
        )
        .unwrap();
    let linear = weights
        .build(DType::F32, &Device::Cpu, |vb| {
            candle_nn::linear(3, 4, vb.pp("mlp").pp("c_fc"))
        })
        .expect("a Linear loads");
    let x = seeded_tensor(&[2, 3], 3);
    let y = linear.forward(&x).unwrap();
    let by_hand = x.matmul(&w_in_out).unwrap().broadcast_add(&bias).unwrap();
    let (y, by_hand) = (flat_f64(&y), flat_f64(&by_hand));
    for (a, b) in y.iter().zip(&by_hand) {
        assert!((a - b).abs() < 1e-6, "{y:?} vs {by_hand:?}");
    }

    // Without the transpose the same Linear is a shape mismatch, reported by name.
    let raw = WeightMap::new()
        .rename(r"^transformer\.", "")
        .apply(
            source(&[
                ("transformer.mlp.c_fc.weight", w_in_out),
                ("transformer.mlp.c_fc.bias", bias),
            ]),
            origin(),
        )
        .unwrap();
    let err = raw
        .build(DType::F32, &Device::Cpu, |vb| {
            candle_nn::linear(3, 4, vb.pp("mlp").pp("c_fc"))
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "`mlp.c_fc.weight`: the model expects [4, 3], the weights have [3, 4] (from `transformer.mlp.c_fc.weight`)"
        ),
        "{err}"
    );
}

#[test]
fn var_builder_gives_plain_access() {
    let vb = small_weights().var_builder(DType::F64, &Device::Cpu);
    let w = vb.get((4, 3), "a.weight").unwrap();
    assert_eq!(w.dtype(), DType::F64);
    assert!(vb.get((3, 4), "a.weight").is_err());
}

#[test]
fn load_reads_a_checkpoint_file() {
    let dir = ScratchDir::new("weight-map-load");
    let path = dir.join("ckpt.safetensors");
    let w = seeded_tensor(&[2, 3], 1);
    replica_check::write_safetensors(&path, [("model.w", &w)], Default::default(), false).unwrap();
    let mapped = WeightMap::new()
        .rename("^model\\.", "")
        .transpose("^w$")
        .load(&path, &Device::Cpu)
        .unwrap();
    assert_eq!(mapped.tensors()["w"].dims(), &[3, 2]);
    let err = mapped
        .build(DType::F32, &Device::Cpu, |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}: the weights do not fit", path.display())),
        "{err}"
    );
    assert!(
        err.contains("unused: `w` (the model never asks for it) (from `model.w`)"),
        "{err}"
    );
}
