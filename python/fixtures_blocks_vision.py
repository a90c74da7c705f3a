"""Write the vision-block reference bundles under tests/fixtures/blocks/: Dynamic
Tanh (arXiv 2503.10622) from a transcription of the paper's official module, and
timm's ConvNeXt block (arXiv 2201.03545) and Global Response Normalization
(ConvNeXt V2, arXiv 2301.00808) from the real timm code.

Every bundle is tiny and built from a fixed seed on one CPU thread with
deterministic algorithms, so running this twice gives byte-identical files.

    ~/venv-ref/bin/python python/fixtures_blocks_vision.py            # writes tests/fixtures/blocks/
    ~/venv-ref/bin/python python/fixtures_blocks_vision.py --out DIR  # somewhere else

The bundles:

- `DynamicTanh` channels last (f32 with gradients, and bf16) and channels first
  on a feature map `[batch, channels, height, width]` (f32 with gradients);
- timm `ConvNeXtBlock` as ConvNeXt V1 builds it (LayerScale `gamma`, channels-last
  LayerNorm and `Mlp`), f32 with gradients and bf16;
- timm `ConvNeXtBlock(use_grn=True, ls_init_value=None)` as ConvNeXt V2 builds it
  (`GlobalResponseNormMlp`, no LayerScale), f32 with gradients and bf16;
- both again on timm's channels-first path (`conv_mlp=True`: `LayerNorm2d`, 1x1
  convolutions, GRN over dimensions 2 and 3), f32 with gradients;
- timm `GlobalResponseNorm` alone, channels last, f32 with gradients.

Parameters that the references initialise to constants (DyT's `alpha`, `weight`
and `bias`, LayerScale's `gamma`, GRN's zero `weight` and `bias`, the norms) are
drawn at random: a constant cannot catch a port that ignores it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from timm.layers import LayerNorm2d
from timm.layers.grn import GlobalResponseNorm
from timm.models.convnext import ConvNeXtBlock
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_ref import capture  # noqa: E402
from fixture_script import run  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "blocks"
PRODUCER = {"timm": timm.__version__}


# ---------------------------------------------------------------------------------
# Transcribed from facebookresearch/DynamicTanh, `dynamic_tanh.py` (the paper's
# official code; no pip package ships it), line for line: the module and the
# function that replaces every LayerNorm of a built timm model with it. Only the
# imports above are shared.
class DynamicTanh(nn.Module):
    def __init__(self, normalized_shape, channels_last, alpha_init_value=0.5):
        super().__init__()
        self.normalized_shape = normalized_shape
        self.alpha_init_value = alpha_init_value
        self.channels_last = channels_last

        self.alpha = nn.Parameter(torch.ones(1) * alpha_init_value)
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x):
        x = torch.tanh(self.alpha * x)
        if self.channels_last:
            x = x * self.weight + self.bias
        else:
            x = x * self.weight[:, None, None] + self.bias[:, None, None]
        return x

    def extra_repr(self):
        return f"normalized_shape={self.normalized_shape}, alpha_init_value={self.alpha_init_value}, channels_last={self.channels_last}"


def convert_ln_to_dyt(module):
    module_output = module
    if isinstance(module, nn.LayerNorm):
        module_output = DynamicTanh(module.normalized_shape, not isinstance(module, LayerNorm2d))
    for name, child in module.named_children():
        module_output.add_module(name, convert_ln_to_dyt(child))
    del module
    return module_output
# ---------------------------------------------------------------------------------


def randomize_dyt_(module: nn.Module) -> None:
    """Every DyT's `alpha` away from 0.5 (in [0.3, 1.5]: tanh's curve matters),
    `weight` away from ones and `bias` away from zeros."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, DynamicTanh):
                m.alpha.copy_(0.3 + 1.2 * torch.rand_like(m.alpha))
                m.weight.copy_(1.0 + 0.5 * torch.randn_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))


