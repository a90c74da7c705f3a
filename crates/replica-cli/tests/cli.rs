//! The `replica` binary, run as a user runs it: exit codes, what it prints,
//! and one clear line for every kind of bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use replica_check::{write_safetensors, Bundle, Namespace};
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(stem: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(format!("{stem}.safetensors"))
}

/// Runs `replica` in the workspace root with `RUST_BACKTRACE=1`, so a stray
/// backtrace would show in the checks below.
fn replica(args: &[&str]) -> Output {
    replica_in(&workspace(), args)
}

fn replica_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("the replica binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("not JSON ({err}):\n{}", stdout(output)))
}

/// Exit code 2, no panic or backtrace, and a first stderr line `error: ...`
/// containing every one of `needles`.
#[track_caller]
fn assert_input_error(output: &Output, needles: &[&str]) -> String {
    let err = stderr(output);
    assert_eq!(code(output), 2, "stderr:\n{err}\nstdout:\n{}", stdout(output));
    for banned in ["panicked", "backtrace", "RUST_BACKTRACE", "   0: "] {
        assert!(!err.contains(banned), "`{banned}` in stderr:\n{err}");
    }
    let first = err.lines().next().unwrap_or_default().to_string();
    assert!(first.starts_with("error: "), "{err}");
    for needle in needles {
        assert!(first.contains(needle), "`{needle}` not in the first line: {first}");
    }
    first
}

fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
}

fn write(path: &Path, tensors: &[(&str, &Tensor)]) {
    write_safetensors(path, tensors.iter().map(|(k, t)| (*k, *t)), HashMap::new(), true).unwrap();
}

