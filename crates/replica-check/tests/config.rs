//! `Bundle::config`: every config field is read, bookkeeping, or refused by name.

use replica_check::config_check::{non_negative, positive};
use replica_check::{Bundle, BundleMetadata, ConfigCheck, Footprint, Size, Workload};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
struct Norm {
    eps: f64,
    #[serde(default)]
    rope: Option<Rope>,
}

#[derive(Debug, Deserialize)]
struct Rope {
    theta: f64,
}

#[derive(Debug, Deserialize)]
struct Heads {
    heads: usize,
}

impl ConfigCheck for Norm {
    fn validate(&self) -> Result<(), String> {
        non_negative("eps", self.eps)
    }

    fn footprint(&self, _: &Workload) -> Footprint {
        Footprint::NONE
    }
}

impl ConfigCheck for Heads {
    fn validate(&self) -> Result<(), String> {
        positive("heads", self.heads)
    }

    /// A `[heads, heads]` table, to weigh.
    fn footprint(&self, work: &Workload) -> Footprint {
        Footprint::params(work.bytes(Size::field("heads", self.heads) * Size::field("heads", self.heads)))
    }
}

fn bundle(config: Value) -> Bundle {
    Bundle::new(BundleMetadata::new("test.Norm", ("torch", "2"), "float32")).with_config(config)
}

fn refusal<T: std::fmt::Debug>(result: replica_check::Result<T>) -> String {
    result.expect_err("refused").to_string()
}

#[test]
fn declared_fields_are_read() {
    let b = bundle(json!({"eps": 1e-5, "rope": {"theta": 1e4}}));
    let norm: Norm = b.config().unwrap();
    assert_eq!((norm.eps, norm.rope.map(|r| r.theta)), (1e-5, Some(1e4)));
    assert!(b.unused_config_fields().is_empty());
}

#[test]
fn a_field_no_struct_reads_is_refused_naming_it_and_its_value() {
    let message = refusal(bundle(json!({"eps": 1e-5, "elementwise_affine": false})).config::<Norm>());
    assert!(
        message.starts_with("<memory>: config field `elementwise_affine` (= false)"),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
    let message = refusal(bundle(json!({"eps": 1e-5, "rope": {"theta": 1e4, "factor": 2.0}})).config::<Norm>());
    assert!(message.contains("`rope.factor` (= 2.0)"), "{message}");
}

#[test]
fn a_wrong_type_names_the_field_and_what_was_expected() {
    let message = refusal(bundle(json!({"eps": "x"})).config::<Norm>());
    assert_eq!(
        message,
        "<memory>: config field `eps`: invalid type: string \"x\", expected f64"
    );
    let message = refusal(bundle(json!({"eps": 1e-5, "rope": {"theta": []}})).config::<Norm>());
    assert!(
        message.contains("config field `rope.theta`: invalid type: sequence"),
        "{message}"
    );
    let message = refusal(bundle(json!({"rope": null})).config::<Norm>());
    assert!(message.contains("missing field `eps`"), "{message}");
}

#[test]
fn bookkeeping_is_accepted_and_listed() {
    let b = bundle(json!({
        "eps": 1e-5,
        "_name_or_path": "x",
        "use_cache": true,
        "chunk_size_feed_forward": 0,
        "id2label": {"0": "A"},
    }));
    assert_eq!(b.config::<Norm>().unwrap().eps, 1e-5);
    assert_eq!(
        b.unused_config_fields(),
        ["_name_or_path", "chunk_size_feed_forward", "id2label", "use_cache"]
    );
    // Not at a value that changes the computation, and never fields that can.
    for (field, value) in [
        ("chunk_size_feed_forward", json!(64)),
        ("is_decoder", json!(true)),
        ("pad_token_id", json!(0)),
        ("tie_word_embeddings", json!(true)),
        ("attention_dropout", json!(0.0)),
    ] {
        let message = refusal(bundle(json!({"eps": 1e-5, field: value})).config::<Norm>());
        assert!(message.contains(&format!("config field `{field}`")), "{message}");
    }
}

#[test]
fn parts_read_a_field_together_and_not_used_fields_are_listed() {
    let b = bundle(json!({"eps": 1e-6, "heads": 4, "vocab_size": 100}));
    let (norm, heads): (Norm, Heads) = b.config_parts(&["vocab_size"]).unwrap();
    assert_eq!((norm.eps, heads.heads), (1e-6, 4));
    assert_eq!(b.unused_config_fields(), ["vocab_size"]);
    let message = refusal(b.config_parts::<(Norm,)>(&["vocab_size"]));
    assert!(message.contains("config field `heads` (= 4)"), "{message}");
}

#[test]
fn a_config_from_a_file_names_that_file() {
    let b = bundle(json!({})).with_config_file(json!({"eps": true}), "my/config.json");
    let message = refusal(b.config::<Norm>());
    assert!(message.starts_with("my/config.json: config field `eps`"), "{message}");
    let message = b.config_error("eps", "expected 1e-5, got 0.1").to_string();
    assert_eq!(message, "my/config.json: config field `eps`: expected 1e-5, got 0.1");
}

#[test]
fn a_value_the_component_cannot_take_is_refused_by_name() {
    let message = refusal(bundle(json!({"eps": -1.0})).config::<Norm>());
    assert!(
        message.ends_with(": `eps` must be a finite number >= 0, got -1"),
        "{message}"
    );
    let message = refusal(bundle(json!({"eps": 1e-5, "heads": 0})).config_parts::<(Norm, Heads)>(&[]));
    assert!(message.ends_with(": `heads` must be positive, got 0"), "{message}");
}

#[test]
fn a_config_over_the_memory_budget_is_refused_before_anything_is_built() {
    let message = refusal(bundle(json!({"eps": 1e-5, "heads": 1u64 << 40})).config_parts::<(Norm, Heads)>(&[]));
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains(": config field `heads` = 1099511627776 needs "),
        "{message}"
    );
    assert!(
        message.ends_with("memory budget (--max-memory / REPLICA_MAX_MEMORY)"),
        "{message}"
    );
    let (_, heads): (Norm, Heads) = bundle(json!({"eps": 1e-5, "heads": 1024})).config_parts(&[]).unwrap();
    assert_eq!(heads.heads, 1024);
}
