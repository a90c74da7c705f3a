//! The bad-input catalogue of docs/reliability.md, run against the binary: every
//! row ends with exit code 2 and one line on stderr that names the file (or the
//! argument) and the cause. No panic, no backtrace, no second line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
