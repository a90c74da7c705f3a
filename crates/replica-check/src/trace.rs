//! Activation traces: blocks record their outputs under their module path
//! during a forward pass, so a run can be compared module by module against
//! the reference's forward hooks. Where the reference names things otherwise,
//! a [`TraceMap`] applied with [`mapped`] says how.
//!
//! Recording is per thread and off by default; [`tap`] then costs one
//! thread-local flag read.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use candle_core::Tensor;

use crate::trace_map::{split_element, TraceMap};

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
    /// Per module path: its call number, and what the current call has recorded.
    calls: HashMap<String, (usize, Vec<Option<String>>)>,
}

impl Trace {
    /// A trace of `entries`, in that order (read from a dump, or put together).
    pub fn from_entries(entries: Vec<TraceEntry>) -> Self {
        Self {
            entries,
            calls: HashMap::new(),
        }
    }

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

    /// The name `name` (`path` or `path:i`) is recorded under: repeated calls of a
    /// module get `#1`, `#2`, ... A call ends when it would record an element twice
    /// (or a plain output beside elements), so the elements of one tuple share a
    /// number even when they are recorded apart (a trace map's alias, a block that
    /// records its tuple's first element late).
    fn number(&mut self, name: &str) -> String {
        let (path, element) = split_element(name);
        let (count, seen) = self.calls.entry(path.to_string()).or_default();
        let element = element.map(str::to_string);
        let repeated = match &element {
            None => !seen.is_empty(),
            Some(_) => seen.contains(&element) || seen.contains(&None),
        };
        if repeated {
            *count += 1;
            seen.clear();
        }
        seen.push(element.clone());
        let base = if *count == 0 {
            path.to_string()
        } else {
            format!("{path}#{count}")
        };
        match element {
            Some(i) => format!("{base}:{i}"),
            None => base,
        }
    }
}

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static CURRENT: RefCell<Trace> = RefCell::new(Trace::default());
    /// The maps of the enclosing [`mapped`] calls, outermost first.
    static MAPS: RefCell<Vec<TraceMap>> = const { RefCell::new(Vec::new()) };
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
    let mut entries: Vec<(String, Tensor)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (if tuple { format!("{path}:{i}") } else { path.to_string() }, t.clone()))
        .collect();
    MAPS.with(|maps| {
        // The innermost map names first: a model's own map, then a caller's around it.
        for map in maps.borrow().iter().rev() {
            entries = entries.iter().flat_map(|(name, t)| map.apply(name, t)).collect();
        }
    });
    CURRENT.with(|current| {
        let mut trace = current.borrow_mut();
        for (name, tensor) in entries {
            // The root module's output is the bundle's `output/`, not an activation.
            if split_element(&name).0.is_empty() {
                continue;
            }
            let name = trace.number(&name);
            trace.entries.push(TraceEntry { name, tensor });
        }
    })
}

/// Runs `f` with the taps it makes recorded under the names `map` gives them
/// (see [`TraceMap`]). Maps nest: a tap is named by the innermost map first. A
/// trace recorded inside or around `f` holds the mapped names, and so does any
/// [`record_nested`] around that.
pub fn mapped<T>(map: &TraceMap, f: impl FnOnce() -> T) -> T {
    struct Pop;
    impl Drop for Pop {
        // Runs on unwinding too, so a panicking forward never leaves the map on.
        fn drop(&mut self) {
            MAPS.with(|maps| maps.borrow_mut().pop());
        }
    }
    if map.is_empty() {
        return f();
    }
    MAPS.with(|maps| maps.borrow_mut().push(map.clone()));
    let _pop = Pop;
    f()
}

/// Runs `f` with tracing off: a second run of a component inside a traced one
/// (another way to the same outputs) records nothing.
pub fn untraced<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ACTIVE.with(|a| a.replace(false)));
    f()
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
    fn a_map_names_taps_as_they_are_recorded_and_numbers_the_mapped_names() {
        let hf = TraceMap::new().element(r"\.attn$", 0);
        let bert = TraceMap::new()
            .alias(r"^(l)\.out\.ln$", "$1.out")
            .ignore(r"^l\.attn:0$");
        let ((), outer) = record_nested(|| {
            let ((), inner) = record(|| {
                mapped(&hf, || {
                    mapped(&bert, || {
                        tap("l.attn", &t(1.0));
                        tap("l.out.ln", &t(2.0));
                    });
                    tap("l.attn", &t(3.0));
                    tap_tuple("l.attn", &[&t(4.0), &t(5.0)]);
                });
                tap("l.attn", &t(6.0));
            });
            // The inner map saw `l.attn` first and let it through; the outer one made it `l.attn:0`.
            assert_eq!(
                inner.names().collect::<Vec<_>>(),
                [
                    "l.attn:0",
                    "l.out.ln",
                    "l.out",
                    "l.attn#1:0",
                    "l.attn#2:0",
                    "l.attn#2:1",
                    "l.attn#3"
                ]
            );
        });
        assert_eq!(outer.len(), 7, "a nested recording passes on the mapped names");
        assert!(MAPS.with(|m| m.borrow().is_empty()));
    }

    #[test]
    fn elements_of_one_tuple_recorded_apart_share_a_call_number() {
        // BERT's attention: the block records the probabilities (`:1`), the map makes
        // element 0 of the residual LayerNorm recorded after it.
        let ((), trace) = record(|| {
            for _ in 0..2 {
                tap("attention:1", &t(1.0));
                tap("attention:0", &t(2.0));
            }
            tap("attention", &t(3.0));
            tap("attention:0", &t(4.0));
        });
        assert_eq!(
            trace.names().collect::<Vec<_>>(),
            [
                "attention:1",
                "attention:0",
                "attention#1:1",
                "attention#1:0",
                "attention#2",
                "attention#3:0"
            ]
        );
    }

    #[test]
    fn a_panic_inside_a_map_leaves_no_map_behind() {
        let map = TraceMap::new().rename("^a$", "b");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            mapped(&map, || panic!("forward failed"))
        }));
        assert!(result.is_err());
        assert!(MAPS.with(|m| m.borrow().is_empty()));
        let ((), trace) = record(|| tap("a", &t(1.0)));
        assert_eq!(trace.names().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn plain_record_ignores_nested_recordings() {
        let ((), outer) = record(|| {
            let _ = record(|| tap("inner", &t(2.0)));
        });
        assert!(outer.is_empty());
    }
}