fn write_text(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

// ---- check: the built-in suite ------------------------------------------------

#[test]
fn the_builtin_suite_passes_and_prints_one_table() {
    let out = replica(&["check"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}\n{}", stderr(&out));
    let header = text
        .lines()
        .find(|l| l.starts_with("component"))
        .expect("a table header");
    for column in [
        "paper",
        "tensors",
        "max abs diff",
        "max rel diff",
        "min cosine",
        "verdict",
    ] {
        assert!(header.contains(column), "{header}");
    }
    for case in ["linear", "layer_norm", "multihead_attention", "two_layer_mlp"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{case} "))),
            "{case} missing:\n{text}"
        );
    }
    assert!(text.contains("cases pass."), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour when piped:\n{text}");
}

#[test]
fn json_output_parses_and_lists_every_case() {
    let out = replica(&["check", "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["passed"], true);
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 9, "{} cases", cases.len());
    assert_eq!(doc["counts"]["cases"].as_u64().unwrap() as usize, cases.len());
    let linear = cases.iter().find(|c| c["name"] == "linear").unwrap();
    assert_eq!(linear["verdict"], "ok");
    assert_eq!(linear["tensors"], 4);
    assert_eq!(linear["report"]["rows"].as_array().unwrap().len(), 4);
}

#[test]
fn markdown_output_is_a_markdown_table() {
    let out = replica(&["check", "--format", "markdown"]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(
        text.contains(
            "| component | paper | tensors | max abs diff | max rel diff | min cosine | max noise x | verdict |"
        ),
        "{text}"
    );
    assert!(text.contains("| --- | --- |"), "{text}");
    assert!(text.contains("| layer_norm | - | 5 |"), "{text}");
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let coloured = replica(&["--color", "always", "check", "--model", "linear"]);
    assert!(stdout(&coloured).contains("\u{1b}["), "{}", stdout(&coloured));
    let plain = replica(&["check", "--model", "linear", "--color", "never"]);
    assert!(!stdout(&plain).contains('\u{1b}'));
}

// ---- check: suites and single components ---------------------------------------

#[test]
fn the_example_suite_passes_from_any_directory() {
    let suite = workspace().join("examples/suites/fixtures.toml");
    let elsewhere = tempfile::tempdir().unwrap();
    let out = replica_in(elsewhere.path(), &["check", s(&suite)]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}\n{}", stderr(&out));
    assert!(text.contains("example suite"), "{text}");
    assert!(text.contains("linear, weights read through a weight map"), "{text}");
    assert!(text.contains("All 5 cases pass."), "{text}");
}

#[test]
fn one_component_with_trace() {
    let out = replica(&[
        "check",
        "--model",
        "layer_norm",
        "--reference",
        "tests/fixtures/layer_norm.safetensors",
        "--trace",
    ]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}\n{}", stderr(&out));
    assert!(text.contains("Trace of layer_norm"), "{text}");
    assert!(text.contains("The case passes."), "{text}");
}

#[test]
fn the_trace_names_the_first_divergent_module() {
    // two_layer_mlp records its own trace; --trace must see it.
    let out = replica(&["check", "--model", "two_layer_mlp", "--trace"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}");
    assert!(text.contains("3 modules recorded, 3 compared"), "{text}");
    assert!(text.contains("No module diverges."), "{text}");

    // Plant a difference in the GELU's activation (module `1`): it is the first to diverge.
    let dir = tempfile::tempdir().unwrap();
    let mut bundle = Bundle::load(fixture("two_layer_mlp"), &Device::Cpu).unwrap();
    let act = bundle.activation("1").unwrap().clone();
    bundle.insert(Namespace::Activation, "1", (act + 0.5).unwrap());
    let planted = dir.path().join("planted.safetensors");
    bundle.save(&planted, true).unwrap();
    let out = replica(&[
        "check",
        "--model",
        "two_layer_mlp",
        "--reference",
        s(&planted),
        "--trace",
    ]);
    let text = stdout(&out);
    assert_eq!(code(&out), 1, "{text}");
    assert!(text.contains("First divergent module: `1`"), "{text}");
}

#[test]
fn a_planted_difference_fails_and_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut bundle = Bundle::load(fixture("layer_norm"), &Device::Cpu).unwrap();
    let output = bundle.output("0").unwrap().clone();
    // One element off by 0.1, far beyond f32's tolerance.
    let bump = Tensor::zeros(output.dims(), DType::F32, &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, v)| if i == 7 { v + 0.1 } else { v })
        .collect::<Vec<_>>();
    let planted = (output.clone() + tensor(&bump, output.dims())).unwrap();
    bundle.insert(Namespace::Output, "0", planted);
    let path = dir.path().join("planted.safetensors");
    bundle.save(&path, true).unwrap();

    let out = replica(&["check", "--model", "layer_norm", "--reference", s(&path)]);
    let text = stdout(&out);
    assert_eq!(code(&out), 1, "{text}\n{}", stderr(&out));
    assert!(text.contains("FAIL (2 tensors)"), "{text}"); // the fused and the composed output
    assert!(text.contains("output/0: Tensors are not close!"), "{text}");
    assert!(text.contains("Mismatched elements: 1 / 160"), "{text}");
    assert!(text.contains("0 of 1 cases pass, 1 fail."), "{text}");

    let out = replica(&[
        "check",
        "--model",
        "layer_norm",
        "--reference",
        s(&path),
        "--format",
        "json",
    ]);
    assert_eq!(code(&out), 1);
    let doc = json(&out);
    assert_eq!(doc["passed"], false);
    assert_eq!(doc["cases"][0]["verdict"], "fail");

    // A tolerance loose enough for the planted difference lets it pass.
    let out = replica(&[
        "check",
        "--model",
        "layer_norm",
        "--reference",
        s(&path),
        "--atol",
        "0.2",
    ]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));

    // The command line's tolerance wins over every layer of a suite file's.
    let suite = format!(
        "[[case]]\ncomponent = \"layer_norm\"\nreference = \"{}\"\n[case.tolerance.tensor]\n\"output/*\" = {{ atol = 0 }}\n",
        path.display()
    );
    let suite = write_text(dir.path(), "suite.toml", &suite);
    assert_eq!(code(&replica(&["check", s(&suite)])), 1);
    let out = replica(&["check", s(&suite), "--atol", "0.2"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}

#[test]
fn a_suite_with_a_weight_map_and_tolerances() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = Bundle::load(fixture("linear"), &Device::Cpu).unwrap();
    // The linear's weights, stored as a checkpoint with other names and the weight transposed.
    let w = bundle.param("weight").unwrap().t().unwrap().contiguous().unwrap();
    let b = bundle.param("bias").unwrap().clone();
    let extra = tensor(&[0.0], &[1]);
    write(
        &dir.path().join("ckpt.safetensors"),
        &[("fc.w", &w), ("fc.b", &b), ("fc.step", &extra)],
    );
    let suite = format!(
        r#"
name = "weight map"
[tolerance.tensor]
"grad/*" = {{ rtol = 1e-5 }}

[[case]]
name = "linear from a checkpoint"
component = "linear"
reference = "{}"
weights = "ckpt.safetensors"
[case.weight_map]
ignore = ['\.step$']
rename = {{ '^fc\.w$' = "weight", '^fc\.b$' = "bias" }}
transpose = ['^weight$']
"#,
        fixture("linear").display()
    );
    let path = write_text(dir.path(), "suite.toml", &suite);
    let out = replica(&["check", s(&path), "--format", "json"]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let doc = json(&out);
    let rows = doc["cases"][0]["report"]["rows"].as_array().unwrap();
    let grad = rows.iter().find(|r| r["name"] == "grad/param/weight").unwrap();
    assert_eq!(grad["comparison"]["tolerance"]["rtol"], 1e-5);
    let output = rows.iter().find(|r| r["name"] == "output/0").unwrap();
    assert_eq!(output["comparison"]["tolerance"]["rtol"], 1.3e-6);

    // Without the transpose the weight does not fit: the first mismatches are listed.
    let broken = suite.replace("transpose = ['^weight$']", "");
    let path = write_text(dir.path(), "broken.toml", &broken);
    let out = replica(&["check", s(&path)]);
    assert_input_error(&out, &["broken.toml:", "ckpt.safetensors", "do not fit `linear`"]);
    assert!(stderr(&out).contains("shape mismatch: `weight`: the model expects [8, 16], the weights have [16, 8]"));
}

// ---- diff --------------------------------------------------------------------

#[test]
fn diff_of_a_file_with_itself_passes() {
    let path = fixture("two_layer_mlp");
    let out = replica(&["diff", s(&path), s(&path)]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}");
    assert!(
        text.contains("24 shared keys: 24 match, 0 differ; 0 only in A, 0 only in B."),
        "{text}"
    );
}

#[test]
fn diff_lists_keys_only_in_one_file_and_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    let same = tensor(&[1.0, 2.0, 3.0], &[3]);
    write(
        &a,
        &[
            ("same", &same),
            ("changed", &tensor(&[1.0, 2.0], &[2])),
            ("reshaped", &tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2])),
            ("retyped", &tensor(&[1.0, 2.0], &[2])),
            ("gone", &same),
        ],
    );
    write(
        &b,
        &[
            ("same", &same),
            ("changed", &tensor(&[1.0, 2.5], &[2])),
            ("reshaped", &tensor(&[1.0, 2.0, 3.0, 4.0], &[4])),
            ("retyped", &tensor(&[1.0, 2.0], &[2]).to_dtype(DType::F64).unwrap()),
            ("new", &same),
        ],
    );
    let out = replica(&["diff", s(&a), s(&b)]);
    let text = stdout(&out);
    assert_eq!(code(&out), 1, "{text}");
    let row = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no row for {key}:\n{text}"))
            .to_string()
    };
    assert!(row("gone").ends_with("only in A"), "{text}");
    assert!(row("new").ends_with("only in B"), "{text}");
    assert!(row("same").ends_with("ok"), "{text}");
    assert!(row("changed").ends_with("FAIL (1/2)"), "{text}");
    assert!(row("reshaped").ends_with("FAIL (shape mismatch)"), "{text}");
    assert!(row("retyped").ends_with("FAIL (dtype mismatch)"), "{text}");
    assert!(
        text.contains("4 shared keys: 1 match, 3 differ; 1 only in A, 1 only in B."),
        "{text}"
    );

    let doc = json(&replica(&["diff", s(&a), s(&b), "--format", "json"]));
    assert_eq!(doc["only_in_a"], serde_json::json!(["gone"]));
    assert_eq!(doc["only_in_b"], serde_json::json!(["new"]));
    assert_eq!(doc["passed"], false);

    // A tolerance wide enough for `changed`: only the structural differences remain.
    let out = replica(&["diff", s(&a), s(&b), "--atol", "1", "--format", "markdown"]);
    let text = stdout(&out);
    assert!(text.contains("| changed | [2] | f32 |"), "{text}");
    assert!(text.contains("| ok |"), "{text}");
}

