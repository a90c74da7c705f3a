//! Inputs outside the catalogue's first round: files that are not regular files,
//! unbounded text files, duplicate header keys, environment values that are not
//! text, output targets that must never be replaced,.
//! Each ends with exit code 2 and one line naming the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixture(stem: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(format!("{stem}.safetensors"))
}

fn replica(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the replica binary runs");
    // Nothing here may hang: a FIFO with no writer once blocked in open(2).
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("replica {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[track_caller]
fn assert_one_line(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "not one line:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
    assert!(status.success());
}

#[test]
fn special_files_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    let linear = fixture("linear");
    let linear = linear.to_str().unwrap();
    let runs: [(&[&str], &str); 6] = [
        (&["inspect", fifo], "is a FIFO, expected a regular file"),
        (&["diff", linear, fifo], "is a FIFO"),
        (&["check", fifo], "is a FIFO"),
        (&["check", "--model", "linear", "--config", fifo], "is a FIFO"),
        (&["check", "--model", "linear", "--weights", fifo], "is a FIFO"),
        (&["check", "--model", "linear", "--config", "/dev/zero"], "is a device"),
    ];
    for (args, needle) in runs {
        assert_one_line(&replica(dir.path(), args), &[needle]);
    }
}

#[test]
fn a_header_naming_a_tensor_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 4]);
    let path = dir.path().join("twice.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let out = replica(dir.path(), &["inspect", path.to_str().unwrap()]);
    assert_one_line(&out, &["twice.safetensors", "the key `w` appears twice"]);
}

#[test]
fn a_read_limit_that_is_not_text_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(["inspect", fixture("linear").to_str().unwrap()])
        .env("REPLICA_MAX_TENSOR_BYTES", std::ffi::OsStr::from_bytes(b"1\xff"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_one_line(&out, &["REPLICA_MAX_TENSOR_BYTES", "not UTF-8"]);
}

#[test]
fn an_output_that_is_not_a_regular_file_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    mkfifo(&fifo);
    let target = dir.path().join("real.txt");
    std::fs::write(&target, "keep").unwrap();
    let link = dir.path().join("link.txt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = dir.path().join("dangling.txt");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let long = "x".repeat(250);
    let a = fixture("linear");
    let a = a.to_str().unwrap();
    let runs: [(&str, &str); 6] = [
        ("pipe", "is not a regular file"),
        ("/dev/null", "is not a regular file"),
        ("link.txt", "is a symbolic link"),
        ("dangling.txt", "is a symbolic link"),
        ("sub/", "ends with `/`"),
        (long.as_str(), "cannot create a file"),
    ];
    for (output, needle) in runs {
        let out = replica(dir.path(), &["diff", a, a, "-o", output, "--force"]);
        assert_one_line(&out, &["--output", needle]);
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}
