//! Trace maps: how a reference's traces name what a port records, as data beside
//! the [`WeightMap`](crate::WeightMap).
//!
//! Every block taps its own output under its own module path. Where the
//! reference's forward hooks name things otherwise, a [`TraceMap`] says how:
//!
//! - a module that returns a tuple records its output as `path:0`
//!   ([`element`](TraceMap::element));
//! - a module the port has no counterpart for (a container such as BERT's
//!   `intermediate`, whose output is its last submodule's) records a tensor the
//!   port records too ([`alias`](TraceMap::alias));
//! - a tap the reference has no module for is left out ([`ignore`](TraceMap::ignore));
//! - a name differs ([`rename`](TraceMap::rename)), or the reference returns the
//!   same values in another layout ([`transform`](TraceMap::transform)).
//!
//! A map applies to the taps made while [`trace::mapped`](crate::trace::mapped)
//! runs, as they are recorded: the trace, and every recording it is nested in,
//! holds the reference's names, and repeated calls are numbered (`#k`) under
//! those names, as the reference's hooks number them.

use std::fmt;
use std::sync::Arc;

use candle_core::Tensor;
use regex::Regex;

/// A change of layout: the tensor as the reference's module returns it.
pub type Transform = Arc<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync>;

#[derive(Clone)]
enum Rule {
    Rename(Regex, String),
    Element(Regex, usize),
    Alias(Regex, String),
    Ignore(Regex),
    Transform(Regex, Transform),
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Rename(p, r) => write!(f, "rename({:?} -> {r:?})", p.as_str()),
            Rule::Element(p, i) => write!(f, "element({:?} -> :{i})", p.as_str()),
            Rule::Alias(p, r) => write!(f, "alias({:?} -> {r:?})", p.as_str()),
            Rule::Ignore(p) => write!(f, "ignore({:?})", p.as_str()),
            Rule::Transform(p, _) => write!(f, "transform({:?})", p.as_str()),
        }
    }
}

/// An ordered list of rules applied to the name of every tap, like a
/// [`WeightMap`](crate::WeightMap)'s to every tensor name.
///
/// ```
/// use replica_check::TraceMap;
/// // HF BERT: the attention module returns `(LayerNorm(x + attention), probabilities)`,
/// // and the containers `intermediate` and `output` return their last submodule's output.
/// let layer = r"^(encoder\.layer\.\d+)";
/// let map = TraceMap::new()
///     .ignore(&format!(r"{layer}\.attention:0$"))
///     .alias(&format!(r"{layer}\.attention\.output\.LayerNorm$"), "$1.attention:0")
///     .alias(&format!(r"{layer}\.intermediate\.intermediate_act_fn$"), "$1.intermediate")
///     .alias(&format!(r"{layer}\.output\.LayerNorm$"), "$1.output");
/// assert_eq!(map.names("encoder.layer.1.output.LayerNorm"), ["encoder.layer.1.output.LayerNorm", "encoder.layer.1.output"]);
/// assert!(map.names("encoder.layer.1.attention:0").is_empty());
/// ```
///
/// A rule sees a tap's name as the trace writes it, with the tuple element (`attn:1`)
/// and without the call number (`#k`, given afterwards). Rules run in the order they
/// were added; a later rule sees the names an earlier one produced. Patterns are
/// regular expressions, replacements may use `$1`, `${name}` as in the `regex` crate.
/// A pattern is code, like a `Regex::new(..).unwrap()`: an invalid one panics.
#[derive(Clone, Debug, Default)]
pub struct TraceMap {
    // Shared: a model keeps its map and lends it to every traced forward pass.
    rules: Arc<Vec<Rule>>,
}

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|err| panic!("trace map: invalid pattern `{pattern}`: {err}"))
}

/// `name` split into the module path and its tuple element, if any (`attn:1`).
/// A suffix that is not a number (`transformer:last_hidden_state`) is part of the path.
pub(crate) fn split_element(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once(':') {
        Some((path, element)) if !element.is_empty() && element.bytes().all(|b| b.is_ascii_digit()) => {
            (path, Some(element))
        }
        _ => (name, None),
    }
}

