//! A config value a component does not honour, and a bundle of another component,
//! are refused (exit code 2, one line naming the field or both components), never
//! passed: each of these once exited 0.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use replica_check::{open_safetensors, BundleOutline};
use serde_json::{json, Value};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(stem: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(format!("{stem}.safetensors"))
}

fn replica(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(args)
        .current_dir(workspace())
        .env("NO_COLOR", "1")
        .output()
        .expect("the replica binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit code 2 and a first stderr line containing every needle.
#[track_caller]
fn assert_refused(output: &Output, needles: &[&str]) {
    let err = text(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "stderr:\n{err}\nstdout:\n{}",
        text(&output.stdout)
    );
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{err}");
    for needle in needles {
        assert!(first.contains(needle), "`{needle}` not in the first line: {first}");
    }
}

#[track_caller]
fn assert_passes(output: &Output) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr:\n{}\nstdout:\n{}",
        text(&output.stderr),
        text(&output.stdout)
    );
}

/// The config a fixture was made with.
fn fixture_config(stem: &str) -> Value {
    let file = open_safetensors(fixture(stem)).unwrap();
    BundleOutline::of(&file).unwrap().metadata.config
}

fn with(config: &Value, field: &str, value: Value) -> Value {
    let mut config = config.clone();
    config.as_object_mut().unwrap().insert(field.into(), value);
    config
}

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path
}

/// Each case: the component, its fixture, the changed field and value, and what the
/// one-line error must say besides the field's name and the config file.
const IGNORED_BEFORE: &[(&str, &str, &str, &str, &str)] = &[
    (
        "sdpa_causal",
        "blocks/sdpa_causal",
        "is_causal",
        "false",
        "expected true, got false",
    ),
    ("softmax", "softmax", "dim", "0", "got 0"),
    (
        "attention_softcap",
        "blocks/attention_softcap",
        "layer_types",
        "[\"chunked_attention\"]",
        "got \"chunked_attention\"",
    ),
    ("layer_norm", "layer_norm", "eps", "\"x\"", "invalid type: string \"x\""),
    (
        "multihead_attention",
        "multihead_attention",
        "embed_dim",
        "\"x\"",
        "invalid type: string \"x\"",
    ),
    ("linear", "linear", "bias", "\"yes\"", "invalid type: string \"yes\""),
    (
        "dropout_eval",
        "blocks/dropout",
        "training",
        "true",
        "expected false, got true",
    ),
    (
        "class_token",
        "blocks/class_token",
        "pos_embed",
        "\"learn\"",
        "got \"learn\"",
    ),
    ("gelu_erf", "gelu_erf", "approximate", "\"sigmoid\"", "got \"sigmoid\""),
    // A field no struct reads, and no bookkeeping: its value is shown.
    ("softmax", "softmax", "log", "true", "(= true)"),
    (
        "attention_gqa",
        "blocks/attention_gqa",
        "rope_scaling_factor",
        "2.0",
        "(= 2.0)",
    ),
];

#[test]
fn config_values_a_component_does_not_honour_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for &(component, stem, field, value, says) in IGNORED_BEFORE {
        let original = fixture_config(stem);
        // The fixture's own config passes through --config: the refusal below is the field's.
        let same = write_json(dir.path(), "same.json", &original);
        assert_passes(&replica(&[
            "check",
            "--model",
            component,
            "--config",
            same.to_str().unwrap(),
        ]));

        let changed = with(&original, field, serde_json::from_str(value).unwrap());
        let path = write_json(dir.path(), &format!("{component}-{field}.json"), &changed);
        let output = replica(&["check", "--model", component, "--config", path.to_str().unwrap()]);
        let named = format!("config field `{field}`");
        assert_refused(&output, &[&named, path.to_str().unwrap(), says]);
    }
}