#[test]
fn diff_renames_keys_before_matching() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    let t = tensor(&[1.0, 2.0], &[2]);
    write(&a, &[("transformer.h.0.w", &t), ("transformer.h.1.w", &t)]);
    write(&b, &[("h.0.w", &t), ("h.1.w", &t)]);
    let out = replica(&["diff", s(&a), s(&b)]);
    assert_eq!(code(&out), 1);
    let out = replica(&["diff", s(&a), s(&b), "--rename", r"^transformer\.="]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}");
    assert!(text.contains("2 shared keys: 2 match"), "{text}");
}

/// A safetensors file of one-dimensional tensors in any dtype, candle's or not:
/// (key, dtype tag, element count, little-endian bytes).
fn write_raw(path: &Path, tensors: &[(&str, &str, usize, Vec<u8>)]) {
    let (mut header, mut data) = (serde_json::json!({}), Vec::new());
    for (key, dtype, elements, bytes) in tensors {
        let offsets = [data.len(), data.len() + bytes.len()];
        header[*key] = serde_json::json!({"dtype": dtype, "shape": [elements], "data_offsets": offsets});
        data.extend_from_slice(bytes);
    }
    let header = header.to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
}

#[test]
fn diff_compares_i64_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let ids = |v: i64| Tensor::new(&[3, v], &Device::Cpu).unwrap();
    // 2^53 + 1 rounds to 2^53 in f64.
    write(&path("a.safetensors"), &[("ids", &ids(1 << 53))]);
    write(&path("b.safetensors"), &[("ids", &ids((1 << 53) + 1))]);
    write(&path("c.safetensors"), &[("ids", &ids(1 << 53))]);
    let (a, b, c) = (path("a.safetensors"), path("b.safetensors"), path("c.safetensors"));

    let out = replica(&["diff", s(&a), s(&b)]);
    let text = stdout(&out);
    assert_eq!(code(&out), 1, "{text}");
    let row = text.lines().find(|l| l.starts_with("ids ")).expect("a row for ids");
    assert!(row.ends_with("FAIL (1/2)"), "{text}");
    assert!(
        text.contains("(actual 9007199254740993, expected 9007199254740992)"),
        "{text}"
    );
    let doc = json(&replica(&["diff", s(&a), s(&b), "--format", "json"]));
    assert_eq!(doc["passed"], false);
    let comparison = &doc["shared"][0]["comparison"];
    assert_eq!(comparison["mismatched"], 1);
    assert_eq!(comparison["integers"]["max_abs_diff"], 1);
    assert_eq!(comparison["integers"]["worst"]["actual"], 9007199254740993i64);

    let out = replica(&["diff", s(&a), s(&c)]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}

