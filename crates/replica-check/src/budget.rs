//! The memory a component's config asks for, against a budget, before anything is built.
//!
//! A config is a few numbers that decide how much a component allocates: `n_embd`
//! of 10^9 asks for terabytes of weights, `max_position_embeddings` of 2^62 for a
//! rotary table no machine holds. Every config type says what it needs
//! ([`ConfigCheck::footprint`](crate::ConfigCheck::footprint)) as a [`Footprint`] of
//! [`Size`]s: counts multiplied with checked arithmetic (an overflow is "more than
//! any budget", never a panic), each remembering the config field that made it
//! large, so the refusal names it. [`admit`](crate::config_check::admit) compares
//! the footprint with the [`MemoryBudget`] before the component is built.
//!
//! An estimate is an upper bound within a small factor: parameters and buffers
//! as the component allocates them, activations as the tensors one forward pass
//! creates, counted [`ACTIVATION_PASSES`] times over for the backward pass and the
//! comparisons.

use std::fmt;
use std::ops::{Add, Mul};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde_json::Value;

/// How many times a forward pass's activations are counted: the backward pass
/// keeps them and makes gradients of them, and the comparison widens some to f64.
pub const ACTIVATION_PASSES: u128 = 4;

/// A count or a byte size computed from config fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Size {
    /// `None` when the arithmetic overflowed: more than any memory.
    value: Option<u128>,
    /// The field that contributes most, when a field contributes at all.
    blame: Option<Blame>,
}

/// A config field and its value, as the refusal names them.
#[derive(Clone, Debug, PartialEq)]
struct Blame {
    field: String,
    shown: String,
    /// How large the field's value is, to pick the larger of two factors.
    magnitude: f64,
}

impl Size {
    /// Nothing.
    pub const ZERO: Size = Size {
        value: Some(0),
        blame: None,
    };

    /// A constant, which no field is to blame for.
    pub fn count(n: u64) -> Size {
        Size {
            value: Some(u128::from(n)),
            blame: None,
        }
    }

    /// The value of the config field `field`.
    pub fn field(field: &str, value: usize) -> Size {
        Size {
            value: Some(value as u128),
            blame: Some(Blame {
                field: field.to_string(),
                shown: value.to_string(),
                magnitude: value as f64,
            }),
        }
    }

    /// A count computed from the config field `field` (whose value is `shown`), such
    /// as half a head's features.
    pub fn from_field(field: &str, shown: impl fmt::Display, count: usize) -> Size {
        Size {
            value: Some(count as u128),
            blame: Some(Blame {
                field: field.to_string(),
                shown: shown.to_string(),
                magnitude: count as f64,
            }),
        }
    }

    /// The value, or `None` when it overflowed.
    pub fn value(&self) -> Option<u128> {
        self.value
    }

    /// The larger of two sizes (an overflow is the largest).
    pub fn max(self, other: Size) -> Size {
        match (self.value, other.value) {
            (None, _) => self,
            (_, None) => other,
            (Some(a), Some(b)) if a >= b => self,
            _ => other,
        }
    }

    /// How large a size is, for picking the term that decides a sum.
    fn rank(&self) -> f64 {
        self.value.map_or(f64::INFINITY, |v| v as f64)
    }

    fn magnitude(&self) -> f64 {
        self.blame.as_ref().map_or(0.0, |b| b.magnitude)
    }
}

impl Mul for Size {
    type Output = Size;

    /// The product; the factor with the larger field value takes the blame.
    fn mul(self, other: Size) -> Size {
        let value = match (self.value, other.value) {
            (Some(0), _) | (_, Some(0)) => Some(0),
            (Some(a), Some(b)) => a.checked_mul(b),
            _ => None,
        };
        let blame = if other.magnitude() > self.magnitude() || self.blame.is_none() {
            other.blame.or(self.blame)
        } else {
            self.blame
        };
        Size { value, blame }
    }
}

impl Mul<u64> for Size {
    type Output = Size;

    fn mul(self, n: u64) -> Size {
        self * Size::count(n)
    }
}

impl Add for Size {
    type Output = Size;

    /// The sum; the larger term takes the blame (the other's, when it has none).
    fn add(self, other: Size) -> Size {
        let value = match (self.value, other.value) {
            (Some(a), Some(b)) => a.checked_add(b),
            _ => None,
        };
        let blame = if other.rank() > self.rank() {
            other.blame.or(self.blame)
        } else {
            self.blame.or(other.blame)
        };
        Size { value, blame }
    }
}