/// Fields a component honours change its result: the check fails (exit 1), not passes.
#[test]
fn honoured_config_values_change_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let gelu_tanh = write_json(dir.path(), "tanh.json", &json!({"approximate": "tanh"}));
    let output = replica(&["check", "--model", "gelu_erf", "--config", gelu_tanh.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let eps = with(&fixture_config("blocks/rms_norm"), "rms_norm_eps", json!(0.5));
    let eps = write_json(dir.path(), "eps.json", &eps);
    let output = replica(&["check", "--model", "rms_norm_llama", "--config", eps.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
}

#[test]
fn unused_config_fields_are_listed() {
    let output = replica(&["check", "--model", "attention_gqa"]);
    assert_passes(&output);
    let out = text(&output.stdout);
    let line = out
        .lines()
        .find(|line| line.starts_with("Config fields unused by `attention_gqa`"))
        .unwrap_or_else(|| panic!("no list of unused fields:\n{out}"));
    for field in ["_name_or_path", "use_cache", "vocab_size", "pad_token_id"] {
        assert!(line.contains(field), "{line}");
    }
    // Read fields are not listed.
    assert!(
        !line.contains("num_key_value_heads") && !line.contains("rope_parameters"),
        "{line}"
    );

    let output = replica(&["--format", "json", "check", "--model", "bert_model"]);
    assert_passes(&output);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let unused = &report["cases"][0]["unused_config"];
    assert!(unused.as_array().unwrap().contains(&json!("id2label")), "{unused}");
    assert!(!unused.as_array().unwrap().contains(&json!("pad_token_id")), "{unused}");
}

#[test]
fn a_bundle_of_another_component_is_refused_unless_asked() {
    let gelu = fixture("blocks/act_gelu");
    let gelu = gelu.to_str().unwrap();
    let output = replica(&["check", "--model", "activation_relu", "--reference", gelu]);
    assert_refused(
        &output,
        &[
            "act_gelu.safetensors",
            "`torch.nn.GELU`",
            "`torch.nn.ReLU`",
            "`activation_relu`",
            "--any-component",
        ],
    );
    let output = replica(&[
        "check",
        "--model",
        "activation_relu",
        "--reference",
        gelu,
        "--any-component",
    ]);
    assert_passes(&output);
    assert!(text(&output.stdout).contains("activation_relu"));
    // The same component on another bundle of its kind runs.
    let tanh = fixture("blocks/act_gelu_tanh");
    assert_passes(&replica(&[
        "check",
        "--model",
        "activation_gelu",
        "--reference",
        tanh.to_str().unwrap(),
    ]));
}

#[test]
fn a_suite_case_on_another_component_needs_any_component() {
    let dir = tempfile::tempdir().unwrap();
    let gelu = fixture("blocks/act_gelu");
    let case = format!(
        "[[case]]\ncomponent = \"activation_relu\"\nreference = {:?}\n",
        gelu.to_str().unwrap()
    );
    let suite = dir.path().join("suite.toml");
    std::fs::write(&suite, &case).unwrap();
    let output = replica(&["check", suite.to_str().unwrap()]);
    assert_refused(&output, &["suite.toml:1", "`torch.nn.GELU`", "`any_component = true`"]);
    std::fs::write(&suite, format!("{case}any_component = true\n")).unwrap();
    assert_passes(&replica(&["check", suite.to_str().unwrap()]));
}

#[test]
fn an_inline_suite_config_is_read_strictly_and_named_by_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite.toml");
    std::fs::write(
        &suite,
        "[[case]]\ncomponent = \"softmax\"\nconfig = { dim = -1, temperature = 2.0 }\n",
    )
    .unwrap();
    let output = replica(&["check", suite.to_str().unwrap()]);
    assert_refused(&output, &["suite.toml:1", "config field `temperature` (= 2.0)"]);
}

/// The Qwen cases refuse, with exit code 2 and one line naming the field, what the
/// port does not implement (an unknown layer type), and honour the window: the
/// fixture's sliding layer sees 3 of its 7 tokens, so another window fails the case.
#[test]
fn qwen_configs_the_port_does_not_implement_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let original = fixture_config("models/qwen2");
    let types = with(&original, "layer_types", json!(["full_attention", "chunked_attention"]));
    let path = write_json(dir.path(), "types.json", &types);
    let output = replica(&[
        "check",
        "--model",
        "qwen2_causal_lm",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert_refused(
        &output,
        &[path.to_str().unwrap(), "layer_types[1] is `chunked_attention`"],
    );

    for window in [4, 7] {
        let other = with(&original, "sliding_window", json!(window));
        let path = write_json(dir.path(), &format!("window{window}.json"), &other);
        let output = replica(&[
            "check",
            "--model",
            "qwen2_causal_lm",
            "--config",
            path.to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    }

    let mut qwen3 = fixture_config("models/qwen3");
    // A yarn RoPE without its factor (a rope type HF does not have is refused too).
    qwen3["rope_parameters"] = json!({"rope_type": "yarn", "rope_theta": 1000000.0});
    let path = write_json(dir.path(), "scaled.json", &qwen3);
    let output = replica(&[
        "check",
        "--model",
        "qwen3_causal_lm",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert_refused(
        &output,
        &[
            path.to_str().unwrap(),
            "rope_parameters.factor is required by rope_type `yarn`, got none",
        ],
    );
}
