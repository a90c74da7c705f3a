//! The harness's own hot loop: comparing two tensors element by element.
//! The baseline is the least a check can do in candle, `(a - b).abs().max()`,
//! which gives one number and none of the statistics.
//!
//!     cargo bench --bench compare

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replica::check::{compare, Tolerance};

fn bench_compare(c: &mut Criterion) {
    let mut group = c.benchmark_group("compare");
    for &elements in &[4_096usize, 1 << 20] {
        let expected = Tensor::randn(0f32, 1.0, elements, &Device::Cpu).unwrap();
        let noise = Tensor::randn(0f32, 1e-7, elements, &Device::Cpu).unwrap();
        let actual = (&expected + noise).unwrap();
        group.throughput(Throughput::Bytes((2 * elements * DType::F32.size_in_bytes()) as u64));
        group.bench_with_input(BenchmarkId::new("replica compare", elements), &elements, |b, _| {
            b.iter(|| compare(&actual, &expected, Tolerance::default()))
        });
        group.bench_with_input(BenchmarkId::new("candle max abs diff", elements), &elements, |b, _| {
            b.iter(|| {
                (&actual - &expected)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_compare);
criterion_main!(benches);
