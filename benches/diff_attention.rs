//! Differential attention (Ye et al., arXiv 2410.05258) against standard multi-head
//! attention of the same width, forward pass on the CPU.
//!
//! Both are causal self-attention over `dim = 256` with interleaved rotary positions
//! and no biases. The standard layer has 8 heads of 32 features; the differential
//! one has 4 heads, as the paper pairs them (half the heads, each computing two
//! softmax maps from 16-feature query/key halves and reading 32-feature values), so
//! both hold four `256 x 256` projections and compute 8 score maps per token pair.
//! What differs is the differential layer's extra work: the map subtraction,
//! the per-head RMSNorm and its split head layout.
//!
//!     cargo bench --bench diff_attention

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replica::blocks::attention::{Attention, AttentionConfig};
use replica::blocks::diff_attention::{DiffAttention, DiffAttentionConfig};
use replica::blocks::rope::RopeStyle;

const DIM: usize = 256;

fn bench_attention(c: &mut Criterion) {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let standard = Attention::new(
        &AttentionConfig {
            causal: true,
            rope: Some(RopeStyle::Interleaved),
            ..AttentionConfig::new(DIM, 8)
        },
        vb.pp("standard"),
    )
    .unwrap();
    let differential = DiffAttention::new(&DiffAttentionConfig::new(DIM, 4, 0), vb.pp("differential")).unwrap();

    let mut group = c.benchmark_group("attention forward, dim 256, batch 1");
    for seq in [64usize, 256] {
        let x = Tensor::randn(0f32, 1.0, (1, seq, DIM), &device).unwrap();
        group.throughput(Throughput::Elements(seq as u64));
        group.bench_with_input(BenchmarkId::new("Attention, 8 heads", seq), &seq, |b, _| {
            b.iter(|| standard.forward(&x, None, None).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("DiffAttention, 4 heads", seq), &seq, |b, _| {
            b.iter(|| differential.forward(&x, None).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_attention
}
criterion_main!(benches);
