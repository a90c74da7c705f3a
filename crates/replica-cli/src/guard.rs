//! Panics: a bug, never a backtrace. A component that panics on a user's bundle
//! (an `unwrap` on a shape it did not expect) fails its case with the panic's
//! message; a panic anywhere else prints one line and exits 101.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    /// Set while [`catch`] runs: the hook stays quiet and `catch` reports instead.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Installs the one-line panic hook.
pub fn install() {
    panic::set_hook(Box::new(|info| {
        if CATCHING.with(Cell::get) {
            return;
        }
        let location = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        crate::print_error(&format!(
            "internal error{location}: {} (this is a bug in replica; please report it)",
            message(info.payload())
        ));
    }));
}

fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs `f`; a panic inside becomes `Err(its message)`.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = CATCHING.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.map_err(|payload| message(payload.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(catch(|| -> () { panic!("shape {}", 3) }), Err("shape 3".to_string()));
        assert!(!CATCHING.with(Cell::get));
    }
}
