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
    pub tensor: Tensor,
}

/// The activations recorded during one forward pass, in execution order.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub entries: Vec<TraceEntry>,
    calls: HashMap<String, usize>,
}

impl Trace {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|e| e.name == name).map(|e| &e.tensor)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

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
    struct Restore {
        was_active: bool,
        outer: Trace,
    }
    impl Drop for Restore {
        // Runs on unwinding too, so a panicking forward never leaves tracing on.
        fn drop(&mut self) {
            let outer = std::mem::take(&mut self.outer);
            CURRENT.with(|c| *c.borrow_mut() = outer);
            ACTIVE.with(|a| a.set(self.was_active));
        }
    }
    let _restore = Restore {
        outer: CURRENT.with(|c| std::mem::take(&mut *c.borrow_mut())),
        was_active: ACTIVE.with(|a| a.replace(true)),
    };
    let value = f();
    let trace = CURRENT.with(|c| std::mem::take(&mut *c.borrow_mut()));
    (value, trace)
}