impl TraceMap {
    /// A map that renames nothing.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, rule: Rule) -> Self {
        Arc::make_mut(&mut self.rules).push(rule);
        self
    }

    /// Records a matching tap under another name: the first match of `pattern` is
    /// replaced with `replacement`.
    pub fn rename(self, pattern: &str, replacement: &str) -> Self {
        self.with(Rule::Rename(regex(pattern), replacement.into()))
    }

    /// The reference's module returns a tuple whose element `index` is what the
    /// block returns: a matching tap of one tensor is recorded as `path:<index>`
    /// (HF attention returns `(output, probabilities or None)`: `attn:0`).
    pub fn element(self, pattern: &str, index: usize) -> Self {
        self.with(Rule::Element(regex(pattern), index))
    }

    /// The reference also records a module whose output is a matching tap's
    /// tensor and which the port has no module for (a container whose output is
    /// its last submodule's, an identity): the tap is recorded again under the
    /// name `replacement` makes of the match, right after it.
    pub fn alias(self, pattern: &str, replacement: &str) -> Self {
        self.with(Rule::Alias(regex(pattern), replacement.into()))
    }

    /// Leaves out matching taps: the reference has no module that records them.
    pub fn ignore(self, pattern: &str) -> Self {
        self.with(Rule::Ignore(regex(pattern)))
    }

    /// Records a matching tap as `f` returns it: the reference's module returns the
    /// same values in another layout (HF Marian's position rows have no batch
    /// dimension). Should `f` fail, the tap is recorded as it is, and the comparison
    /// shows the difference.
    pub fn transform(
        self,
        pattern: &str,
        f: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
    ) -> Self {
        self.with(Rule::Transform(regex(pattern), Arc::new(f)))
    }

    /// This map's rules, then `other`'s (a family's preset and a model's own rules).
    pub fn then(self, other: &TraceMap) -> Self {
        other.rules.iter().cloned().fold(self, TraceMap::with)
    }

    /// Whether the map has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The names a tap named `name` is recorded under (before call numbering).
    pub fn names(&self, name: &str) -> Vec<String> {
        let probe = Tensor::zeros((), candle_core::DType::U8, &candle_core::Device::Cpu).expect("a scalar");
        self.apply(name, &probe).into_iter().map(|(name, _)| name).collect()
    }

    /// The entries a tap of `tensor` named `name` is recorded as.
    pub(crate) fn apply(&self, name: &str, tensor: &Tensor) -> Vec<(String, Tensor)> {
        let mut entries = vec![(name.to_string(), tensor.clone())];
        for rule in self.rules.iter() {
            let mut next = Vec::with_capacity(entries.len() + 1);
            for (name, tensor) in entries {
                match rule {
                    Rule::Rename(pattern, replacement) => {
                        next.push((pattern.replace(&name, replacement.as_str()).into_owned(), tensor))
                    }
                    Rule::Element(pattern, index) if pattern.is_match(&name) && split_element(&name).1.is_none() => {
                        next.push((format!("{name}:{index}"), tensor))
                    }
                    Rule::Alias(pattern, replacement) if pattern.is_match(&name) => {
                        let alias = pattern.replace(&name, replacement.as_str()).into_owned();
                        next.push((name, tensor.clone()));
                        next.push((alias, tensor));
                    }
                    Rule::Ignore(pattern) if pattern.is_match(&name) => {}
                    Rule::Transform(pattern, f) if pattern.is_match(&name) => {
                        let changed = f(&tensor).unwrap_or(tensor);
                        next.push((name, changed));
                    }
                    _ => next.push((name, tensor)),
                }
            }
            entries = next;
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_run_in_order_on_what_earlier_rules_made() {
        let map = TraceMap::new()
            .element(r"(^|\.)attn$", 0)
            .alias(r"^(.*)\.attn:0$", "$1.attn_out")
            .rename(r"^h\.", "transformer.h.")
            .ignore(r"\.q_norm$");
        assert_eq!(
            map.names("h.0.attn"),
            ["transformer.h.0.attn:0", "transformer.h.0.attn_out"]
        );
        // An element is given only to a tap that is not one already.
        assert_eq!(map.names("h.0.attn:1"), ["transformer.h.0.attn:1"]);
        assert!(map.names("h.0.attn.q_norm").is_empty());
        assert_eq!(map.names("h.0.mlp"), ["transformer.h.0.mlp"]);
        assert!(TraceMap::new().is_empty() && !map.is_empty());
    }

    #[test]
    fn then_appends_the_other_maps_rules() {
        let map = TraceMap::new()
            .rename("^a$", "b")
            .then(&TraceMap::new().rename("^b$", "c"));
        assert_eq!(map.names("a"), ["c"]);
    }

    #[test]
    fn a_transform_changes_the_tensor_and_a_failing_one_keeps_it() {
        let t = Tensor::zeros((1, 3, 2), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let map = TraceMap::new().transform("^pe$", |t| t.squeeze(0));
        assert_eq!(map.apply("pe", &t)[0].1.dims(), [3, 2]);
        assert_eq!(map.apply("other", &t)[0].1.dims(), [1, 3, 2]);
        let failing = TraceMap::new().transform("^pe$", |t| t.squeeze(5));
        assert_eq!(failing.apply("pe", &t)[0].1.dims(), [1, 3, 2]);
    }

    #[test]
    fn numeric_suffixes_are_elements_and_field_names_are_not() {
        assert_eq!(split_element("h.0.attn:1"), ("h.0.attn", Some("1")));
        assert_eq!(
            split_element("transformer:last_hidden_state"),
            ("transformer:last_hidden_state", None)
        );
        assert_eq!(split_element("h.0"), ("h.0", None));
    }
}