impl std::iter::Sum for Size {
    fn sum<I: Iterator<Item = Size>>(iter: I) -> Size {
        iter.fold(Size::ZERO, Add::add)
    }
}

/// What a component needs: its parameters and buffers, and the activations of one
/// forward pass, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Footprint {
    /// Weights and buffers (rotary and sinusoidal tables, masks).
    pub params: Size,
    /// The tensors one forward pass creates.
    pub activations: Size,
}

impl Default for Footprint {
    fn default() -> Self {
        Footprint::NONE
    }
}

impl Footprint {
    /// Nothing beyond what the inputs already hold.
    pub const NONE: Footprint = Footprint {
        params: Size::ZERO,
        activations: Size::ZERO,
    };

    /// Parameters and buffers of `bytes`.
    pub fn params(bytes: Size) -> Footprint {
        Footprint {
            params: bytes,
            activations: Size::ZERO,
        }
    }

    /// Activations of `bytes`.
    pub fn activations(bytes: Size) -> Footprint {
        Footprint {
            params: Size::ZERO,
            activations: bytes,
        }
    }

    /// `count` copies of this footprint (the layers of a model).
    pub fn times(self, count: Size) -> Footprint {
        Footprint {
            params: self.params * count.clone(),
            activations: self.activations * count,
        }
    }

    /// Parameters plus [`ACTIVATION_PASSES`] times the activations.
    pub fn total(&self) -> Size {
        self.params.clone() + self.activations.clone() * (ACTIVATION_PASSES as u64)
    }

    /// Refuses a footprint over `budget`, naming the field that makes it large.
    pub fn check(&self, budget: MemoryBudget) -> Result<(), String> {
        self.check_in(budget, None)
    }

    /// [`check`](Self::check), naming the field as `config` (the JSON the config was
    /// read from) spells it: a struct field read through an alias (`dim` from
    /// `n_embd`) is named by the one top-level key that holds its value.
    pub fn check_in(&self, budget: MemoryBudget, config: Option<&Value>) -> Result<(), String> {
        let total = self.total();
        if total.value.is_some_and(|bytes| bytes <= u128::from(budget.bytes)) {
            return Ok(());
        }
        let who = match &total.blame {
            Some(blame) => {
                let field = config.map_or(blame.field.clone(), |json| key_for(json, &blame.field, &blame.shown));
                format!("config field `{field}` = {}", blame.shown)
            }
            None => "the config".to_string(),
        };
        Err(format!(
            "{who} needs {} (parameters {}, activations {}), over the {} memory budget ({})",
            Bytes(total.value),
            Bytes(self.params.value),
            Bytes(self.activations.value.and_then(|a| a.checked_mul(ACTIVATION_PASSES))),
            Bytes(Some(u128::from(budget.bytes))),
            MemoryBudget::HOW_TO_RAISE
        ))
    }
}

impl Add for Footprint {
    type Output = Footprint;

    fn add(self, other: Footprint) -> Footprint {
        Footprint {
            params: self.params + other.params,
            activations: self.activations + other.activations,
        }
    }
}

impl std::iter::Sum for Footprint {
    fn sum<I: Iterator<Item = Footprint>>(iter: I) -> Footprint {
        iter.fold(Footprint::NONE, Add::add)
    }
}

/// The key of `config` for `field`: itself when the config has it, else the only
/// top-level key whose value is `shown`, else `field`.
fn key_for(config: &Value, field: &str, shown: &str) -> String {
    let Some(map) = config.as_object() else {
        return field.to_string();
    };
    if map.contains_key(field) {
        return field.to_string();
    }
    let mut holding = map
        .iter()
        .filter(|(_, v)| v.is_number() && v.to_string().as_str() == shown);
    match (holding.next(), holding.next()) {
        (Some((key, _)), None) => key.clone(),
        _ => field.to_string(),
    }
}

/// A byte count for people: `1.2 TiB`, `512 B`, or "more than 10^38 bytes".
struct Bytes(Option<u128>);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(bytes) = self.0 else {
            return f.write_str("more than 10^38 bytes");
        };
        const UNITS: [&str; 7] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"];
        if bytes < 1024 {
            return write!(f, "{bytes} B");
        }
        let mut value = bytes as f64 / 1024.0;
        for unit in UNITS {
            if value < 1024.0 {
                return write!(f, "{value:.1} {unit}");
            }
            value /= 1024.0;
        }
        write!(f, "{:.1e} bytes", bytes as f64)
    }
}

