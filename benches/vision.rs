//! Dynamic Tanh (arXiv 2503.10622) against the LayerNorm it replaces, and the
//! ConvNeXt block (arXiv 2201.03545) with and without GRN (ConvNeXt V2, arXiv
//! 2301.00808), forward pass on the CPU.
//!
//! DyT and LayerNorm run over ViT-S/16 tokens, `[8, 197, 384]` in f32: LayerNorm
//! through the op layer's fused kernel, DyT as a composition of candle ops in f64
//! (rounded once to f32, which keeps its `alpha` gradient accurate). The ConvNeXt
//! blocks run on ConvNeXt-T's first stage, `[1, 96, 56, 56]`.
//!
//!     cargo bench --bench vision
//!
//! On the shared 2-core build machine: LayerNorm 0.24 ms, DynamicTanh 56 ms (the
//! same ops in f32 take 37 ms, of which candle's element-wise `tanh` alone is
//! 17 ms); ConvNeXt V1 block 176 ms, V2 278 ms. DyT's paper claim (faster than a
//! norm) needs a fused kernel, which this port does not have yet.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replica::blocks::convnext::{ConvNextBlock, ConvNextBlockConfig};
use replica::blocks::dyt::{DynamicTanh, DynamicTanhConfig};
use replica::blocks::norm::{LayerNorm, LayerNormConfig};

fn bench_dyt(c: &mut Criterion) {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let layer_norm = LayerNorm::new(
        &LayerNormConfig {
            eps: 1e-6,
            ..LayerNormConfig::new(384)
        },
        vb.pp("ln"),
    )
    .unwrap();
    let dyt = DynamicTanh::new(&DynamicTanhConfig::new(384), vb.pp("dyt")).unwrap();
    let x = Tensor::randn(0f32, 1.0, (8, 197, 384), &device).unwrap();
    let mut group = c.benchmark_group("norm forward, [8, 197, 384] f32");
    group.throughput(Throughput::Elements(8 * 197));
    group.bench_function("LayerNorm", |b| b.iter(|| layer_norm.forward(&x).unwrap()));
    group.bench_function("DynamicTanh", |b| b.iter(|| dyt.forward(&x).unwrap()));
    group.finish();
}

fn bench_convnext(c: &mut Criterion) {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let v1 = ConvNextBlock::new(&ConvNextBlockConfig::new(96), vb.pp("v1")).unwrap();
    let v2 = ConvNextBlock::new(&ConvNextBlockConfig::v2(96), vb.pp("v2")).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 96, 56, 56), &device).unwrap();
    let mut group = c.benchmark_group("ConvNeXt block forward, [1, 96, 56, 56] f32");
    group.throughput(Throughput::Elements(56 * 56));
    for (name, block) in [("V1 (LayerScale)", &v1), ("V2 (GRN)", &v2)] {
        group.bench_with_input(BenchmarkId::new(name, 56), &x, |b, x| {
            b.iter(|| block.forward(x).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_dyt, bench_convnext
}
criterion_main!(benches);
