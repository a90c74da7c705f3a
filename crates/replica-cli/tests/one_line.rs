//! Text from files reaches the terminal on one line and inert: a newline in a
//! tensor key cannot forge a second `error:` line, a terminal escape sequence is
//! written as `\u{1b}`, and a cell of any width is printed, not a panic.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use replica_check::{write_safetensors, BundleMetadata};

fn replica(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(args)
        .current_dir(dir)
        .env("CLICOLOR_FORCE", "1") // colours on: only our own escapes may appear
        .output()
        .expect("the replica binary runs")
}

fn file_with_key(dir: &Path, name: &str, key: &str, len: usize) -> String {
    let path = dir.join(name);
    let t = Tensor::zeros(len, candle_core::DType::F32, &Device::Cpu).unwrap();
    write_safetensors(&path, [(key, &t)], HashMap::new(), true).unwrap();
    path.to_str().unwrap().to_string()
}

const HOSTILE: &str = "w\nerror: forged\u{1b}[2J\u{7}";

#[test]
fn a_hostile_key_is_escaped_in_tables() {
    let dir = tempfile::tempdir().unwrap();
    let a = file_with_key(dir.path(), "a.safetensors", HOSTILE, 2);
    let b = file_with_key(dir.path(), "b.safetensors", HOSTILE, 3);
    for args in [vec!["inspect", a.as_str()], vec!["diff", a.as_str(), b.as_str()]] {
        let out = replica(dir.path(), &args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(matches!(out.status.code(), Some(0..=2)), "{args:?}: {text}");
        assert!(text.contains("w\\nerror: forged\\u{1b}[2J\\u{7}"), "{args:?}: {text}");
        assert!(!text.lines().any(|l| l.starts_with("error: forged")), "{text}");
        assert!(!text.contains('\u{7}') && !text.contains("\u{1b}[2J"), "{args:?}");
    }
}

#[test]
fn a_hostile_key_in_an_error_stays_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    // A bundle key outside the namespaces is refused, naming the key.
    let path = dir.path().join("bad.safetensors");
    let t = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    let metadata = BundleMetadata::new("torch.nn.Linear", ("torch", "0"), "float32");
    let metadata = HashMap::from([("replica".to_string(), serde_json::to_string(&metadata).unwrap())]);
    write_safetensors(&path, [(HOSTILE, &t)], metadata, true).unwrap();
    let path = path.to_str().unwrap();
    let out = replica(dir.path(), &["check", "--model", "linear", "--reference", path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("w\\nerror: forged\\u{1b}[2J"), "{err}");
    assert!(!err.contains("\u{1b}[2J"), "{err}");
}

#[test]
fn a_cell_wider_than_any_format_width_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let key = "k".repeat(70_000);
    let path = file_with_key(dir.path(), "wide.safetensors", &key, 1);
    let runs = [
        vec!["inspect", path.as_str()],
        vec!["diff", path.as_str(), path.as_str()],
        vec!["diff", path.as_str(), path.as_str(), "-o", "report.txt"],
    ];
    for args in runs {
        let out = replica(dir.path(), &args);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let report = std::fs::read_to_string(dir.path().join("report.txt")).unwrap();
    assert!(report.contains(&key));
}
