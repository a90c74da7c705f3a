//! What the criterion benchmarks share: the thread counts and their pools.

use candle_core::Tensor;

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