#[test]
fn diff_fails_when_stored_dtypes_differ() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = |values: &[u32], width: usize| -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()[..width].to_vec()).collect()
    };
    // (A's dtype, its bytes), (B's dtype, its bytes): the values agree, or the bits do.
    let pairs = [
        (("U16", bytes(&[1, 65535], 2)), ("U32", bytes(&[1, 65535], 4))),
        (("BOOL", vec![0, 1]), ("U8", vec![0, 1])),
        (("U32", bytes(&[u32::MAX, 5], 4)), ("I32", bytes(&[u32::MAX, 5], 4))),
    ];
    for ((a_dtype, a_bytes), (b_dtype, b_bytes)) in pairs {
        let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
        write_raw(&a, &[("t", a_dtype, 2, a_bytes)]);
        write_raw(&b, &[("t", b_dtype, 2, b_bytes)]);
        let (a_name, b_name) = (a_dtype.to_lowercase(), b_dtype.to_lowercase());
        let out = replica(&["diff", s(&a), s(&b)]);
        let text = stdout(&out);
        assert_eq!(code(&out), 1, "{a_name} against {b_name}:\n{text}");
        let row = text.lines().find(|l| l.starts_with("t ")).expect("a row for t");
        assert!(row.ends_with("FAIL (dtype mismatch)"), "{text}");
        assert!(row.contains(&format!("A {a_name}, B {b_name}")), "{text}");
        // B is the actual side, A the expected one.
        assert!(
            text.contains(&format!("dtypes differ: actual {b_name}, expected {a_name}")),
            "{text}"
        );
        // The same file against itself passes, and inspect shows the stored dtype.
        assert_eq!(code(&replica(&["diff", s(&a), s(&a)])), 0);
        let doc = json(&replica(&["inspect", s(&a), "--format", "json"]));
        assert_eq!(doc["tensors"][0]["dtype"], a_name.as_str());
    }
}

