//! The parity harness: does a reimplementation compute what the reference computes?
//!
//! - [`Tolerance`] and [`compare`]: the `torch.testing.assert_close` rule, with
//!   statistics that say where and by how much two tensors differ; integers are
//!   compared exactly, and [`compare_stored`] also holds tensors read from files
//!   to the dtypes they were stored with.
//! - [`Approx`], [`assert_close`] and [`assert_tensor_close!`]: the same in tests.
//! - [`Bundle`]: reference tensors dumped from PyTorch (`docs/bundle-format.md`),
//!   [`Bundle::config`], which reads a component's config strictly ([`config`]),
//!   and [`Bundle::dtype`], the dtype the reference ran in.
//! - [`ConfigCheck`] and [`admit`]: every config validated and weighed against the
//!   [`MemoryBudget`] ([`budget`]) before anything is built from it.
//! - [`Parity`]: a parity run on a bundle: outputs, traced activations under one
//!   rule ([`parity`]), gradients (tied parameters included); [`check_block`] and
//!   [`BlockCheck`] do the whole run for a block in one call.
//! - [`WeightMap`]: a reference checkpoint's tensors into a candle `VarBuilder`,
//!   strictly.
//! - [`trace`] and [`compare_trace`]: per-module activations, and the first module
//!   that diverges; [`TraceMap`]: how the reference's traces name them, beside the
//!   [`WeightMap`].
//! - [`noise`]: the verdict calibrated against the reference's float64 shadow: a
//!   port's error as a multiple of the reference's own rounding error.

#![warn(missing_docs)]

mod approx_eq;
mod assert;
pub mod block_check;
pub mod budget;
pub mod bundle;
mod compare;
mod comparison;
pub mod config;
pub mod config_check;
mod dtype;
mod error;
mod exact;
mod float_json;
mod gradients;
pub mod interrupt;
pub mod noise;
pub mod parity;
mod printable;
pub mod report;
pub mod stats;
pub mod suite;
pub mod table;
pub mod tensor_file;
mod tolerance;
pub mod trace;
pub mod trace_dump;
pub mod trace_map;
mod values;
pub mod weight_map;

pub use approx_eq::Approx;
pub use assert::{assert_close, check_close};
pub use block_check::{check_block, BlockCheck};
pub use budget::{Footprint, MemoryBudget, Size, Workload};
pub use bundle::{
    Bundle, BundleMetadata, BundleOutline, Namespace, Producer, ShadowInfo, FORMAT_VERSION, SHADOW_PREFIX,
};
pub use compare::{compare, compare_default, compare_stored, compare_with_shadow};
pub use comparison::{format_multiple, Comparison, Element, ExactIntegers, ExactPair, Extreme, Noise, NonFinite};
pub use config::{read_config, read_config_parts, ConfigParts, ConfigRead};
pub use config_check::{admit, ConfigCheck};
pub use dtype::parse_dtype;
pub use error::{Error, Result};
pub use noise::{Rule, NOISE_LIMIT};
pub use parity::{Parity, Unmatched};
pub use printable::printable;
pub use report::{compare_trace, summary_table, Report, ReportRow, TraceReport, TraceRow};
pub use stats::Stats;
pub use suite::Case;
pub use tensor_file::{
    open_safetensors, read_safetensors, write_safetensors, ReadLimits, SafetensorsFile, TensorFile, TensorInfo,
};
pub use tolerance::{glob_match, Tolerance, ToleranceOverrides, ToleranceSpec};
pub use trace::{mapped, record_nested, tap, tap_tuple, Trace, TraceEntry};
pub use trace_map::TraceMap;
pub use weight_map::{LoadReport, MappedWeights, ShapeMismatch, WeightMap};
