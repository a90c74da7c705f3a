//! Every built-in case passes its PyTorch reference both ways: with the blocks on
//! the fused kernels and on the plain composition of differentiable candle ops.

use candle_core::Device;
use replica_blocks::compute::{with_compute, Compute};
use replica_suite::{builtin, fixtures_dir};

#[test]
fn every_case_passes_with_the_kernels_and_with_the_composition() {
    let all = builtin();
    assert!(all.len() >= 84, "{} cases", all.len());
    for compute in [Compute::Kernels, Compute::Composition] {
        for case in &all {
            let report = with_compute(compute, || case.run(&fixtures_dir(), &Device::Cpu))
                .unwrap_or_else(|err| panic!("{} ({compute}): {err}", case.name));
            assert!(report.passed(), "{compute}: {report}");
            assert!(
                !report.rows.is_empty(),
                "{} ({compute}): nothing was compared",
                case.name
            );
        }
    }
}