/// What a component runs on, as far as its activations go: the shapes of its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The largest first dimension of an input (the batch).
    pub batch: u64,
    /// The longest sequence: the largest second-to-last dimension of an input of
    /// rank 2 or more (`[batch, seq, features]`, `[batch, heads, seq, head_dim]`).
    pub len: u64,
    /// The most feature vectors in one input: its elements over its last dimension.
    pub rows: u64,
    /// The most elements in one input.
    pub elements: u64,
    /// Bytes per element of the dtype the component runs in (at least f32's 4).
    pub element_bytes: u64,
}

impl Default for Workload {
    /// One token of one feature, in f32: a config alone, with no inputs yet.
    fn default() -> Self {
        Workload {
            batch: 1,
            len: 1,
            rows: 1,
            elements: 1,
            element_bytes: 4,
        }
    }
}

impl Workload {
    /// The workload of inputs of these shapes, run in a dtype of `element_bytes`.
    pub fn of_shapes<'a>(shapes: impl IntoIterator<Item = &'a [usize]>, element_bytes: usize) -> Workload {
        let mut work = Workload {
            element_bytes: (element_bytes as u64).max(4),
            ..Workload::default()
        };
        for dims in shapes {
            let elements = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .unwrap_or(u64::MAX);
            let rows = match dims.last() {
                Some(&0) | None => elements.min(1),
                Some(&last) => elements / last as u64,
            };
            work.elements = work.elements.max(elements);
            work.rows = work.rows.max(rows);
            if let Some(&first) = dims.first() {
                work.batch = work.batch.max(first as u64);
            }
            if dims.len() >= 2 {
                work.len = work.len.max(dims[dims.len() - 2] as u64);
            }
        }
        work
    }

    /// `batch` sequences of `len` tokens of `width` features, in a dtype of
    /// `element_bytes` (a model's hidden states; sizes saturate rather than overflow).
    pub fn tokens(batch: u64, len: u64, width: usize, element_bytes: u64) -> Workload {
        let rows = batch.saturating_mul(len);
        Workload {
            batch,
            len,
            rows,
            elements: rows.saturating_mul(width as u64),
            element_bytes,
        }
    }

    /// The hidden states of a model whose inputs are token ids (`[batch, seq]`):
    /// the same sequences, `width` features per token.
    pub fn as_tokens(&self, width: usize) -> Workload {
        let batch = self.batch.max(1);
        Workload::tokens(batch, (self.elements / batch).max(1), width, self.element_bytes)
    }

    /// [`Workload::batch`] as a [`Size`].
    pub fn batch(&self) -> Size {
        Size::count(self.batch)
    }

    /// [`Workload::len`] as a [`Size`].
    pub fn len(&self) -> Size {
        Size::count(self.len)
    }

    /// [`Workload::rows`] as a [`Size`].
    pub fn rows(&self) -> Size {
        Size::count(self.rows)
    }

    /// [`Workload::elements`] as a [`Size`].
    pub fn elements(&self) -> Size {
        Size::count(self.elements)
    }

    /// `count` elements in bytes.
    pub fn bytes(&self, count: Size) -> Size {
        count * self.element_bytes
    }
}

/// The most memory a component may ask for, in bytes; a process-wide setting
/// like [`ReadLimits`](crate::ReadLimits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The budget in bytes.
    pub bytes: u64,
}

static CURRENT: AtomicU64 = AtomicU64::new(0);

impl MemoryBudget {
    /// Where a refusal says the budget comes from.
    pub const HOW_TO_RAISE: &'static str = "--max-memory / REPLICA_MAX_MEMORY";

    /// Without `/proc/meminfo`: 8 GiB.
    pub const FALLBACK: MemoryBudget = MemoryBudget { bytes: 8 << 30 };

    /// Half the memory this process may use: the machine's (`MemTotal` in
    /// `/proc/meminfo`), or its container's limit when that is lower (cgroup v2
    /// `memory.max`, v1 `memory.limit_in_bytes`); else [`Self::FALLBACK`].
    pub fn of_machine() -> MemoryBudget {
        static MACHINE: OnceLock<MemoryBudget> = OnceLock::new();
        *MACHINE.get_or_init(|| {
            let read = |path: &str| std::fs::read_to_string(path).ok();
            let total = read("/proc/meminfo").and_then(|text| mem_total(&text));
            let limit = [
                "/sys/fs/cgroup/memory.max",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            ]
            .iter()
            .filter_map(|path| read(path).and_then(|text| cgroup_limit(&text)))
            .min();
            let usable = match (total, limit) {
                (Some(total), Some(limit)) => Some(total.min(limit)),
                (total, limit) => total.or(limit),
            };
            usable.map_or(Self::FALLBACK, |bytes| MemoryBudget { bytes: bytes / 2 })
        })
    }

