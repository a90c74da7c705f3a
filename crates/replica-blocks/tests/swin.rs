//! The Swin blocks alone (arXiv 2103.14030): windows round-trip, the relative
//! position index and the shifted-window mask have the structure timm's have, bad
//! configurations and inputs give one-line errors naming the field or the block,
//! and the channels-last patch embedding is the NCHW grid permuted. Parity with
//! timm itself is checked by the suite's `swin_*` cases.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use replica_blocks::patch_embed::{PatchEmbed, PatchEmbedConfig, Size2};
use replica_blocks::patch_merging::{PatchMerging, PatchMergingConfig};
use replica_blocks::swin_block::{SwinBlock, SwinBlockConfig};
use replica_blocks::window::{
    relative_position_index, shifted_window_mask, window_partition, window_reverse, SHIFTED_WINDOW_MASK,
};
use replica_blocks::window_attention::{WindowAttention, WindowAttentionConfig};
use replica_blocks::NormKind;

fn zeros() -> VarBuilder<'static> {
    VarBuilder::zeros(DType::F32, &Device::Cpu)
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn windows_round_trip_and_hold_neighbours() {
    let x = randn(&[2, 6, 8, 3]);
    let window = Size2::new(3, 4);
    let windows = window_partition(&x, window).unwrap();
    assert_eq!(windows.dims(), [2 * 2 * 2, 12, 3]);
    // The second window of the first image is rows 0..3, columns 4..8.
    let corner = x.narrow(1, 0, 3).unwrap().narrow(2, 4, 4).unwrap().get(0).unwrap();
    let expected = corner.contiguous().unwrap().reshape((12, 3)).unwrap();
    assert_eq!(values(&windows.get(1).unwrap()), values(&expected));
    let back = window_reverse(&windows, window, 6, 8).unwrap();
    assert_eq!(values(&back), values(&x));
    let err = window_partition(&x, Size2::new(4, 4)).unwrap_err().to_string();
    assert!(err.contains("6x8") && err.contains("4x4"), "{err}");
}

