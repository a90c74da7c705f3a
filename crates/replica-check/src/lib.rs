//! The parity harness: does a reimplementation compute what the reference computes?
//!
//! - [`Tolerance`] and [`compare`]: the `torch.testing.assert_close` rule, with
//!   statistics that say where and by how much two tensors differ; integers are
//!   compared exactly, and [`compare_stored`] also holds tensors read from files
//!   to the dtypes they were stored with.
//! - [`Approx`], [`assert_close`] and [`assert_tensor_close!`]: the same in tests.
//! - [`Bundle`]: reference tensors dumped from PyTorch (`docs/bundle-format.md`).
//! - [`WeightMap`]: a reference checkpoint's tensors into a candle `VarBuilder`,
//!   strictly.
//! - [`trace`] and [`compare_trace`]: per-module activations, and the first module
//!   that diverges.

mod approx_eq;
mod assert;
pub mod bundle;
mod compare;
mod error;
mod exact;
mod float_json;
mod gradients;
mod parity;
pub mod report;
pub mod suite;
pub mod table;
pub mod tensor_file;
mod tolerance;
pub mod trace;
pub mod weight_map;

pub use approx_eq::Approx;
pub use assert::{assert_close, check_close};
pub use bundle::{Bundle, BundleMetadata, BundleOutline, Namespace, Producer, FORMAT_VERSION};
pub use compare::{compare, compare_default, Comparison, Element, Extreme, NonFinite};
pub use error::{Error, Result};
pub use exact::{compare_stored, ExactIntegers, ExactPair};
pub use parity::Parity;
pub use report::{compare_trace, summary_table, Report, ReportRow, TraceReport, TraceRow};
pub use suite::Case;
pub use tensor_file::{
    open_safetensors, read_safetensors, write_safetensors, ReadLimits, SafetensorsFile, TensorFile, TensorInfo,
};
pub use tolerance::{glob_match, Tolerance, ToleranceOverrides, ToleranceSpec};
pub use trace::{record_nested, tap, tap_tuple, Trace};
pub use weight_map::{LoadReport, MappedWeights, ShapeMismatch, WeightMap};
