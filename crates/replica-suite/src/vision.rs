//! Vision components against the real reference code: timm's `VisionTransformer`
//! with register tokens, patch-only position embeddings, no class token,
//! LayerScale, QK-norm and avg/avg-max pooling, and with Dynamic Tanh in every norm
//! slot (`python/fixtures_models.py`); Dynamic Tanh itself (transcribed from the
//! paper's official module), timm's `ConvNeXtBlock` (V1 and V2) and
//! `GlobalResponseNorm` (`python/fixtures_blocks_vision.py`).

use replica_blocks::convnext::{ConvNextBlock, ConvNextBlockConfig};
use replica_blocks::dyt::{DynamicTanh, DynamicTanhConfig};
use replica_blocks::grn::{GlobalResponseNorm, GlobalResponseNormConfig};
use replica_blocks::papers::{CAIT, CONVNEXT, CONVNEXT_V2, DYT, VIT_REGISTERS};
use replica_check::{check_block, Bundle, Case, Report, Result, WeightMap};

use crate::case;
use crate::models::vit_parity;

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
        case("convnext_block_conv_mlp", "timm.models.convnext.ConvNeXtBlock(conv_mlp=True, ls_init_value=1e-6)", Some(CONVNEXT), "blocks/convnext_block_conv_mlp", convnext_block),
        case("convnext_v2_block_conv_mlp", "timm.models.convnext.ConvNeXtBlock(conv_mlp=True, use_grn=True, ls_init_value=None)", Some(CONVNEXT_V2), "blocks/convnext_v2_block_conv_mlp", convnext_block),
        case("grn",                "timm.layers.grn.GlobalResponseNorm",                                                                                  Some(CONVNEXT_V2),   "blocks/grn",                grn),
        case("vit_reg_gap",        "timm VisionTransformer(class_token=False, reg_tokens=2, no_embed_class=True, global_pool='avg', init_values, qk_norm=True)", Some(VIT_REGISTERS), "models/vit_reg_gap",        vit),
        case("vit_reg_gap_bf16",   "timm VisionTransformer(class_token=False, reg_tokens=2, no_embed_class=True, global_pool='avg', init_values, qk_norm=True), bf16", Some(VIT_REGISTERS), "models/vit_reg_gap_bf16", vit),
        case("vit_cls_reg_avgmax", "timm VisionTransformer(reg_tokens=3, global_pool='avgmax', init_values)",                                                Some(CAIT),          "models/vit_cls_reg_avgmax", vit),
        case("vit_dyt",            "timm VisionTransformer(global_pool='avg', qk_norm=True) with convert_ln_to_dyt (facebookresearch/DynamicTanh)",           Some(DYT),           "models/vit_dyt",            vit),
        case("vit_dyt_bf16",       "timm VisionTransformer(global_pool='avg', qk_norm=True) with convert_ln_to_dyt (facebookresearch/DynamicTanh), bf16",           Some(DYT),           "models/vit_dyt_bf16",       vit),
    ]
}

fn vit(bundle: &Bundle) -> Result<Report> {
    vit_parity(bundle).map(|parity| parity.report).map_err(|err| match err {
        replica_models::Error::Check(err) => err,
        other => replica_check::Error::file(bundle.origin(), other.to_string()),
    })
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
