//! Which implementation the blocks run: the fast CPU kernels of
//! `replica-kernels` (the default) or the plain composition of differentiable
//! candle ops (for debugging, and as the reference the kernels are checked against).
//!
//! The process default comes from the environment variable `REPLICA_COMPUTE`
//! (`kernels` or `composition`, case-insensitive), read once; unset or empty
//! means [`Compute::Kernels`]. An unrecognised value is not ignored silently:
//! [`Compute::from_env`] returns an error a program can report (and refuse to
//! start on), and [`current`] prints a warning to stderr once, naming the
//! variable, its value and the accepted values, and keeps the default, Kernels.
//! [`with_compute`] overrides the default on the calling thread.
//!
//! The op layer ([`crate::ops`]) is the one place that reads the switch. Whatever
//! it says, an op runs the composition where no kernel fits (f64, devices other
//! than the CPU, and the per-op cases listed in docs/kernels.md).

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// Which implementation the blocks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    /// The fused CPU kernels of `replica-kernels`, where they fit.
    Kernels,
    /// The plain composition of differentiable candle ops.
    Composition,
}

/// The environment variable that sets the process default.
pub const ENV_VAR: &str = "REPLICA_COMPUTE";

impl Compute {
    /// The name `REPLICA_COMPUTE` takes for this implementation.
    pub fn name(self) -> &'static str {
        match self {
            Compute::Kernels => "kernels",
            Compute::Composition => "composition",
        }
    }

    /// Parses `kernels` or `composition` (case-insensitive, surrounding spaces ignored).
    pub fn parse(value: &str) -> Result<Compute, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "kernels" => Ok(Compute::Kernels),
            "composition" => Ok(Compute::Composition),
            _ => Err(format!("expected `kernels` or `composition`, got `{value}`")),
        }
    }

    /// The implementation `REPLICA_COMPUTE` asks for: unset or empty is
    /// [`Compute::Kernels`]; any other value that is not `kernels` or
    /// `composition` is an error naming the variable, the value and what it accepts.
    pub fn from_env() -> Result<Compute, String> {
        match std::env::var(ENV_VAR) {
            Err(std::env::VarError::NotPresent) => Ok(Compute::Kernels),
            Err(std::env::VarError::NotUnicode(value)) => {
                Err(format!("{ENV_VAR}: expected `kernels` or `composition`, got {value:?}"))
            }
            Ok(value) if value.trim().is_empty() => Ok(Compute::Kernels),
            Ok(value) => Compute::parse(&value).map_err(|e| format!("{ENV_VAR}: {e}")),
        }
    }
}

impl FromStr for Compute {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compute::parse(s)
    }
}

impl fmt::Display for Compute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The process default, from `REPLICA_COMPUTE`, read on first use.
pub fn process_default() -> Compute {
    static DEFAULT: OnceLock<Compute> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        Compute::from_env().unwrap_or_else(|message| {
            eprintln!("warning: {message}; using `kernels`");
            Compute::Kernels
        })
    })
}

thread_local! {
    static OVERRIDE: Cell<Option<Compute>> = const { Cell::new(None) };
}

/// The implementation in force on this thread: a [`with_compute`] override, else
/// the process default ([`process_default`]).
pub fn current() -> Compute {
    OVERRIDE.with(Cell::get).unwrap_or_else(process_default)
}

/// Runs `f` with `compute` in force on the calling thread. Nested calls restore
/// the previous setting when they return, also when `f` panics. Other threads
/// (rayon's workers included) keep their own setting.
pub fn with_compute<R>(compute: Compute, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Compute>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(compute))));
    f()
}
