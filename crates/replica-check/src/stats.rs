//! What a tensor holds, in a few numbers: `replica inspect`'s statistics.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::values::{unit_scale, CpuValues};

/// Statistics of one tensor over its finite values, computed in f64 a chunk at a
/// time straight from the tensor's memory (no widened copy), and exact in range:
/// values near 1e300 or 1e-300 are scaled by a power of two before they are
/// squared, so neither the mean nor the deviation overflows or underflows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// How many elements the tensor has.
    pub elements: usize,
    /// The least finite value.
    pub min: Option<f64>,
    /// The greatest finite value.
    pub max: Option<f64>,
    /// The mean of the finite values.
    pub mean: Option<f64>,
    /// Population standard deviation (ddof = 0), as numpy's default.
    pub std: Option<f64>,
    /// NaN values.
    pub nan: usize,
    /// +inf values.
    pub pos_inf: usize,
    /// -inf values.
    pub neg_inf: usize,
}

impl Stats {
    /// The statistics of `tensor`; `None` for a dtype whose values cannot be read
    /// as numbers (the 4-, 6- and 8-bit floats candle keeps as bytes).
    pub fn of(tensor: &Tensor) -> Option<Stats> {
        let tensor = tensor.to_device(&Device::Cpu).and_then(|t| t.contiguous()).ok()?;
        let n = tensor.elem_count();
        let (storage, layout) = tensor.storage_and_layout();
        let values = CpuValues::new(&storage, layout, n).ok()?;
        Some(Self::of_chunks(n, |each| values.for_each_chunk(each)))
    }

    /// The statistics of `values`, as [`of`](Self::of) computes them.
    pub fn of_values(values: &[f64]) -> Stats {
        Self::of_chunks(values.len(), |each| each(values))
    }

    /// Two passes over the values given chunk by chunk by `chunks`: the extremes
    /// and counts, then the mean and deviation of the values scaled near 1
    /// (Welford's update, which does not cancel like `E[x²] - E[x]²`).
    fn of_chunks(elements: usize, chunks: impl Fn(&mut dyn FnMut(&[f64]))) -> Stats {
        let mut stats = Stats {
            elements,
            ..Default::default()
        };
        let (mut min, mut max, mut finite) = (f64::INFINITY, f64::NEG_INFINITY, 0usize);
        chunks(&mut |chunk: &[f64]| {
            for &v in chunk {
                if v.is_finite() {
                    min = min.min(v);
                    max = max.max(v);
                    finite += 1;
                } else if v.is_nan() {
                    stats.nan += 1;
                } else if v > 0.0 {
                    stats.pos_inf += 1;
                } else {
                    stats.neg_inf += 1;
                }
            }
        });
        if finite == 0 {
            return stats;
        }
        let scale = unit_scale(min.abs().max(max.abs()));
        let (mut count, mut mean, mut m2) = (0f64, 0f64, 0f64);
        chunks(&mut |chunk: &[f64]| {
            for &v in chunk.iter().filter(|v| v.is_finite()) {
                let x = v * scale;
                count += 1.0;
                let delta = x - mean;
                mean += delta / count;
                m2 += delta * (x - mean);
            }
        });
        stats.min = Some(min);
        stats.max = Some(max);
        stats.mean = Some(mean / scale);
        stats.std = Some((m2 / count).max(0.0).sqrt() / scale);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_skip_non_finite_values_and_count_them() {
        let stats = Stats::of_values(&[1.0, 2.0, 3.0, 4.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        assert_eq!(stats.elements, 7);
        assert_eq!((stats.min, stats.max, stats.mean), (Some(1.0), Some(4.0), Some(2.5)));
        assert!((stats.std.unwrap() - 1.25f64.sqrt()).abs() < 1e-12);
        assert_eq!((stats.nan, stats.pos_inf, stats.neg_inf), (1, 1, 1));
        assert_eq!(Stats::of_values(&[]).mean, None);
    }

    #[test]
    fn extreme_magnitudes_keep_their_mean_and_deviation() {
        for scale in [1e-300, 1e-160, 1.0, 1e160, 1e300] {
            let stats = Stats::of_values(&[scale, 3.0 * scale]);
            let (mean, std) = (stats.mean.unwrap(), stats.std.unwrap());
            assert!((mean / (2.0 * scale) - 1.0).abs() < 1e-15, "{scale}: mean {mean}");
            assert!((std / scale - 1.0).abs() < 1e-15, "{scale}: std {std}");
        }
        let stats = Stats::of_values(&[f64::MAX, -f64::MAX]);
        assert_eq!((stats.mean, stats.std), (Some(0.0), Some(f64::MAX)));
    }

    #[test]
    fn a_tensor_is_read_in_place_in_its_own_dtype() {
        let t = Tensor::new(&[1u8, 2, 3, 4, 5, 6, 7, 8], &Device::Cpu).unwrap();
        let stats = Stats::of(&t).unwrap();
        assert_eq!((stats.min, stats.max, stats.mean), (Some(1.0), Some(8.0), Some(4.5)));
        let t = Tensor::new(&[f32::NAN, 2.0], &Device::Cpu).unwrap();
        assert_eq!(Stats::of(&t).unwrap().nan, 1);
    }
}
