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

/// Where criterion keeps its results.
pub fn criterion_dir() -> std::path::PathBuf {
    std::env::var("CRITERION_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
            std::path::Path::new(&target).join("criterion")
        })
}

/// The kernels the `gemm` crate picks for candle's matrix products on this CPU: its
/// AVX-512 ones only where the `avx512-gemm` feature built them.
fn gemm_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512-gemm") && is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "AVX2+FMA";
        }
    }
    "portable"
}

/// Keeps freed memory in the process instead of returning it to the OS: glibc then
/// serves the next call's tensors from pages already mapped, as README's "Speed"
/// section advises for binaries (a library must not set its users' allocator).
/// python/bench_torch.py gives PyTorch the same thresholds; `REPLICA_BENCH_MALLOC=default`
/// skips it in both. Returns what the process allocates with.
pub fn keep_freed_pages() -> &'static str {
    if std::env::var("REPLICA_BENCH_MALLOC").as_deref() == Ok("default") {
        return "glibc defaults";
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds (under its own lock).
    unsafe {
        // 32 MiB is glibc's largest mmap threshold; freed memory is trimmed past 1 GiB only.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        return "glibc, freed pages kept (mmap threshold 32 MiB, trim threshold 1 GiB)";
    }
    #[allow(unreachable_code)]
    "the system allocator"
}

/// The rayon pools of every thread count. The first call keeps freed pages
/// ([`keep_freed_pages`]) and records the SIMD path the kernels take and the
/// allocator (`<criterion dir>/replica_simd.json`, for BENCHMARKS.md's header).
pub fn pools() -> Vec<(usize, rayon::ThreadPool)> {
    static RECORD_PATHS: std::sync::Once = std::sync::Once::new();
    RECORD_PATHS.call_once(|| {
        let allocator = keep_freed_pages();
        let dir = criterion_dir();
        let simd = serde_json::json!({
            "backend": replica_kernels::simd::current_backend().name(),
            "gemm": gemm_path(),
            "allocator": allocator,
        });
        if std::fs::create_dir_all(&dir).is_ok() {
            // Best effort: a benchmark still runs where the directory cannot be written.
            let _ = std::fs::write(dir.join("replica_simd.json"), simd.to_string());
        }
    });
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