def randomize_all_(module: nn.Module, std: float = 0.3) -> None:
    """Every floating parameter random (norms, LayerScale and GRN included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * std)


def dyt_config(dim: int, channels_last: bool) -> dict:
    return {"normalized_shape": dim, "channels_last": channels_last, "alpha_init_value": 0.5}


def convnext_config(dim: int, *, use_grn: bool, ls_init_value) -> dict:
    """The arguments of `ConvNeXtBlock` (timm's defaults but for `in_chs`, `use_grn`, `ls_init_value`)."""
    return {
        "in_chs": dim, "out_chs": None, "kernel_size": 7, "stride": 1, "dilation": [1, 1], "mlp_ratio": 4,
        "conv_mlp": False, "conv_bias": True, "use_grn": use_grn, "ls_init_value": ls_init_value,
        "act_layer": "gelu", "norm_layer": None, "drop_path": 0.0,
    }


def convnext_block(seed: int, config: dict) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in config.items() if k != "dilation"}
    block = ConvNeXtBlock(dilation=tuple(config["dilation"]), **kwargs)
    randomize_all_(block)
    with torch.no_grad():
        # The depthwise 7x7 kernel and the first projection see many inputs: smaller
        # weights keep the GELU and GRN in their curved range.
        block.conv_dw.weight.mul_(0.5)
        block.norm.weight.add_(1.0)
    x = torch.randn(2, config["in_chs"], 4, 5)
    return block, x


def build_all(out: Path) -> list[Path]:
    written = []

    def save(name, module, inputs, *, seed, config, grads=True, component=None):
        module.eval()
        path = capture(
            module, inputs, out / name,
            config=config, component=component, grads=grads, seed=seed, overwrite=True,
            producer_extra=PRODUCER,
        )
        print(f"wrote {path} ({path.stat().st_size} bytes)")
        written.append(path)

    # ---- Dynamic Tanh (arXiv 2503.10622), transcribed above
    component = "DynamicTanh (facebookresearch/DynamicTanh, transcribed)"
    torch.manual_seed(700)
    dyt = DynamicTanh(16, channels_last=True)
    randomize_dyt_(dyt)
    x = 2.0 * torch.randn(2, 5, 16)
    save("dyt.safetensors", dyt, x, seed=700, config=dyt_config(16, True), component=component)
    save("dyt_bf16.safetensors", dyt.to(torch.bfloat16), x.to(torch.bfloat16), seed=700,
         config=dyt_config(16, True), grads=False, component=component)
    torch.manual_seed(701)
    dyt = DynamicTanh(6, channels_last=False)
    randomize_dyt_(dyt)
    x = 2.0 * torch.randn(2, 6, 3, 4)
    save("dyt_channels_first.safetensors", dyt, x, seed=701, config=dyt_config(6, False), component=component)

    # ---- timm ConvNeXtBlock, V1 (arXiv 2201.03545): LayerScale gamma, channels-last LayerNorm, Mlp
    component = "timm.models.convnext.ConvNeXtBlock"
    config = convnext_config(4, use_grn=False, ls_init_value=1e-6)
    block, x = convnext_block(710, config)
    save("convnext_block.safetensors", block, x, seed=710, config=config, component=component)
    save("convnext_block_bf16.safetensors", block.to(torch.bfloat16), x.to(torch.bfloat16), seed=710,
         config=config, grads=False, component=component)

    # ---- timm ConvNeXtBlock, V2 (arXiv 2301.00808): GlobalResponseNormMlp, no LayerScale
    config = convnext_config(4, use_grn=True, ls_init_value=None)
    block, x = convnext_block(720, config)
    save("convnext_v2_block.safetensors", block, x, seed=720, config=config, component=component)
    save("convnext_v2_block_bf16.safetensors", block.to(torch.bfloat16), x.to(torch.bfloat16), seed=720,
         config=config, grads=False, component=component)

    # ---- the channels-first path (conv_mlp=True): LayerNorm2d, 1x1 convolutions, GRN over dims (2, 3)
    config = dict(convnext_config(4, use_grn=False, ls_init_value=1e-6), conv_mlp=True)
    block, x = convnext_block(740, config)
    save("convnext_block_conv_mlp.safetensors", block, x, seed=740, config=config, component=component)
    config = dict(convnext_config(4, use_grn=True, ls_init_value=None), conv_mlp=True)
    block, x = convnext_block(741, config)
    save("convnext_v2_block_conv_mlp.safetensors", block, x, seed=741, config=config, component=component)

    # ---- timm GlobalResponseNorm alone, channels last ([batch, height, width, channels])
    torch.manual_seed(730)
    grn = GlobalResponseNorm(12, eps=1e-6, channels_last=True)
    randomize_all_(grn, std=0.5)
    x = torch.randn(2, 3, 4, 12)
    save("grn.safetensors", grn, x, seed=730, config={"dim": 12, "eps": 1e-6, "channels_last": True},
         component="timm.layers.grn.GlobalResponseNorm")
    return written


def main() -> None:
    run(build_all, __doc__, DEFAULT_OUT)


if __name__ == "__main__":
    main()
