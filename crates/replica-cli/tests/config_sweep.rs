//! The config sweep of docs/reliability.md: every numeric field of every registered
//! component's config (as its fixture records it), set in turn to 0, -1, 2^31,
//! 2^62, 1e9, NaN and a string, and checked with the `replica` binary under a 1 GiB
//! memory budget. Every run must end with exit code 0, 1 or 2, one stderr line
//! per case that could not run and none of them a panic; no signal, no timeout,
//! and a peak resident memory under the budget.
//!
//! One suite per component holds all its mutations but NaN (a case that fails
//! fails alone, so one process checks them all); JSON has no NaN, so each NaN is
//! an inline TOML config in a suite of its own, which the suite reader refuses.
//! `--nocapture` prints the counts that docs/reliability.md records.

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use replica_check::{open_safetensors, BundleOutline};
use replica_cli::registry::Registry;
use serde_json::Value;

/// The budget the runs get, and what their peak resident memory must stay under.
const BUDGET: u64 = 1 << 30;
/// Address space a run may map: the budget and room for the binary and its threads.
/// An allocation past it aborts the run (and fails the sweep) instead of being
/// counted only once touched.
const ADDRESS_SPACE: u64 = 2 << 30;
/// One run's time limit.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The values every numeric field is set to, with the label the counts use.
fn hostile_values() -> Vec<(&'static str, Value)> {
    vec![
        ("0", Value::from(0)),
        ("-1", Value::from(-1)),
        ("2^31", Value::from(1u64 << 31)),
        ("2^62", Value::from(1u64 << 62)),
        ("1e9", Value::from(1e9)),
        ("string", Value::from("a string")),
    ]
}

/// Dotted paths of the numeric leaves of `value` (in objects and arrays).
fn numeric_fields(value: &Value, path: &str, out: &mut Vec<String>) {
    let below = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Number(_) => out.push(path.to_string()),
        Value::Object(map) => map.iter().for_each(|(k, v)| numeric_fields(v, &below(k), out)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| numeric_fields(v, &below(&i.to_string()), out)),
        _ => {}
    }
}

/// `config` with the leaf at `path` replaced by `new`.
fn with_field(config: &Value, path: &str, new: Value) -> Value {
    let mut config = config.clone();
    let mut slot = &mut config;
    for key in path.split('.') {
        slot = match slot {
            Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
            other => &mut other[key],
        };
    }
    *slot = new;
    config
}

/// The config as a TOML value: JSON's nulls are left out (TOML has none; every
/// null field of the fixtures is optional), `nan_at` becomes NaN.
fn toml_config(config: &Value, nan_at: &str) -> toml::Value {
    fn convert(value: &Value, path: &str, nan_at: &str) -> Option<toml::Value> {
        let below = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        if path == nan_at {
            return Some(toml::Value::Float(f64::NAN));
        }
        Some(match value {
            Value::Null => return None,
            Value::Bool(b) => toml::Value::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => toml::Value::Integer(i),
                None => toml::Value::Float(n.as_f64().unwrap()),
            },
            Value::String(s) => toml::Value::String(s.clone()),
            Value::Array(items) => toml::Value::Array(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| convert(v, &below(&i.to_string()), nan_at))
                    .collect(),
            ),
            Value::Object(map) => toml::Value::Table(
                map.iter()
                    .filter_map(|(k, v)| Some((k.clone(), convert(v, &below(k), nan_at)?)))
                    .collect(),
            ),
        })
    }
    convert(config, "", nan_at).unwrap()
}

/// How one run of the binary ended.
struct Run {
    status: ExitStatus,
    timed_out: bool,
    peak_rss_bytes: u64,
    stderr: String,
}