// ---- inspect, models, papers -------------------------------------------------

#[test]
fn inspect_prints_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let x = tensor(&[1.0, 2.0, 3.0, 4.0, f32::NAN, f32::INFINITY], &[2, 3]);
    let ids = Tensor::from_slice(&[3i64, 5], &[2], &Device::Cpu).unwrap();
    let metadata = HashMap::from([("note".to_string(), "made by a test".to_string())]);
    write_safetensors(&path, [("x", &x), ("ids", &ids)], metadata, true).unwrap();

    let out = replica(&["inspect", s(&path), "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["metadata"]["note"], "made by a test");
    let x = doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "x")
        .unwrap();
    assert_eq!(x["dtype"], "f32");
    assert_eq!(x["shape"], serde_json::json!([2, 3]));
    assert_eq!(x["elements"], 6);
    assert_eq!(
        (x["min"].as_f64(), x["max"].as_f64(), x["mean"].as_f64()),
        (Some(1.0), Some(4.0), Some(2.5))
    );
    assert!((x["std"].as_f64().unwrap() - 1.25f64.sqrt()).abs() < 1e-9, "{x}");
    assert_eq!((x["nan"].as_u64(), x["pos_inf"].as_u64()), (Some(1), Some(1)));
    let ids = doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ids")
        .unwrap();
    assert_eq!((ids["dtype"].as_str(), ids["mean"].as_f64()), (Some("i64"), Some(4.0)));

    let out = replica(&["inspect", s(&path)]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0);
    assert!(text.contains("note: made by a test"), "{text}");
    let row = text.lines().find(|l| l.starts_with("x ")).expect("a row for x");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        ["x", "f32", "[2,", "3]", "6", "1", "4", "2.5", "1.118034", "1", "1"],
        "{row}"
    );
}

