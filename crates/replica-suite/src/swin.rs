//! The Swin Transformer (arXiv 2103.14030) against timm's
//! `timm.models.swin_transformer` (`python/fixtures_swin.py`): the block with
//! shifted windows (cyclic shift, -100 mask, padding to whole windows) and without
//! (a window clamped to the map), patch merging, and the whole model, whose stages
//! hold shifted, padded and clamped blocks and a patch merging.
//!
//! Each case builds the component from the fixture's weights through the strict
//! loader, runs it traced on the fixture's input and checks the output, every
//! activation (by name, in both directions) and, in f32, the gradients of the input
//! and of every parameter, the relative position bias tables included. The bf16
//! cases check the forward pass at bf16's tolerance.

use replica_blocks::papers::SWIN;
use replica_blocks::patch_merging::{PatchMerging, PatchMergingConfig};
use replica_blocks::swin_block::{SwinBlock, SwinBlockConfig};
use replica_check::{check_block, Bundle, Case, Parity, Report, Unmatched, WeightMap};
use replica_models::config::bundle_config;
use replica_models::{Error, LoadCheckpoint, Swin};

use crate::case;
use crate::models::ModelParity;

/// Every Swin case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("swin_block_shifted",      "timm.models.swin_transformer.SwinTransformerBlock(shift_size=1)",         Some(SWIN), "blocks/swin_block_shifted",      swin_block),
        case("swin_block_shifted_bf16", "timm.models.swin_transformer.SwinTransformerBlock(shift_size=1), bf16",   Some(SWIN), "blocks/swin_block_shifted_bf16", swin_block),
        case("swin_block",              "timm.models.swin_transformer.SwinTransformerBlock",                       Some(SWIN), "blocks/swin_block",              swin_block),
        case("swin_patch_merging",      "timm.models.swin_transformer.PatchMerging",                               Some(SWIN), "blocks/swin_patch_merging",      patch_merging),
        case("swin_timm",               "timm.models.swin_transformer.SwinTransformer",                            Some(SWIN), "models/swin",                    |b| swin_parity(b).map(|p| p.report)),
        case("swin_timm_bf16",          "timm.models.swin_transformer.SwinTransformer, bf16",                      Some(SWIN), "models/swin_bf16",               |b| swin_parity(b).map(|p| p.report)),
    ]
}

/// `SwinTransformerBlock`, configured from its constructor arguments.
fn swin_block(bundle: &Bundle) -> replica_check::Result<Report> {
    let config: SwinBlockConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| SwinBlock::new(&config, vb),
        |block, x| block.forward(x),
    )
}

/// `PatchMerging`, configured from its constructor arguments.
fn patch_merging(bundle: &Bundle) -> replica_check::Result<Report> {
    let config: PatchMergingConfig = bundle.config()?;
    check_block(
        bundle,
        WeightMap::new(),
        |vb| PatchMerging::new(&config, vb),
        |merging, x| merging.forward(x),
    )
}

/// timm `SwinTransformer`, built from its keyword arguments: the logits, every
/// activation and (in f32) the gradient of the images and of every parameter.
pub fn swin_parity(bundle: &Bundle) -> replica_check::Result<ModelParity> {
    let model_error = |err: Error| match err {
        Error::Check(err) => err,
        other => replica_check::Error::file(bundle.origin(), other.to_string()),
    };
    let mut run = Parity::new(bundle)?;
    let params = run.params().clone();
    let device = params
        .values()
        .next()
        .map_or(candle_core::Device::Cpu, |t| t.device().clone());
    let config = bundle_config(bundle).map_err(model_error)?;
    let model = Swin::from_tensors(&config, params, bundle.origin(), bundle.dtype()?, &device).map_err(model_error)?;
    let images = run.input("0")?;
    let (logits, trace) = run.traced(Unmatched::NONE, || model.forward(&images))?;
    run.check_outputs_and_gradients(&[("0", &logits)])?;
    Ok(ModelParity {
        report: run.finish(),
        trace,
    })
}