/// Runs `replica args` under the budget and the address-space limit, with its peak
/// resident memory from `wait4`.
fn run(dir: &Path, args: &[&str]) -> Run {
    let stderr_path = dir.join(format!("stderr-{}.txt", args.join("-").replace('/', "_")));
    let mut command = Command::new(env!("CARGO_BIN_EXE_replica"));
    command
        .args(args)
        .current_dir(dir)
        .env("REPLICA_MAX_MEMORY", BUDGET.to_string())
        .env("RAYON_NUM_THREADS", "2")
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let limit = libc::rlimit {
        rlim_cur: ADDRESS_SPACE,
        rlim_max: ADDRESS_SPACE,
    };
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("the replica binary starts");
    let pid = child.id() as libc::pid_t;
    let started = Instant::now();
    let mut timed_out = false;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: rusage is plain data, filled in by wait4.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
        if reaped == pid {
            break (ExitStatus::from_raw(status), usage);
        }
        if !timed_out && started.elapsed() > TIMEOUT {
            timed_out = true;
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // `child` is reaped already; dropping it does not wait again.
    drop(child);
    Run {
        status,
        timed_out,
        peak_rss_bytes: usage.ru_maxrss as u64 * 1024,
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// What every run must be: not signalled, not timed out, exit 0, 1 or 2, under the
/// budget, and no panic anywhere in stderr.
fn assert_clean(run: &Run, what: &str) {
    assert!(!run.timed_out, "{what}: ran past {TIMEOUT:?}");
    assert!(
        run.status.signal().is_none(),
        "{what}: ended by signal {:?}\n{}",
        run.status.signal(),
        run.stderr
    );
    let code = run.status.code().unwrap();
    assert!(matches!(code, 0..=2), "{what}: exit code {code}\n{}", run.stderr);
    assert!(
        run.peak_rss_bytes < BUDGET,
        "{what}: peak resident memory {} bytes, over the budget",
        run.peak_rss_bytes
    );
    for banned in ["panicked", "internal error", "overflow", "backtrace"] {
        assert!(
            !run.stderr.contains(banned),
            "{what}: `{banned}` in stderr:\n{}",
            run.stderr
        );
    }
}

/// Counts of case outcomes per hostile value: ok, fail, could not run.
type Counts = BTreeMap<&'static str, [usize; 3]>;

/// One component's mutations, but NaN, as one suite of cases with JSON config files.
fn sweep_component(dir: &Path, name: &str, config: &Value, fields: &[String], counts: &Mutex<Counts>) -> u64 {
    let mut suite = String::new();
    let mut labels = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        for (label, value) in hostile_values() {
            let file = format!("{name}-{i}-{label}.json");
            std::fs::write(dir.join(&file), with_field(config, field, value).to_string()).unwrap();
            let case = format!("{name} {field}={label}");
            suite.push_str(&format!(
                "[[case]]\nname = {case:?}\ncomponent = {name:?}\nconfig = {file:?}\n\n"
            ));
            labels.push((case, label));
        }
    }
    let suite_file = format!("{name}.toml");
    let report_file = format!("{name}.json");
    std::fs::write(dir.join(&suite_file), suite).unwrap();
    let run = run(dir, &["--format", "json", "check", &suite_file, "-o", &report_file]);
    assert_clean(&run, name);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(&report_file)).unwrap()).unwrap();
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), labels.len(), "{name}: every case is in the report");
    let (mut errors, mut failures) = (0, 0);
    let mut counts = counts.lock().unwrap();
    for (case, (label, value_label)) in cases.iter().zip(&labels) {
        assert_eq!(case["name"], label.as_str());
        let outcome = match case["verdict"].as_str().unwrap() {
            "ok" => 0,
            "fail" => {
                failures += 1;
                1
            }
            "error" => {
                errors += 1;
                let message = case["error"].as_str().unwrap_or("the bundle lacks a tensor");
                let first = message.lines().next().unwrap_or_default();
                assert!(!first.trim().is_empty(), "{label}: an empty error");
                assert!(!message.contains("panicked"), "{label}: {message}");
                2
            }
            other => panic!("{label}: verdict {other}"),
        };
        counts.entry(value_label).or_default()[outcome] += 1;
    }
    // One stderr line per case that could not run, each naming it.
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), errors, "{name}: stderr\n{}", run.stderr);
    assert!(
        lines.iter().all(|l| l.starts_with("error: case `")),
        "{name}:\n{}",
        run.stderr
    );
    let expected = if errors > 0 {
        2
    } else if failures > 0 {
        1
    } else {
        0
    };
    assert_eq!(run.status.code(), Some(expected), "{name}: exit code");
    run.peak_rss_bytes
}