#[test]
fn inspect_summarises_a_bundle() {
    let out = replica(&["inspect", "tests/fixtures/linear.safetensors"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0);
    assert!(text.contains("Reference bundle: torch.nn.Linear"), "{text}");
    assert!(text.contains("\"format_version\": 1"), "{text}");
}

#[test]
fn papers_lists_the_registry() {
    let out = replica(&["papers"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0);
    let rope = text.lines().find(|l| l.starts_with("Rope ")).expect("a Rope row");
    assert!(
        rope.contains("RoFormer") && rope.contains("2104.09864") && rope.contains("2021"),
        "{rope}"
    );
    let doc = json(&replica(&["papers", "--format", "json"]));
    assert!(doc
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["arxiv"] == "2104.09864" && p["url"] == "https://arxiv.org/abs/2104.09864"));
    let text = stdout(&replica(&["papers", "rotary", "--format", "markdown"]));
    assert!(text.starts_with("| block | paper | arXiv | year | url |"), "{text}");
}

#[test]
fn models_lists_and_filters_the_components() {
    let text = stdout(&replica(&["models"]));
    assert!(text.lines().any(|l| l.starts_with("multihead_attention ")), "{text}");
    let text = stdout(&replica(&["models", "norm"]));
    assert!(text.lines().any(|l| l.starts_with("layer_norm ")), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("linear ")), "{text}");
    let doc = json(&replica(&["models", "--format", "json"]));
    assert!(doc.as_array().unwrap().iter().any(|c| c["name"] == "softmax"));
}

#[test]
fn every_command_has_help() {
    for command in [
        vec![],
        vec!["check"],
        vec!["diff"],
        vec!["inspect"],
        vec!["models"],
        vec!["papers"],
    ] {
        let mut args = command.clone();
        args.push("--help");
        let out = replica(&args);
        assert_eq!(code(&out), 0, "{args:?}");
        assert!(stdout(&out).contains("Usage: replica"), "{args:?}: {}", stdout(&out));
    }
}

// ---- bad input: exit 2, one clear line, no panic -------------------------------

#[test]
fn missing_files_and_directories() {
    let out = replica(&["check", "--model", "layer_norm", "--reference", "nope.safetensors"]);
    assert_input_error(&out, &["nope.safetensors", "cannot read"]);
    let out = replica(&["check", "--model", "layer_norm", "--reference", "tests"]);
    assert_input_error(&out, &["tests", "is a directory"]);
    let out = replica(&["check", "missing-suite.toml"]);
    assert_input_error(&out, &["missing-suite.toml", "cannot read"]);
    let out = replica(&["check", "tests/fixtures"]);
    assert_input_error(&out, &["tests/fixtures", "is a directory"]);
    let out = replica(&["inspect", "nope.safetensors"]);
    assert_input_error(&out, &["nope.safetensors"]);
    let out = replica(&["diff", "tests/fixtures/linear.safetensors", "nope.safetensors"]);
    assert_input_error(&out, &["nope.safetensors"]);
    let out = replica(&["check", "--model", "layer_norm", "--weights", "w.safetensors"]);
    assert_input_error(&out, &["w.safetensors", "cannot read"]);
    let out = replica(&["check", "--model", "layer_norm", "--config", "config.json"]);
    assert_input_error(&out, &["config.json", "cannot read"]);
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("linear")).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let corrupt = dir.path().join("corrupt.safetensors");
    let mut garbage = 12u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"{not json!!}");
    std::fs::write(&corrupt, &garbage).unwrap();
    let tiny = write_text(dir.path(), "tiny.safetensors", "abc");

    for path in [&truncated, &corrupt, &tiny] {
        for args in [
            vec!["check", "--model", "linear", "--reference", s(path)],
            vec!["inspect", s(path)],
            vec!["diff", s(path), s(&fixture("linear"))],
            vec!["check", "--model", "linear", "--weights", s(path)],
        ] {
            let out = replica(&args);
            let line = assert_input_error(&out, &[s(path)]);
            assert!(
                line.contains("truncated") || line.contains("not valid JSON") || line.contains("corrupt"),
                "{args:?}: {line}"
            );
        }
    }
}