#[test]
fn the_relative_position_index_is_antisymmetric_about_the_table_centre() {
    let window = Size2::new(3, 4);
    let index: Vec<u32> = relative_position_index(window, &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (n, rows) = (12, (2 * 3 - 1) * (2 * 4 - 1));
    let centre = (3 - 1) * (2 * 4 - 1) + (4 - 1);
    for i in 0..n {
        assert_eq!(index[i * n + i] as usize, centre);
        for j in 0..n {
            // The offset of j from i is minus the offset of i from j.
            assert_eq!((index[i * n + j] + index[j * n + i]) as usize, rows - 1);
        }
    }
    assert_eq!(*index.iter().max().unwrap() as usize, rows - 1);
}

#[test]
fn the_shifted_window_mask_separates_regions_only() {
    let window = Size2::square(3);
    let mask = shifted_window_mask(6, 9, window, Size2::square(1), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(mask.dims(), [2 * 3, 9, 9]);
    let m = values(&mask);
    for w in 0..6 {
        for i in 0..9 {
            assert_eq!(m[(w * 9 + i) * 9 + i], 0.0, "a token always sees itself");
            for j in 0..9 {
                let (a, b) = (m[(w * 9 + i) * 9 + j], m[(w * 9 + j) * 9 + i]);
                assert_eq!(a, b);
                assert!(a == 0.0 || a == SHIFTED_WINDOW_MASK);
            }
        }
    }
    // The top-left window never wraps around: nothing is masked in it; the
    // bottom-right one holds tokens of four regions.
    assert!(m[..81].iter().all(|&v| v == 0.0));
    assert!(m[5 * 81..].contains(&SHIFTED_WINDOW_MASK));
    // No shift along an axis: one region along it.
    let rows_only = shifted_window_mask(6, 3, window, Size2::new(1, 0), DType::F32, &Device::Cpu).unwrap();
    let first = values(&rows_only.get(0).unwrap());
    assert!(first.iter().all(|&v| v == 0.0));
}

#[test]
fn the_block_clamps_its_window_to_a_small_map_unless_told_to_partition() {
    let config = SwinBlockConfig {
        window_size: Size2::square(7),
        shift_size: Size2::square(3),
        ..SwinBlockConfig::new(8, (4, 9), 2)
    };
    assert_eq!(config.window_and_shift(), (Size2::new(4, 7), Size2::new(0, 3)));
    let always = SwinBlockConfig {
        always_partition: true,
        ..config.clone()
    };
    assert_eq!(always.window_and_shift(), (Size2::square(7), Size2::square(3)));
    let block = SwinBlock::new(&config, zeros().pp("blocks").pp(1)).unwrap();
    let y = block.forward(&randn(&[2, 4, 9, 8])).unwrap();
    assert_eq!(y.dims(), [2, 4, 9, 8]);
}

#[test]
fn bad_configurations_name_the_field() {
    let error = |config: &SwinBlockConfig| SwinBlock::new(config, zeros()).unwrap_err().to_string();
    let base = SwinBlockConfig {
        window_size: Size2::square(4),
        ..SwinBlockConfig::new(8, (8, 8), 2)
    };
    let err = error(&SwinBlockConfig {
        shift_size: Size2::square(4),
        ..base.clone()
    });
    assert!(err.contains("shift_size") && err.contains("window"), "{err}");
    let err = error(&SwinBlockConfig {
        num_heads: 3,
        ..base.clone()
    });
    assert!(err.contains("num_heads"), "{err}");
    let err = error(&SwinBlockConfig {
        window_size: Size2::new(0, 4),
        ..base.clone()
    });
    assert!(err.contains("window_size"), "{err}");
    let err = error(&SwinBlockConfig {
        mlp_ratio: f64::NAN,
        ..base.clone()
    });
    assert!(err.contains("mlp_ratio"), "{err}");
    let err = WindowAttention::new(&WindowAttentionConfig::new(8, 2, 1 << 20), zeros())
        .unwrap_err()
        .to_string();
    assert!(err.contains("window_size"), "{err}");
    let err = PatchMerging::new(&PatchMergingConfig::new(0), zeros())
        .unwrap_err()
        .to_string();
    assert!(err.contains("dim"), "{err}");
}

#[test]
fn bad_inputs_name_the_block() {
    let block = SwinBlock::new(&SwinBlockConfig::new(8, (4, 4), 2), zeros().pp("blocks").pp(0)).unwrap();
    let err = block.forward(&randn(&[2, 16, 8])).unwrap_err().to_string();
    assert!(err.contains("blocks.0") && err.contains("channels-last"), "{err}");
    let err = block.forward(&randn(&[2, 4, 4, 6])).unwrap_err().to_string();
    assert!(err.contains("6 channels"), "{err}");
    let merging = PatchMerging::new(&PatchMergingConfig::new(8), zeros().pp("downsample")).unwrap();
    let err = merging.forward(&randn(&[2, 4, 4, 4])).unwrap_err().to_string();
    assert!(err.contains("downsample") && err.contains("4 channels"), "{err}");
    // An odd map is padded: 5x3 merges to 3x2.
    assert_eq!(merging.forward(&randn(&[1, 5, 3, 8])).unwrap().dims(), [1, 3, 2, 16]);
}

#[test]
fn the_channels_last_patch_embedding_is_the_grid_permuted() {
    let vb = VarBuilder::from_varmap(&candle_nn::VarMap::new(), DType::F32, &Device::Cpu);
    let nchw = PatchEmbed::new(
        &PatchEmbedConfig {
            flatten: false,
            ..PatchEmbedConfig::new(2, 3, 4)
        },
        vb.clone(),
    )
    .unwrap();
    let nhwc = PatchEmbed::new(
        &PatchEmbedConfig {
            flatten: false,
            channels_last: true,
            ..PatchEmbedConfig::new(2, 3, 4)
        },
        vb.clone(),
    )
    .unwrap();
    let x = randn(&[2, 3, 6, 4]);
    let grid = nchw.forward(&x).unwrap();
    let last = nhwc.forward(&x).unwrap();
    assert_eq!(last.dims(), [2, 3, 2, 4]);
    assert_eq!(values(&last), values(&grid.permute((0, 2, 3, 1)).unwrap()));
    // A norm needs channels last: the flattened sequence or the NHWC map.
    let normed = PatchEmbedConfig {
        flatten: false,
        channels_last: true,
        norm: Some(NormKind::LayerNorm),
        ..PatchEmbedConfig::new(2, 3, 4)
    };
    assert!(PatchEmbed::new(&normed, vb.clone()).is_ok());
    let err = PatchEmbed::new(
        &PatchEmbedConfig {
            channels_last: false,
            ..normed
        },
        vb,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("channels-last"), "{err}");
}