/// NaN at `field`: an inline TOML config, refused by the suite reader in one line.
fn sweep_nan(dir: &Path, name: &str, config: &Value, index: usize, field: &str) -> u64 {
    let mut case = toml::Table::new();
    case.insert("component".into(), toml::Value::String(name.into()));
    case.insert("config".into(), toml_config(config, field));
    let mut suite = toml::Table::new();
    suite.insert("case".into(), toml::Value::Array(vec![toml::Value::Table(case)]));
    let suite_file = format!("{name}-{index}-nan.toml");
    std::fs::write(dir.join(&suite_file), toml::to_string(&suite).unwrap()).unwrap();
    let run = run(dir, &["check", &suite_file]);
    let what = format!("{name} {field}=NaN");
    assert_clean(&run, &what);
    assert_eq!(run.status.code(), Some(2), "{what}: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: {}", run.stderr);
    assert!(
        lines[0].contains(&format!("field `{field}` is NaN")),
        "{what}: {}",
        lines[0]
    );
    run.peak_rss_bytes
}

#[test]
fn every_numeric_config_field_of_every_component_is_refused_or_runs_within_the_budget() {
    let started = Instant::now();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("config-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let registry = Registry::load();
    let mut jobs: Vec<(String, Value, Vec<String>)> = Vec::new();
    for component in registry.all() {
        let fixture: &PathBuf = component.fixture.as_ref().expect("every component has a fixture");
        let config = BundleOutline::of(&open_safetensors(fixture).unwrap())
            .unwrap()
            .metadata
            .config;
        let mut fields = Vec::new();
        numeric_fields(&config, "", &mut fields);
        jobs.push((component.name.to_string(), config, fields));
    }
    let fields: usize = jobs.iter().map(|(_, _, f)| f.len()).sum();
    let swept = jobs.iter().filter(|(_, _, f)| !f.is_empty()).count();

    // Two runs at a time.
    let counts = Mutex::new(Counts::new());
    let peak = Mutex::new(0u64);
    let queue = Mutex::new(jobs.iter().collect::<Vec<_>>());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let Some((name, config, fields)) = queue.lock().unwrap().pop() else {
                    break;
                };
                if fields.is_empty() {
                    continue;
                }
                let mut most = sweep_component(&dir, name, config, fields, &counts);
                for (i, field) in fields.iter().enumerate() {
                    most = most.max(sweep_nan(&dir, name, config, i, field));
                }
                let mut peak = peak.lock().unwrap();
                *peak = (*peak).max(most);
            });
        }
    });
    let _ = std::fs::remove_dir_all(&dir);

    let counts = counts.into_inner().unwrap();
    let total: usize = counts.values().flatten().sum::<usize>() + fields;
    println!(
        "{} components ({swept} with numeric fields), {fields} numeric fields, {total} runs of a case, \
         peak resident memory {:.1} MiB (budget {} MiB), {:.1} s",
        jobs.len(),
        *peak.lock().unwrap() as f64 / (1 << 20) as f64,
        BUDGET >> 20,
        started.elapsed().as_secs_f64()
    );
    println!("value: ok / fail / could not run");
    for (value, [ok, fail, error]) in &counts {
        println!("{value}: {ok} / {fail} / {error}");
    }
    println!("NaN: 0 / 0 / {fields} (the suite reader refuses it)");
    assert_eq!(jobs.len(), registry.all().len());
    assert!(fields > 400, "the fixtures' configs hold {fields} numeric fields");
}