#[test]
fn suite_mistakes_name_the_line_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let suite = |name: &str, text: &str| write_text(dir.path(), name, text);

    let path = suite(
        "typo.toml",
        "[[case]]\ncomponent = \"layer_norm\"\nreferense = \"x.safetensors\"\n",
    );
    assert_input_error(
        &replica(&["check", s(&path)]),
        &["typo.toml:3", "unknown field `referense`", "did you mean `reference`"],
    );

    let path = suite("unknown.toml", "[[case]]\ncomponent = \"layer_nrom\"\n");
    assert_input_error(
        &replica(&["check", s(&path)]),
        &[
            "unknown.toml:2",
            "unknown component `layer_nrom`",
            "did you mean `layer_norm`",
        ],
    );

    let path = suite(
        "negative.toml",
        "[[case]]\ncomponent = \"linear\"\n\n[case.tolerance]\nrtol = -0.5\n",
    );
    assert_input_error(
        &replica(&["check", s(&path)]),
        &["negative.toml:5", "`rtol`", ">= 0", "-0.5"],
    );

    let path = suite(
        "nan.toml",
        "[[case]]\ncomponent = \"linear\"\ntolerance = { tensor = { \"grad/*\" = { atol = \"small\" } } }\n",
    );
    assert_input_error(
        &replica(&["check", s(&path)]),
        &["nan.toml:3", "`atol`", "expected a number"],
    );

    let path = suite(
        "badref.toml",
        "[[case]]\ncomponent = \"linear\"\nreference = \"missing.safetensors\"\n",
    );
    assert_input_error(
        &replica(&["check", s(&path)]),
        &["badref.toml:1", "missing.safetensors", "cannot read"],
    );

    let path = suite("syntax.toml", "[[case]\ncomponent = \"linear\"\n");
    assert_input_error(&replica(&["check", s(&path)]), &["syntax.toml:1"]);

    let path = suite(
        "dtype.toml",
        "[tolerance.dtype]\nfloat17 = { rtol = 1 }\n[[case]]\ncomponent = \"linear\"\n",
    );
    assert_input_error(
        &replica(&["check", s(&path)]),
        &["dtype.toml:2", "unknown dtype `float17`"],
    );

    let config = write_text(dir.path(), "config.json", "{\"eps\": ");
    let path = suite(
        "config.toml",
        "[[case]]\ncomponent = \"layer_norm\"\nconfig = \"config.json\"\n",
    );
    assert_input_error(
        &replica(&["check", s(&path)]),
        &["config.toml:1", s(&config), "not valid JSON"],
    );
}

#[test]
fn unknown_components_suggest_the_closest() {
    let out = replica(&["check", "--model", "layer_nrom"]);
    assert_input_error(&out, &["unknown component `layer_nrom`", "did you mean `layer_norm`"]);
}

#[test]
fn weights_that_do_not_fit_list_the_first_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    write(
        &path,
        &[("weight", &tensor(&[1.0; 8], &[8])), ("scale", &tensor(&[1.0], &[1]))],
    );
    let out = replica(&["check", "--model", "layer_norm", "--weights", s(&path)]);
    assert_input_error(&out, &[s(&path), "do not fit `layer_norm`", "3 problems"]);
    let err = stderr(&out);
    assert!(err.contains("missing: `bias` (the model expects shape [16])"), "{err}");
    assert!(
        err.contains("shape mismatch: `weight`: the model expects [16], the weights have [8]"),
        "{err}"
    );
    assert!(err.contains("unused: `scale`"), "{err}");
}

#[test]
fn tolerances_on_the_command_line_must_be_non_negative_numbers() {
    let out = replica(&["check", "--rtol", "-1"]);
    assert_input_error(&out, &["--rtol", ">= 0"]);
    let out = replica(&["check", "--atol", "abc"]);
    assert_input_error(&out, &["--atol", "not a number"]);
    let out = replica(&["diff", "a", "b", "--atol", "-1e-3"]);
    assert_input_error(&out, &["--atol"]);
}

