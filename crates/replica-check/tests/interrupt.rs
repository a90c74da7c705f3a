//! A SIGTERM or SIGINT while a temporary file is pending removes it, and the
//! process still dies of the signal (run in a child process: the signal ends it).

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use replica_check::interrupt::RemoveOnSignal;

const CHILD: &str = "REPLICA_INTERRUPT_CHILD";

#[test]
fn child_registers_a_file_and_is_signalled() {
    let (Ok(path), Ok(signal)) = (std::env::var(CHILD), std::env::var("REPLICA_SIGNAL")) else {
        return; // only meaningful in the child
    };
    let path = std::path::PathBuf::from(path);
    std::fs::write(&path, b"half written").unwrap();
    let _pending = RemoveOnSignal::new(&path);
    // SAFETY: raising a signal in this (child) process.
    unsafe { libc::raise(signal.parse().unwrap()) };
    std::thread::sleep(std::time::Duration::from_secs(5));
    unreachable!("the signal should have ended the process");
}

#[test]
fn a_signal_removes_the_pending_file_and_still_ends_the_process() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".report.txt.1.0.tmp");
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_registers_a_file_and_is_signalled", "--test-threads=1"])
            .env(CHILD, &path)
            .env("REPLICA_SIGNAL", signal.to_string())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(signal), "{status:?}");
        assert!(!path.exists(), "{} was left behind", path.display());
    }
}

#[test]
fn a_finished_write_leaves_nothing_registered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kept.txt");
    std::fs::write(&path, b"done").unwrap();
    drop(RemoveOnSignal::new(&path));
    assert!(path.exists());
}
