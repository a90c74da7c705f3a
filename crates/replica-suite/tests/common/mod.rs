//! Helpers shared by the suite's tests: the committed fixtures, and the checks
//! every group of cases gets.
#![allow(dead_code)] // each test binary uses its own selection

use std::collections::BTreeSet;

use candle_core::Device;
use replica_check::{summary_table, Bundle, Case, Namespace, Report};
use replica_suite::fixtures_dir;

/// A committed fixture, by its path under `tests/fixtures` without `.safetensors`.
pub fn fixture(path: &str) -> Bundle {
    Bundle::load(fixtures_dir().join(format!("{path}.safetensors")), &Device::Cpu).expect("fixture loads")
}

/// Each case's fixture and report, run on the CPU; a case that errors fails the test.
pub fn run(cases: &[Case]) -> Vec<(Bundle, Report)> {
    cases
        .iter()
        .map(|case| {
            let report = case
                .run(&fixtures_dir(), &Device::Cpu)
                .unwrap_or_else(|err| panic!("{}: {err}", case.name));
            (fixture(case.fixture), report)
        })
        .collect()
}

/// Every case passes and compared something; prints one line per case.
pub fn assert_all_pass(cases: &[Case]) {
    let reports: Vec<Report> = run(cases).into_iter().map(|(_, report)| report).collect();
    for report in &reports {
        assert!(report.passed(), "{report}");
        assert!(!report.rows.is_empty(), "{}: nothing was compared", report.title);
    }
    println!("{}", summary_table(&reports));
}

/// How many rows of `report` are named with `prefix` (`grad/`, `act/`, `output/`).
pub fn rows(report: &Report, prefix: &str) -> usize {
    report.rows.iter().filter(|row| row.name.starts_with(prefix)).count()
}

/// Every gradient and every activation a case's fixture stores has a row in its report.
pub fn assert_stored_tensors_checked(cases: &[Case]) {
    for (bundle, report) in run(cases) {
        let stored = bundle.names(Namespace::ParamGrad).count() + bundle.names(Namespace::InputGrad).count();
        assert_eq!(
            rows(&report, "grad/"),
            stored,
            "{}: every stored gradient is checked",
            report.title
        );
        for (name, _) in bundle.activations() {
            let label = format!("act/{name}");
            assert!(
                report.rows.iter().any(|row| row.name == label),
                "{}: activation {name} is not checked",
                report.title
            );
        }
    }
}

/// No two built-in cases share a name.
pub fn assert_names_unique() {
    let mut names = BTreeSet::new();
    for case in replica_suite::builtin() {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
    }
}

/// Each case's fixture exists under `blocks/` and is written by `python/<script>`; its
/// name is snake_case and its reference is named.
pub fn assert_written_by(cases: &[Case], script: &str) {
    let text = std::fs::read_to_string(fixtures_dir().join("../../python").join(script)).unwrap();
    for case in cases {
        assert!(
            case.fixture_path(&fixtures_dir()).is_file(),
            "{}: no fixture",
            case.name
        );
        let file = case.fixture.strip_prefix("blocks/").expect("under blocks/");
        assert!(
            text.contains(&format!("\"{file}.safetensors\"")),
            "{}: {file}.safetensors is not written by python/{script}",
            case.name
        );
        assert!(case.reference.len() > 3, "{}", case.name);
        assert!(
            case.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{}",
            case.name
        );
    }
}

/// The bytes of the cases' fixtures, each file once.
pub fn fixture_bytes(cases: &[Case]) -> u64 {
    let files: BTreeSet<_> = cases.iter().map(|case| case.fixture_path(&fixtures_dir())).collect();
    files.iter().map(|file| std::fs::metadata(file).unwrap().len()).sum()
}