#[test]
fn usage_errors() {
    let suite = workspace().join("examples/suites/fixtures.toml");
    assert_input_error(
        &replica(&["check", s(&suite), "--model", "linear"]),
        &["cannot be used with"],
    );
    assert_input_error(&replica(&["check", "--reference", "x"]), &["--model"]);
    assert_input_error(&replica(&["frobnicate"]), &["frobnicate"]);
    assert_input_error(
        &replica(&["diff", "--rename", "nothing", "a", "b"]),
        &["PATTERN=REPLACEMENT"],
    );
    let linear = fixture("linear");
    assert_input_error(
        &replica(&["diff", s(&linear), s(&linear), "--rename", "(=x"]),
        &["--rename", "not a regular expression"],
    );
}

#[test]
fn a_gpu_needs_the_cuda_build() {
    if cfg!(feature = "cuda") {
        return;
    }
    let out = replica(&["check", "--model", "linear", "--device", "cuda:0"]);
    assert_input_error(&out, &["cuda:0", "--features cuda"]);
    assert_input_error(&replica(&["check", "--device", "tpu"]), &["tpu", "cpu or cuda:N"]);
}

#[test]
fn a_component_that_cannot_run_on_its_bundle_is_an_input_error() {
    // The linear case on a LayerNorm bundle (forced past the component check): the
    // LayerNorm config's fields are not the Linear's.
    let out = replica(&[
        "check",
        "--model",
        "linear",
        "--reference",
        "tests/fixtures/layer_norm.safetensors",
        "--any-component",
    ]);
    assert_input_error(
        &out,
        &[
            "case `linear` could not run",
            "layer_norm.safetensors",
            "config: missing field `in_features`",
        ],
    );
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l.starts_with("linear ") && l.ends_with("ERROR")),
        "{text}"
    );
}

#[test]
fn models_lists_the_model_presets_and_their_papers() {
    let out = replica(&["models", "gpt2"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0);
    let medium = text
        .lines()
        .find(|l| l.starts_with("gpt2-medium "))
        .expect("a gpt2-medium row");
    assert!(medium.contains("preset") && medium.contains("2005.14165"), "{medium}");
    let doc = json(&replica(&["models", "--format", "json"]));
    let presets: Vec<&str> = doc
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "preset")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in ["gpt2", "vit_base_patch16_224", "bert-base-uncased", "all-MiniLM-L6-v2"] {
        assert!(presets.contains(&name), "{name} missing from {presets:?}");
    }
    let papers = stdout(&replica(&["papers", "llama"]));
    assert!(papers.contains("2302.13971"), "{papers}");
}

#[test]
fn an_unknown_compute_setting_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(["papers"])
        .current_dir(workspace())
        .env("REPLICA_COMPUTE", "fast")
        .output()
        .expect("the replica binary runs");
    assert_input_error(&out, &["REPLICA_COMPUTE", "`fast`", "composition"]);
    let composed = Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(["papers"])
        .current_dir(workspace())
        .env("REPLICA_COMPUTE", "composition")
        .output()
        .expect("the replica binary runs");
    assert_eq!(code(&composed), 0, "{}", stderr(&composed));
}

#[test]
fn models_name_prints_what_the_component_reads_and_is_judged_on() {
    let text = stdout(&replica(&["models", "bert_model"]));
    assert!(text.contains("`bert_model` reads (from its fixture"), "{text}");
    for line in [
        "input/0  [3, 9] i64",
        "input/token_type_ids  [3, 9] i64",
        "input/attention_mask  [3, 9] i64",
        "output/last_hidden_state  [3, 9, 16] f32",
        "output/pooler_output  [3, 16] f32",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let text = stdout(&replica(&["models", "gemma_causal_lm"]));
    assert!(
        text.contains("input/0  [2, 7] i64") && text.contains("output/logits  [2, 7, 96] f32"),
        "{text}"
    );
    assert!(text.contains("21 parameter gradients"), "{text}");
    // A filter that is not one name lists, without the detail.
    assert!(!stdout(&replica(&["models", "bert"])).contains("reads (from its fixture"));
}
