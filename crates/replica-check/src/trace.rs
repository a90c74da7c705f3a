//! Activation traces: blocks record their outputs under their module path
//! during a forward pass, so a run can be compared module by module against
//! the reference's forward hooks.
//!
//! Recording is per thread and off by default; [`tap`] then costs one
//! thread-local flag read.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use candle_core::Tensor;

/// One recorded activation.
#[derive(Clone, Debug)]
pub struct TraceEntry {
    /// The module path, with `#k` for the k-th repeated call and `:i` for tuple elements,
    /// exactly as the bundle's `act/` names.
    pub name: String,
    /// The recorded output.
    pub tensor: Tensor,
}

/// The activations recorded during one forward pass, in execution order.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// The activations, in the order they were recorded.
    pub entries: Vec<TraceEntry>,
    calls: HashMap<String, usize>,
}

impl Trace {
    /// The activation recorded under `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|e| e.name == name).map(|e| &e.tensor)
    }

    /// The recorded names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// How many activations were recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The name for the next call of `path`: repeated calls get `#1`, `#2`, ...
    fn call_name(&mut self, path: &str) -> String {
        let count = self.calls.entry(path.to_string()).or_insert(0);
        let name = if *count == 0 {
            path.to_string()
        } else {
            format!("{path}#{count}")
        };
        *count += 1;
        name
    }
}

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static CURRENT: RefCell<Trace> = RefCell::new(Trace::default());
    /// Whether the innermost active recording keeps what nested recordings capture.
    static COLLECTS_NESTED: Cell<bool> = const { Cell::new(false) };
}

/// Whether a trace is being recorded on this thread.
#[inline]
pub fn is_active() -> bool {
    ACTIVE.with(Cell::get)
}

/// Records `tensor` as the output of the module at `path`, when a trace is active.
/// The root module (path `""`) is not recorded: its output is the bundle's `output/`.
#[inline]
pub fn tap(path: &str, tensor: &Tensor) {
    if is_active() && !path.is_empty() {
        record_entries(path, std::slice::from_ref(tensor), false);
    }
}

/// Records the elements of a tuple output as `path:0`, `path:1`, ...
#[inline]
pub fn tap_tuple(path: &str, tensors: &[&Tensor]) {
    if is_active() && !path.is_empty() {
        let owned: Vec<Tensor> = tensors.iter().map(|t| (*t).clone()).collect();
        record_entries(path, &owned, true);
    }
}

#[cold]
fn record_entries(path: &str, tensors: &[Tensor], tuple: bool) {
    CURRENT.with(|current| {
        let mut trace = current.borrow_mut();
        let base = trace.call_name(path);
        for (i, tensor) in tensors.iter().enumerate() {
            let name = if tuple { format!("{base}:{i}") } else { base.clone() };
            trace.entries.push(TraceEntry {
                name,
                tensor: tensor.clone(),
            });
        }
    })
}

/// Runs `f` with tracing on and returns its result with what it recorded.
/// Nested calls record into their own trace and restore the outer one.
pub fn record<T>(f: impl FnOnce() -> T) -> (T, Trace) {
    record_with(f, false)
}

/// Like [`record`], and the returned trace also holds what the recordings
/// nested directly inside `f` captured, appended when each ends, in execution
/// order. (A nested plain [`record`] keeps its own nested recordings to itself;
/// a nested `record_nested` passes them on.)
///
/// This is how a caller traces a component that records its own forward pass
/// (a parity case that compares its trace itself): with [`record`] the outer
/// trace would see nothing of it. Nested entries keep the names their own
/// recording gave them, so two nested recordings of the same module both
/// appear under its plain path.
pub fn record_nested<T>(f: impl FnOnce() -> T) -> (T, Trace) {
    record_with(f, true)
}

fn record_with<T>(f: impl FnOnce() -> T, collect_nested: bool) -> (T, Trace) {
    struct Restore {
        was_active: bool,
        outer_collects: bool,
        outer: Trace,
    }
    impl Drop for Restore {
        // Runs on unwinding too, so a panicking forward never leaves tracing on.
        fn drop(&mut self) {
            let outer = std::mem::take(&mut self.outer);
            CURRENT.with(|c| *c.borrow_mut() = outer);
            ACTIVE.with(|a| a.set(self.was_active));
            COLLECTS_NESTED.with(|c| c.set(self.outer_collects));
        }
    }
    let mut restore = Restore {
        outer: CURRENT.with(|c| std::mem::take(&mut *c.borrow_mut())),
        was_active: ACTIVE.with(|a| a.replace(true)),
        outer_collects: COLLECTS_NESTED.with(|c| c.replace(collect_nested)),
    };
    let value = f();
    let trace = CURRENT.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if restore.outer_collects {
        restore.outer.entries.extend(trace.entries.iter().cloned());
    }
    (value, trace)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn t(v: f32) -> Tensor {
        Tensor::new(&[v], &Device::Cpu).unwrap()
    }

    #[test]
    fn record_nested_keeps_what_inner_recordings_capture() {
        let (inner, outer) = record_nested(|| {
            tap("before", &t(1.0));
            let ((), inner) = record(|| {
                tap("inner", &t(2.0));
                // A recording inside a plain `record` stays inside it.
                let ((), deepest) = record(|| tap("deepest", &t(3.0)));
                assert_eq!(deepest.names().collect::<Vec<_>>(), ["deepest"]);
            });
            tap("after", &t(4.0));
            inner
        });
        assert_eq!(inner.names().collect::<Vec<_>>(), ["inner"]);
        assert_eq!(outer.names().collect::<Vec<_>>(), ["before", "inner", "after"]);
        assert!(!is_active());
        assert!(!COLLECTS_NESTED.with(Cell::get));
    }

    #[test]
    fn plain_record_ignores_nested_recordings() {
        let ((), outer) = record(|| {
            let _ = record(|| tap("inner", &t(2.0)));
        });
        assert!(outer.is_empty());
    }
}
