//! First-divergence tracing: run a model with tracing on (every block records
//! its output under its module path, the reference's name for it), compare each
//! recorded activation with the bundle's, and name the first module, in execution
//! order, that does not match.
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use replica_check::{Bundle, Tolerance};
//! use replica_models::{divergence, gpt2::{Gpt2, Gpt2Config}, LoadCheckpoint, ModelConfig};
//! # fn main() -> replica_models::Result<()> {
//! let bundle = Bundle::load("tests/fixtures/models/gpt2.safetensors", &Device::Cpu)?;
//! let config = Gpt2Config::from_value(&bundle.metadata().config, bundle.origin())?;
//! let model = Gpt2::from_tensors(&config, bundle.namespace(replica_check::Namespace::Param),
//!                                bundle.origin(), DType::F32, &Device::Cpu)?;
//! let (logits, trace) = divergence::record(|| model.forward(bundle.input("0").unwrap(), None));
//! let report = divergence::compare(&trace, &bundle, Tolerance::default());
//! println!("{report}");          // one row per module, then "First divergent module: ..." or "No module diverges."
//! # Ok(()) }
//! ```
//!
//! A model records its trace under the reference's names: its module paths, and
//! what its [trace map](crate::Architecture::trace_map) adds (HF attention records
//! `attn:0` and `attn:1`; BERT's containers repeat their last submodule's output).

use replica_check::trace::{self, Trace};
use replica_check::{compare_trace, Bundle, Tolerance, TraceReport};

/// Runs `forward` with tracing on; returns its result and the activations it recorded.
pub fn record<T>(forward: impl FnOnce() -> T) -> (T, Trace) {
    trace::record(forward)
}

/// The per-module comparison of `trace` against the bundle's activations: path,
/// shape, greatest absolute and relative differences, cosine, verdict, and the
/// first module that diverges.
pub fn compare(trace: &Trace, bundle: &Bundle, tolerance: Tolerance) -> TraceReport {
    compare_trace(trace, bundle, tolerance)
}

/// The recorded modules the reference has no activation for.
pub fn unreferenced(report: &TraceReport) -> Vec<String> {
    report
        .rows
        .iter()
        .filter(|row| row.comparison.is_none())
        .map(|row| row.path.clone())
        .collect()
}
