//! What the criterion benchmarks share: the thread counts and their pools, and
//! criterion's settings.

use std::time::Duration;

use candle_core::Tensor;
use criterion::Criterion;

/// Ten samples of at least one call each (the slowest compositions take 0.2-0.5 s a
/// call, and criterion runs every sample at least once), one second of warm-up and
/// `measurement` per benchmark; the command line may override any of them.
pub fn config(measurement: Duration) -> Criterion {
    Criterion::default()
        .sample_size(10)
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measurement)
        .configure_from_args()
}

/// One implementation's call at one shape.
pub type Op<'a> = Box<dyn Fn() -> candle_core::Result<Tensor> + Send + Sync + 'a>;

/// The thread counts every benchmark runs at, each in its own rayon pool.
const THREADS: [usize; 2] = [1, 2];

pub fn pools() -> Vec<(usize, rayon::ThreadPool)> {
    THREADS
        .iter()
        .map(|&n| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .expect("a rayon pool");
            (n, pool)
        })
        .collect()
}
