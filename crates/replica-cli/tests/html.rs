//! `replica check --format html`: the page holds the case table, a plot of every
//! trace, escapes what it was given, and renders in headless Chromium when one is
//! installed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn replica(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("the replica binary runs")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs `replica check ARGS --format html -o FILE`, expects exit code `expected`, returns the page.
fn html(dir: &Path, args: &[&str], expected: i32) -> String {
    let path = dir.join("report.html");
    let _ = std::fs::remove_file(&path);
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "html", "-o", s(&path)]);
    let out = replica(&all);
    assert_eq!(code(&out), expected, "{}", stderr(&out));
    std::fs::read_to_string(&path).unwrap()
}

/// Nothing the page would fetch or run.
#[track_caller]
fn assert_self_contained(page: &str) {
    assert!(page.starts_with("<!DOCTYPE html>"), "{}", &page[..100.min(page.len())]);
    assert!(page.trim_end().ends_with("</html>"));
    for banned in ["<script", "<link", " src=", "url(", "@import", "http://", "https://"] {
        assert!(!page.contains(banned), "`{banned}` in the page");
    }
}

/// A planted bug: the fixture's GPT-2 config with the erf GELU where it captured the tanh one.
fn erf_gelu_config(dir: &Path) -> PathBuf {
    let out = replica(&["inspect", "tests/fixtures/models/gpt2.safetensors", "--format", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let metadata: Value = serde_json::from_str(doc["metadata"]["replica"].as_str().unwrap()).unwrap();
    let mut config = metadata["config"].clone();
    assert_eq!(config["activation_function"], "gelu_new");
    config["activation_function"] = "gelu".into();
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// The GPT-2 fixture's trace as JSON: (module paths, how many have a multiple, how many a max abs diff).
fn gpt2_trace(extra: &[&str]) -> (Vec<String>, usize, usize) {
    let mut args = vec!["check", "--model", "gpt2_lm_head_model", "--trace", "--format", "json"];
    args.extend_from_slice(extra);
    let doc: Value = serde_json::from_slice(&replica(&args).stdout).unwrap();
    let rows = doc["cases"][0]["trace"]["rows"].as_array().unwrap().clone();
    let paths = rows.iter().map(|r| r["path"].as_str().unwrap().to_string()).collect();
    let multiples = rows
        .iter()
        .filter(|r| r["comparison"]["noise"]["multiple"].is_number())
        .count();
    let abs = rows
        .iter()
        .filter(|r| r["comparison"]["max_abs_diff"]["value"].is_number())
        .count();
    (paths, multiples, abs)
}

#[test]
fn the_builtin_suite_as_a_page_holds_the_case_table() {
    let dir = tempfile::tempdir().unwrap();
    let page = html(dir.path(), &[], 0);
    assert_self_contained(&page);
    for header in [
        "component",
        "paper",
        "tensors",
        "max abs diff",
        "max rel diff",
        "min cosine",
        "max noise x",
        "verdict",
    ] {
        assert!(page.contains(&format!("<th>{header}</th>")), "{header}");
    }
    for case in ["linear", "layer_norm", "gpt2_lm_head_model"] {
        assert!(page.contains(&format!("<tr><td>{case}</td>")), "{case}");
    }
    assert!(page.contains("Verdicts: a tensor fails when"));
    assert!(page.contains("cases pass.</p>"));
    assert!(!page.contains("<svg"), "no trace, no plot");

    // Without --output the page goes to stdout.
    let out = replica(&["check", "--model", "linear", "--format", "html"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let page = String::from_utf8(out.stdout).unwrap();
    assert_self_contained(&page);
    assert!(page.contains("<tr><td>linear</td>"));
}

#[test]
fn a_trace_is_plotted_one_point_per_module() {
    let dir = tempfile::tempdir().unwrap();
    let page = html(dir.path(), &["--model", "gpt2_lm_head_model", "--trace"], 0);
    assert_self_contained(&page);
    let (paths, multiples, abs) = gpt2_trace(&[]);
    assert_eq!(paths.len(), 32);
    assert_eq!(page.matches("<svg").count(), 1);
    assert_eq!(page.matches("<circle class=\"pt m").count(), multiples);
    assert_eq!(page.matches("<circle class=\"pt a").count(), abs);
    assert_eq!(page.matches("<rect class=\"hit\"").count(), paths.len());
    for path in &paths {
        assert!(page.contains(&format!(">{path}</text>")), "no axis label for {path}");
    }
    assert!(page.contains("<line class=\"limit\""));
    assert!(page.contains(">K = 10</text>"));
    // The embeddings match exactly: zeros on a log scale are drawn at a floor, and said so.
    assert!(page.contains("class=\"pt m clamped\""));
    assert!(page.contains("Log scale: a noise multiple of 0 (2 modules) is drawn at the floor 0.01"));
    assert!(!page.contains("class=\"diverge\""), "nothing diverges");
    assert!(page.contains("No module diverges."));
}

#[test]
fn the_first_divergent_module_is_marked() {
    let dir = tempfile::tempdir().unwrap();
    let config = erf_gelu_config(dir.path());
    let args = ["--model", "gpt2_lm_head_model", "--config", s(&config), "--trace"];
    let page = html(dir.path(), &args, 1);
    assert_self_contained(&page);
    assert!(page.contains("<line class=\"diverge\""));
    assert!(page.contains("first divergence: #12 transformer.h.0.mlp.act</text>"));
    assert!(page.contains("<text class=\"first\""));
    assert!(page.contains("<circle class=\"pt m fail\""));
    assert!(page.contains("FAIL ("));
    assert!(page.contains("Why each failing tensor fails"));

    // The K line follows --noise-limit.
    let mut with_limit = args.to_vec();
    with_limit.extend_from_slice(&["--noise-limit", "5000"]);
    let page = html(dir.path(), &with_limit, 0);
    assert!(page.contains(">K = 5000</text>"));
    assert!(!page.contains("class=\"diverge\""));
}

#[test]
fn everything_from_the_inputs_is_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("a&b.safetensors");
    std::fs::copy(workspace().join("tests/fixtures/two_layer_mlp.safetensors"), &reference).unwrap();
    let suite = dir.path().join("suite.toml");
    std::fs::write(
        &suite,
        "name = \"<b>bold</b> suite\"\n[[case]]\nname = \"<script>alert('x')</script>\"\ncomponent = \"two_layer_mlp\"\n\
         reference = \"a&b.safetensors\"\n",
    )
    .unwrap();
    let page = html(dir.path(), &[s(&suite), "--trace"], 0);
    assert_self_contained(&page);
    assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(page.contains("&lt;b&gt;bold&lt;/b&gt; suite"));
    assert!(page.contains("a&amp;b.safetensors"));
    assert!(!page.contains("<b>"));
}

#[test]
fn other_commands_refuse_html() {
    let fixture = "tests/fixtures/linear.safetensors";
    for args in [
        vec!["diff", fixture, fixture],
        vec!["inspect", fixture],
        vec!["models"],
        vec!["papers"],
    ] {
        let mut all = args.clone();
        all.extend_from_slice(&["--format", "html"]);
        let out = replica(&all);
        assert_eq!(code(&out), 2, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: --format html is only for `replica check`"),
            "{err}"
        );
    }
}

// ---- headless Chromium ---------------------------------------------------------

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Runs headless Chromium on `page` with `args`, stdout to `stdout`, killed after two minutes.
fn run_chromium(chromium: &Path, profile: &Path, page: &Path, args: &[&str], stdout: &Path) {
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(File::create(stdout).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?}: {status}");
            return;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("chromium {args:?} took over two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_page_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        println!("skipped: no `chromium` on PATH (apt-get install chromium) to render the HTML report");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = erf_gelu_config(dir.path());
    let args = ["--model", "gpt2_lm_head_model", "--config", s(&config), "--trace"];
    html(dir.path(), &args, 1);
    let page = dir.path().join("report.html");
    let (_, multiples, abs) = gpt2_trace(&["--config", s(&config)]);
    let profile = dir.path().join("profile");

    // The DOM Chromium builds keeps the plot: every point, the K line, the divergence.
    let dom_path = dir.path().join("dom.html");
    run_chromium(&chromium, &profile, &page, &["--dump-dom"], &dom_path);
    let dom = std::fs::read_to_string(&dom_path).unwrap();
    assert_eq!(dom.matches("<svg").count(), 1, "{dom}");
    assert_eq!(dom.matches("<circle class=\"pt m").count(), multiples);
    assert_eq!(dom.matches("<circle class=\"pt a").count(), abs);
    assert!(dom.contains("class=\"limit\""));
    assert!(dom.contains("first divergence: #12 transformer.h.0.mlp.act"));

    // A screenshot of the page holds far more than one of a blank page.
    let blank = dir.path().join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let mut sizes = Vec::new();
    for (name, page) in [("blank.png", &blank), ("page.png", &page)] {
        let png = dir.path().join(name);
        let shot = format!("--screenshot={}", png.display());
        run_chromium(
            &chromium,
            &profile,
            page,
            &[&shot, "--window-size=1400,1400"],
            &dir.path().join("log"),
        );
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
        sizes.push(bytes.len());
    }
    assert!(sizes[1] > 5 * sizes[0], "screenshot sizes (blank, page): {sizes:?}");
}
