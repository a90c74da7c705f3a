//! The bad-input catalogue of docs/reliability.md, run against the binary: every
//! row ends with exit code 2 and one line on stderr that names the file (or the
//! argument) and the cause. No panic, no backtrace, no second line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use replica_check::{open_safetensors, Bundle, BundleOutline, Namespace};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn linear_fixture() -> PathBuf {
    workspace().join("tests/fixtures/linear.safetensors")
}

/// A scratch directory under cargo's per-target temporary space, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Self {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("replica-catalogue")
            .join(format!("{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn replica(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(args)
        .current_dir(workspace())
        .env("RUST_BACKTRACE", "1")
        .env("NO_COLOR", "1")
        .env_remove("REPLICA_MAX_TENSOR_BYTES")
        .env_remove("REPLICA_MAX_TOTAL_BYTES")
        .output()
        .expect("the replica binary runs")
}

/// Exit 2 and exactly one line on stderr, `error: ...`, containing every needle.
#[track_caller]
fn assert_one_line(output: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "not one line:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for banned in ["panicked", "backtrace", "internal error"] {
        assert!(!err.contains(banned), "`{banned}` in stderr:\n{err}");
    }
    for needle in needles {
        assert!(lines[0].contains(needle), "`{needle}` not in: {}", lines[0]);
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Safetensors bytes: the length prefix, the header text, the data.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Runs a file through every subcommand that reads safetensors: `inspect`,
/// `diff` (as A and as B) and `check --reference`, expecting one line naming it.
#[track_caller]
fn refused_everywhere(path: &Path, needles: &[&str]) {
    let name = s(path);
    let good = linear_fixture();
    let mut expected = vec![name];
    expected.extend_from_slice(needles);
    assert_one_line(&replica(&["inspect", name]), &expected);
    assert_one_line(&replica(&["diff", name, s(&good)]), &expected);
    assert_one_line(&replica(&["diff", s(&good), name]), &expected);
    assert_one_line(
        &replica(&["check", "--model", "linear", "--reference", name]),
        &expected,
    );
    // The same file as a suite's reference.
    let suite = path.with_extension("toml");
    std::fs::write(
        &suite,
        format!("[[case]]\ncomponent = \"linear\"\nreference = {:?}\n", name),
    )
    .unwrap();
    assert_one_line(&replica(&["check", s(&suite)]), &expected);
}

#[test]
fn corrupt_and_truncated_files() {
    let dir = Scratch::new("corrupt");
    let good = std::fs::read(linear_fixture()).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.safetensors", Vec::new(), "file is 0 bytes, too short"),
        ("prefix.safetensors", vec![1, 2, 3], "file is 3 bytes"),
        (
            "not_json.safetensors",
            raw("{this is not json}", &[]),
            "header is not valid JSON",
        ),
        (
            "cut_header.safetensors",
            good[..good.len().min(40)].to_vec(),
            "larger than the",
        ),
        (
            "cut_data.safetensors",
            good[..good.len() - 4].to_vec(),
            "lie outside the data section",
        ),
        (
            "long_header.safetensors",
            raw("{}", &[]).tap_len(1 << 40),
            "header length 1099511627776",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = dir.write(name, &bytes);
        refused_everywhere(&path, &[needle]);
    }
}

trait TapLen {
    fn tap_len(self, header_len: u64) -> Vec<u8>;
}

impl TapLen for Vec<u8> {
    /// The same bytes with another header length in the prefix.
    fn tap_len(mut self, header_len: u64) -> Vec<u8> {
        self[..8].copy_from_slice(&header_len.to_le_bytes());
        self
    }
}

#[test]
fn wrong_types_and_impossible_claims() {
    let dir = Scratch::new("types");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dtype.safetensors",
            raw(r#"{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]),
            "tensor `w`: unknown dtype \"F33\"",
        ),
        (
            "shape.safetensors",
            raw(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,4]}}"#, &[0; 4]),
            "shape [3] of F32 needs 12 bytes but its data offsets span 4",
        ),
        (
            "huge.safetensors",
            raw(
                r#"{"w":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}}"#,
                &[0; 4],
            ),
            "tensor `w`: data offsets [0, 4398046511104] lie outside the data section of 4 bytes",
        ),
        (
            "negative.safetensors",
            raw(r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, &[0; 4]),
            "is not a list of non-negative integers",
        ),
        (
            "overlap.safetensors",
            raw(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
            "overlap those of `a`",
        ),
        (
            "metadata.safetensors",
            raw(r#"{"__metadata__":{"replica":7}}"#, &[]),
            "`__metadata__` must map strings to strings",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = dir.write(name, &bytes);
        refused_everywhere(&path, &[needle]);
    }
}

#[test]
fn a_dtype_candle_cannot_hold() {
    let dir = Scratch::new("i8");
    let path = dir.write(
        "i8.safetensors",
        &raw(r#"{"w":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}}"#, &[0xff, 1]),
    );
    // `diff` reads only the keys both files hold: the other file has a `w` too.
    let other = dir.write(
        "f32.safetensors",
        &raw(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &[0; 8]),
    );
    let (name, other) = (s(&path), s(&other));
    let needles = [name, "tensor `w`: dtype i8 cannot be loaded: candle has no such dtype"];
    assert_one_line(&replica(&["inspect", name]), &needles);
    assert_one_line(&replica(&["diff", name, other]), &needles);
    assert_one_line(&replica(&["diff", other, name]), &needles);
}

#[test]
fn a_tensor_over_the_configured_limit() {
    let fixture = linear_fixture();
    let out = replica(&["--max-tensor-bytes", "8", "inspect", s(&fixture)]);
    assert_one_line(&out, &[s(&fixture), "over the limit of 8 bytes per tensor"]);
    let out = replica(&["--max-total-bytes", "16", "diff", s(&fixture), s(&fixture)]);
    assert_one_line(&out, &[s(&fixture), "over the limit of 16 bytes (max_total_bytes)"]);
    let out = Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(["inspect", s(&fixture)])
        .env("REPLICA_MAX_TENSOR_BYTES", "8")
        .output()
        .unwrap();
    assert_one_line(&out, &["over the limit of 8 bytes per tensor"]);
    let out = Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(["inspect", s(&fixture)])
        .env("REPLICA_MAX_TENSOR_BYTES", "lots")
        .output()
        .unwrap();
    assert_one_line(&out, &["REPLICA_MAX_TENSOR_BYTES", "`lots` is not a size"]);
    // A usage error: the cause on the first line, then clap's usage hint.
    let out = replica(&["--max-tensor-bytes", "lots", "inspect", s(&fixture)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains("--max-tensor-bytes") && first.contains("not a size"),
        "{err}"
    );
}

#[test]
fn missing_files_directories_and_unicode_paths() {
    let dir = Scratch::new("paths");
    let missing = dir.0.join("nowhere.safetensors");
    refused_everywhere(&missing, &["cannot read", "No such file"]);
    let folder = dir.0.join("folder.safetensors");
    std::fs::create_dir_all(&folder).unwrap();
    refused_everywhere(&folder, &["is a directory, expected a file"]);
    // A unicode directory and file name, printed as given.
    let unicode = dir.write("ünïcode ✓/x.safetensors", b"");
    refused_everywhere(&unicode, &["ünïcode ✓/x.safetensors", "too short"]);
}

#[cfg(unix)]
#[test]
fn non_utf8_path_names_are_shown_lossily() {
    use std::os::unix::ffi::OsStrExt;
    let dir = Scratch::new("bytes");
    let path = dir.0.join(std::ffi::OsStr::from_bytes(b"bad-\xff.safetensors"));
    std::fs::write(&path, b"").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_replica"))
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    assert_one_line(&out, &["bad-\u{fffd}.safetensors", "too short"]);
}

#[test]
fn report_files_are_never_clobbered_or_half_written() {
    let dir = Scratch::new("output");
    let fixture = linear_fixture();
    let existing = dir.write("report.json", b"keep me");
    for args in [
        vec!["check", "--model", "linear", "--output", s(&existing)],
        vec!["diff", s(&fixture), s(&fixture), "--output", s(&existing)],
    ] {
        assert_one_line(
            &replica(&args),
            &["--output", s(&existing), "already exists (pass --force to replace it)"],
        );
        assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    }
    // --force replaces it, whole, without colour codes.
    let out = replica(&[
        "--format",
        "json",
        "diff",
        s(&fixture),
        s(&fixture),
        "--output",
        s(&existing),
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&existing).unwrap()).unwrap();
    assert_eq!(report["passed"], true);
    let fresh = dir.0.join("check.md");
    let out = replica(&["--format", "markdown", "check", "--model", "linear", "-o", s(&fresh)]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&fresh).unwrap();
    assert!(text.contains("linear") && !text.contains('\u{1b}'), "{text}");
    // An --output that is a directory, or in a directory that does not exist.
    assert_one_line(
        &replica(&["diff", s(&fixture), s(&fixture), "-o", s(&dir.0)]),
        &["--output", "is a directory"],
    );
    let nowhere = dir.0.join("no/such/dir/r.json");
    assert_one_line(
        &replica(&["diff", s(&fixture), s(&fixture), "-o", s(&nowhere)]),
        &["--output", "does not exist"],
    );
    // No temporary file is left behind by any of it.
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["check.md", "report.json"]);
}

#[cfg(unix)]
#[test]
fn a_read_only_output_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("readonly");
    let locked = dir.0.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    // root ignores directory permissions: then there is nothing to refuse.
    let writable = std::fs::write(locked.join("probe"), b"").is_ok();
    if !writable {
        let fixture = linear_fixture();
        let target = locked.join("r.json");
        for args in [
            vec!["diff", s(&fixture), s(&fixture), "-o", s(&target)],
            vec!["check", "--model", "linear", "-o", s(&target)],
        ] {
            assert_one_line(&replica(&args), &["--output", s(&target), "cannot create a file in"]);
        }
        assert!(!target.exists());
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn bad_suite_files() {
    let dir = Scratch::new("suite");
    let cases: Vec<(&str, &str, &str)> = vec![
        ("syntax.toml", "[[case]\ncomponent = \"linear\"\n", "syntax.toml"),
        ("unknown.toml", "[[case]]\ncomponent = \"lineer\"\n", "linear"),
        ("types.toml", "[[case]]\ncomponent = 7\n", "component"),
        ("empty.toml", "", "empty.toml"),
    ];
    for (name, text, needle) in cases {
        let path = dir.write(name, text.as_bytes());
        assert_one_line(&replica(&["check", s(&path)]), &[name, needle]);
    }
    let missing = dir.0.join("missing.toml");
    assert_one_line(&replica(&["check", s(&missing)]), &["missing.toml"]);
}

#[test]
fn bad_command_lines() {
    let fixture = linear_fixture();
    for (args, needle) in [
        (vec!["inspect"], "<FILE>"),
        (vec!["diff", s(&fixture)], "<B.safetensors>"),
        (vec!["check", "--model", "nope"], "nope"),
        (vec!["check", "--rtol", "abc", "--model", "linear"], "--rtol"),
        (vec!["diff", s(&fixture), s(&fixture), "--rename", "(="], "--rename"),
        (vec!["diff", s(&fixture), s(&fixture), "--force"], "--output"),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let out = replica(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

// ------------------------------------------------ round 3: configs, ids, counts

/// `replica args` with extra environment variables.
fn replica_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_replica"));
    command.args(args).current_dir(workspace()).env("NO_COLOR", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the replica binary runs")
}

#[test]
fn a_config_over_the_memory_budget_names_the_field() {
    let dir = Scratch::new("budget");
    let gpt2 = workspace().join("tests/fixtures/models/gpt2.safetensors");
    let bundle = open_safetensors(&gpt2).unwrap();
    let mut config = BundleOutline::of(&bundle).unwrap().metadata.config;
    config["n_embd"] = serde_json::json!(1_000_000_000u64);
    let path = dir.write("big.json", config.to_string().as_bytes());
    let out = replica(&["check", "--model", "gpt2_lm_head_model", "--config", s(&path)]);
    assert_one_line(
        &out,
        &[
            "case `gpt2_lm_head_model` could not run",
            "big.json: config field `n_embd` = 1000000000 needs ",
            "memory budget (--max-memory / REPLICA_MAX_MEMORY)",
        ],
    );
    // The budget is a setting: a small one refuses the committed linear case.
    let out = replica(&["--max-memory", "1K", "check", "--model", "linear"]);
    assert_one_line(
        &out,
        &["linear.safetensors: config field `", "over the 1.0 KiB memory budget"],
    );
    let out = replica_env(
        &["check", "--model", "linear"],
        &[("REPLICA_MAX_MEMORY", "1K".as_ref())],
    );
    assert_one_line(&out, &["over the 1.0 KiB memory budget"]);
    let out = replica_env(
        &["check", "--model", "linear"],
        &[("REPLICA_MAX_MEMORY", "lots".as_ref())],
    );
    assert_one_line(&out, &["REPLICA_MAX_MEMORY", "`lots` is not a size"]);
    use std::os::unix::ffi::OsStrExt;
    let not_text = std::ffi::OsStr::from_bytes(b"1\xff");
    let out = replica_env(&["check", "--model", "linear"], &[("REPLICA_MAX_MEMORY", not_text)]);
    assert_one_line(&out, &["REPLICA_MAX_MEMORY", "is not UTF-8 text"]);
    assert!(replica(&["--max-memory", "1G", "check", "--model", "linear"])
        .status
        .success());
}

#[test]
fn config_values_a_component_cannot_take_are_refused_by_name() {
    let dir = Scratch::new("values");
    let config = |fixture: &str, field: &str, value: serde_json::Value| {
        let bundle = open_safetensors(workspace().join("tests/fixtures").join(fixture)).unwrap();
        let mut config = BundleOutline::of(&bundle).unwrap().metadata.config;
        config[field] = value;
        let path = dir.write(&format!("{field}.json"), config.to_string().as_bytes());
        path.to_str().unwrap().to_string()
    };
    for (model, fixture, field, value, needle) in [
        (
            "multihead_attention",
            "multihead_attention.safetensors",
            "num_heads",
            serde_json::json!(0),
            "`num_heads` must be positive, got 0",
        ),
        (
            "attention_gqa",
            "blocks/attention_gqa.safetensors",
            "num_attention_heads",
            serde_json::json!(3),
            "3 query heads cannot share 2 key/value heads",
        ),
        (
            "layer_norm",
            "layer_norm.safetensors",
            "eps",
            serde_json::json!(-1.0),
            "`eps` must be a finite number >= 0, got -1",
        ),
        (
            "dropout_eval",
            "blocks/dropout.safetensors",
            "p",
            serde_json::json!(1.5),
            "`p` must be in [0, 1], got 1.5",
        ),
        (
            "llama_causal_lm",
            "models/llama.safetensors",
            "num_key_value_heads",
            serde_json::json!(3),
            "num_attention_heads 4 is not a multiple of num_key_value_heads 3",
        ),
    ] {
        let path = config(fixture, field, value);
        let out = replica(&["check", "--model", model, "--config", &path]);
        assert_one_line(
            &out,
            &[
                &format!("case `{model}` could not run"),
                &format!("{field}.json: "),
                needle,
            ],
        );
    }
    // Python writes NaN into JSON; JSON has none, so the file is not JSON.
    let path = dir.write("nan.json", br#"{"normalized_shape": [16], "eps": NaN}"#);
    let out = replica(&["check", "--model", "layer_norm", "--config", s(&path)]);
    assert_one_line(&out, &["nan.json: not valid JSON at line 1 column"]);
    // An inline TOML config can hold NaN: refused with the suite line and the field.
    let suite = dir.write(
        "nan.toml",
        b"[[case]]\ncomponent = \"layer_norm\"\nconfig = { normalized_shape = [16], eps = nan }\n",
    );
    let out = replica(&["check", s(&suite)]);
    assert_one_line(&out, &["nan.toml:3: `config`: field `eps` is NaN"]);
}

#[test]
fn a_case_refused_for_its_config_fails_alone() {
    let dir = Scratch::new("alone");
    dir.write("garbage.safetensors", b"garbage");
    dir.write("bad.json", b"{\"eps\": ");
    let suite = dir.write(
        "suite.toml",
        br#"[[case]]
component = "linear"

[[case]]
name = "no heads"
component = "multihead_attention"
config = { embed_dim = 16, num_heads = 0, batch_first = true, query_key_value = "same input", need_weights = true, average_attn_weights = false }

[[case]]
name = "a terabyte model"
component = "gpt2_lm_head_model"
config = { vocab_size = 96, n_positions = 32, n_embd = 1000000000, n_layer = 2, n_head = 4 }

[[case]]
component = "layer_norm"

[[case]]
name = "unreadable reference"
component = "linear"
reference = "garbage.safetensors"

[[case]]
name = "bad json"
component = "layer_norm"
config = "bad.json"
"#,
    );
    let report = dir.0.join("report.json");
    let out = replica(&["--format", "json", "check", s(&suite), "-o", s(&report)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "one line per refused case:\n{err}");
    assert!(
        lines[0].starts_with("error: case `no heads` could not run")
            && lines[0].contains("`num_heads` must be positive, got 0"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("error: case `a terabyte model` could not run")
            && lines[1].contains("config field `n_embd` = 1000000000 needs"),
        "{err}"
    );
    // Unreadable inputs fail their case alone too.
    assert!(
        lines[2].starts_with("error: case `unreadable reference` could not run")
            && lines[2].contains("garbage.safetensors: file is 7 bytes, too short"),
        "{err}"
    );
    assert!(
        lines[3].starts_with("error: case `bad json` could not run") && lines[3].contains("bad.json"),
        "{err}"
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let verdicts: Vec<&str> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| case["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["ok", "error", "error", "ok", "error", "error"]);
    assert_eq!(report["counts"]["passed"], 2);
}

#[test]
fn prompt_ids_outside_u32_are_refused_not_truncated() {
    use candle_core::{Device, Tensor};
    let dir = Scratch::new("ids");
    let fixture = workspace().join("tests/fixtures/models/gpt2_generate.safetensors");
    for (name, id) in [("big.safetensors", (1i64 << 32) + 5), ("negative.safetensors", -1)] {
        let mut bundle = Bundle::load(&fixture, &Device::Cpu).unwrap();
        let prompt = Tensor::new(&[[5i64, 7, id, 9, 11]], &Device::Cpu).unwrap();
        bundle.insert(Namespace::Input, "0", prompt);
        let path = dir.0.join(name);
        bundle.save(&path, true).unwrap();
        let out = replica(&["check", "--model", "gpt2_greedy_generate", "--reference", s(&path)]);
        assert_one_line(
            &out,
            &[
                name,
                &format!("input/0: token id {id} at position 2 is not in 0..=4294967295"),
            ],
        );
    }
}

#[test]
fn a_compute_setting_that_is_not_text_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let value = std::ffi::OsStr::from_bytes(b"kern\xffels");
    let out = replica_env(&["check", "--model", "linear"], &[("REPLICA_COMPUTE", value)]);
    assert_one_line(
        &out,
        &["REPLICA_COMPUTE", "expected `kernels` or `composition`", "\\xFF"],
    );
}

#[test]
fn a_header_listing_more_tensors_than_the_limit() {
    let dir = Scratch::new("count");
    // 100,001 zero-size tensors, one over the default limit (a 6 MB header; 1.7 million
    // of them fill the 100 MB a header may have).
    let entries: Vec<String> = (0..100_001)
        .map(|i| format!("\"t{i:06}\":{{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}"))
        .collect();
    let path = dir.write("many.safetensors", &raw(&format!("{{{}}}", entries.join(",")), &[]));
    refused_everywhere(
        &path,
        &["the header lists more than 100000 tensors, the limit (max_tensors)"],
    );
    // The limit is a setting.
    let fixture = linear_fixture();
    let out = replica(&["--max-tensors", "2", "inspect", s(&fixture)]);
    assert_one_line(&out, &["the header lists more than 2 tensors"]);
    let out = replica_env(&["inspect", s(&fixture)], &[("REPLICA_MAX_TENSORS", "2".as_ref())]);
    assert_one_line(&out, &["the header lists more than 2 tensors"]);
    let out = replica_env(&["inspect", s(&fixture)], &[("REPLICA_MAX_TENSORS", "many".as_ref())]);
    assert_one_line(&out, &["REPLICA_MAX_TENSORS", "`many` is not a whole number"]);
}