    /// The budget in force: the one set with [`set_current`](Self::set_current), else [`of_machine`](Self::of_machine).
    pub fn current() -> MemoryBudget {
        match CURRENT.load(Ordering::Relaxed) {
            0 => Self::of_machine(),
            bytes => MemoryBudget { bytes },
        }
    }

    /// Sets the budget for every later check in this process.
    pub fn set_current(budget: MemoryBudget) {
        // 0 means "not set"; a budget of 0 bytes is 1 byte, which refuses as much.
        CURRENT.store(budget.bytes.max(1), Ordering::Relaxed);
    }
}

/// A cgroup memory limit file's bytes; `max` (v2's no limit) is none.
fn cgroup_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `MemTotal` of `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_blame_the_largest_field_and_never_overflow() {
        let params = Size::field("vocab_size", 96) * Size::field("n_embd", 1_000_000_000) * 4;
        assert_eq!(params.value(), Some(384_000_000_000));
        let err = Footprint::params(params)
            .check(MemoryBudget { bytes: 1 << 30 })
            .unwrap_err();
        assert!(
            err.starts_with("config field `n_embd` = 1000000000 needs 357.6 GiB"),
            "{err}"
        );
        assert!(
            err.contains("over the 1.0 GiB memory budget (--max-memory / REPLICA_MAX_MEMORY)"),
            "{err}"
        );
        let huge = Size::field("a", usize::MAX) * Size::field("b", usize::MAX) * Size::field("c", 3);
        assert_eq!(huge.value(), None);
        let err = Footprint::params(huge)
            .check(MemoryBudget { bytes: 1 << 30 })
            .unwrap_err();
        assert!(
            err.starts_with("config field `a` = 18446744073709551615 needs more than 10^38 bytes"),
            "{err}"
        );
        assert_eq!(
            (Size::field("x", 0) * Size::field("y", usize::MAX) * Size::field("z", usize::MAX)).value(),
            Some(0)
        );
    }

    #[test]
    fn the_field_is_named_as_the_config_spells_it() {
        let footprint = Footprint::params(Size::field("dim", 1 << 40) * Size::field("dim", 1 << 40));
        let budget = MemoryBudget { bytes: 1 << 30 };
        let config = serde_json::json!({"n_embd": 1u64 << 40, "n_head": 4});
        let err = footprint.check_in(budget, Some(&config)).unwrap_err();
        assert!(err.starts_with("config field `n_embd` = 1099511627776 needs"), "{err}");
        // Two keys hold the value: the struct's own name is kept.
        let config = serde_json::json!({"n_embd": 1u64 << 40, "n_inner": 1u64 << 40});
        let err = footprint.check_in(budget, Some(&config)).unwrap_err();
        assert!(err.starts_with("config field `dim` = 1099511627776 needs"), "{err}");
    }

    #[test]
    fn sums_blame_the_larger_term() {
        let sum = Size::field("small", 3) * 2 + Size::field("large", 1000) + Size::count(5000);
        assert_eq!(sum.value(), Some(6006));
        assert_eq!(sum.blame.unwrap().field, "large");
        assert!(Footprint::activations(Size::count(10))
            .check(MemoryBudget { bytes: 40 })
            .is_ok());
        assert!(Footprint::activations(Size::count(11))
            .check(MemoryBudget { bytes: 40 })
            .is_err());
    }

    #[test]
    fn workloads_come_from_input_shapes() {
        let work = Workload::of_shapes([&[2usize, 5, 16][..], &[2, 5][..]], 2);
        assert_eq!(
            (work.batch, work.len, work.rows, work.elements, work.element_bytes),
            (2, 5, 10, 160, 4)
        );
        let empty = Workload::of_shapes([&[0usize, 16][..]], 8);
        assert_eq!((empty.rows, empty.elements, empty.element_bytes), (1, 1, 8));
    }

    #[test]
    fn the_machine_budget_is_half_its_memory() {
        assert_eq!(mem_total("MemTotal:       16384 kB\nMemFree: 1 kB\n"), Some(16 << 20));
        assert_eq!(mem_total("nothing"), None);
        // A container's limit; cgroup v2 writes `max` when there is none.
        assert_eq!(cgroup_limit("2147483648\n"), Some(2 << 30));
        assert_eq!(cgroup_limit("max\n"), None);
        assert!(MemoryBudget::of_machine().bytes > 0);
    }
}
