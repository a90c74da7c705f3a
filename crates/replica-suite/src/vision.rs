//! Vision components against the real reference code (`python/fixtures_blocks_vision.py`):
//! Dynamic Tanh (transcribed from the paper's official module), timm's
//! `ConvNeXtBlock` (V1 and V2) and `GlobalResponseNorm`.

use replica_blocks::convnext::{ConvNextBlock, ConvNextBlockConfig};
use replica_blocks::dyt::{DynamicTanh, DynamicTanhConfig};
use replica_blocks::grn::{GlobalResponseNorm, GlobalResponseNormConfig};
use replica_blocks::papers::{CONVNEXT, CONVNEXT_V2, DYT};
use replica_check::{check_block, Bundle, Case, Report, Result, WeightMap};

use crate::case;

/// Every vision case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("dyt",                "DynamicTanh (facebookresearch/DynamicTanh, transcribed)",                                                             Some(DYT),           "blocks/dyt",                dyt),
        case("dyt_bf16",           "DynamicTanh (facebookresearch/DynamicTanh, transcribed), bf16",                                                       Some(DYT),           "blocks/dyt_bf16",           dyt),
        case("dyt_channels_first", "DynamicTanh(channels_last=False) (facebookresearch/DynamicTanh, transcribed)",                                        Some(DYT),           "blocks/dyt_channels_first", dyt),
        case("convnext_block",     "timm.models.convnext.ConvNeXtBlock(ls_init_value=1e-6)",                                                              Some(CONVNEXT),      "blocks/convnext_block",     convnext_block),
        case("convnext_block_bf16", "timm.models.convnext.ConvNeXtBlock(ls_init_value=1e-6), bf16",                                                       Some(CONVNEXT),      "blocks/convnext_block_bf16", convnext_block),
        case("convnext_v2_block",  "timm.models.convnext.ConvNeXtBlock(use_grn=True, ls_init_value=None)",                                                Some(CONVNEXT_V2),   "blocks/convnext_v2_block",  convnext_block),
        case("convnext_v2_block_bf16", "timm.models.convnext.ConvNeXtBlock(use_grn=True, ls_init_value=None), bf16",                                      Some(CONVNEXT_V2),   "blocks/convnext_v2_block_bf16", convnext_block),
        case("grn",                "timm.layers.grn.GlobalResponseNorm",                                                                                  Some(CONVNEXT_V2),   "blocks/grn",                grn),
    ]
}

fn dyt(bundle: &Bundle) -> Result<Report> {
    let config: DynamicTanhConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| DynamicTanh::new(&config, vb),
        DynamicTanh::forward,
    )
}

fn convnext_block(bundle: &Bundle) -> Result<Report> {
    let config: ConvNextBlockConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| ConvNextBlock::new(&config, vb),
        ConvNextBlock::forward,
    )
}

fn grn(bundle: &Bundle) -> Result<Report> {
    let config: GlobalResponseNormConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| GlobalResponseNorm::new(&config, vb),
        GlobalResponseNorm::forward,
    )
}
