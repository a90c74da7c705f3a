"""Write the Swin Transformer reference bundles (arXiv 2103.14030) from the real
timm code (`timm.models.swin_transformer`): blocks under tests/fixtures/blocks/,
the model under tests/fixtures/models/.

Every bundle is tiny and built from a fixed seed on one CPU thread with
deterministic algorithms, so running this twice gives byte-identical files.

    ~/venv-ref/bin/python python/fixtures_swin.py            # writes tests/fixtures/{blocks,models}/
    ~/venv-ref/bin/python python/fixtures_swin.py --out DIR  # DIR/blocks/, DIR/models/

The bundles:

- `SwinTransformerBlock` with shifted windows on a 5x4 map (window 3, shift 1):
  the cyclic shift, the -100 attention mask and the padding of a map the window
  does not divide (the mask is built on the padded 6x6 map, as timm builds it);
  f32 with gradients, and the same weights and input in bf16 (forward only);
- `SwinTransformerBlock` without shift on a 2x5 map asking for window 3: timm
  clamps the window to the map's height (2x3 windows, no shift) and pads the width;
- `PatchMerging` on a 3x4 map (the odd height is padded), the 2x2 neighbours
  concatenated in timm's order;
- `SwinTransformer` on 8x12 images (patch 2, window 3, depths (2, 2), heads
  (1, 2), width 4): stage 0 has a shifted block on a padded 4x6 map, stage 1 a
  patch merging and windows clamped to its 2x3 map; f32 with gradients, and bf16.

timm's `WindowAttention` takes its unfused path (`use_fused_attn(experimental=True)`
is off unless TIMM_FUSED_ATTN=2): q scaled, q kᵀ, plus the relative position
bias, plus the mask, `nn.Softmax`. Every parameter, norms and the relative
position bias tables included, is drawn at random so none can be ignored.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.pop("TIMM_FUSED_ATTN", None)  # the reference's default attention path

import timm  # noqa: E402
import torch  # noqa: E402
from timm.models.swin_transformer import PatchMerging, SwinTransformer, SwinTransformerBlock  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_ref import capture  # noqa: E402
from fixture_script import run  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
PRODUCER = {"timm": timm.__version__}


def randomize_(module: torch.nn.Module, std: float = 0.3) -> None:
    """Random values for every parameter (timm initialises norms to ones/zeros and
    the bias tables near zero, which would hide a swapped or ignored parameter)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * std)


def block_config(dim, input_resolution, num_heads, window_size, shift_size, mlp_ratio):
    return {
        "dim": dim, "input_resolution": list(input_resolution), "num_heads": num_heads, "head_dim": None,
        "window_size": window_size, "shift_size": shift_size, "always_partition": False, "dynamic_mask": False,
        "mlp_ratio": mlp_ratio, "qkv_bias": True, "proj_drop": 0.0, "attn_drop": 0.0, "drop_path": 0.0,
    }


def swin_block(seed: int, batch: int, resolution, window_size: int, shift_size: int):
    torch.manual_seed(seed)
    config = block_config(8, resolution, 2, window_size, shift_size, 2.0)
    block = SwinTransformerBlock(**{k: (tuple(v) if k == "input_resolution" else v) for k, v in config.items()})
    randomize_(block)
    return block.eval(), torch.randn(batch, *resolution, 8), config


MODEL_CONFIG = {
    "img_size": [8, 12], "patch_size": 2, "in_chans": 3, "num_classes": 5, "global_pool": "avg",
    "embed_dim": 4, "depths": [2, 2], "num_heads": [1, 2], "window_size": 3, "mlp_ratio": 2.0,
    "qkv_bias": True, "drop_path_rate": 0.1,
}


def build_all(out: Path) -> list[Path]:
    written = []
    (out / "blocks").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)

    # The component is the name capture() gives the class itself (timm.models.SwinTransformer for the model).
    def save(folder, name, module, inputs, *, seed, config, grads=True):
        path = capture(module.eval(), inputs, out / folder / name, config=config, grads=grads,
                       seed=seed, overwrite=True, producer_extra=PRODUCER)
        print(f"wrote {path} ({path.stat().st_size} bytes)")
        written.append(path)

    block, x, config = swin_block(300, 1, (5, 4), 3, 1)
    save("blocks", "swin_block_shifted.safetensors", block, x, seed=300, config=config)
    save("blocks", "swin_block_shifted_bf16.safetensors", block.bfloat16(), x.bfloat16(), seed=300, config=config, grads=False)

    block, x, config = swin_block(301, 2, (2, 5), 3, 0)
    save("blocks", "swin_block.safetensors", block, x, seed=301, config=config)

    torch.manual_seed(302)
    merging = PatchMerging(dim=8)
    randomize_(merging)
    save("blocks", "swin_patch_merging.safetensors", merging, torch.randn(2, 3, 4, 8), seed=302,
         config={"dim": 8, "out_dim": None})

    torch.manual_seed(310)
    config = dict(MODEL_CONFIG)
    model = SwinTransformer(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()})
    randomize_(model)
    images = torch.randn(1, 3, 8, 12)
    save("models", "swin.safetensors", model, images, seed=310, config=config)
    save("models", "swin_bf16.safetensors", model.bfloat16(), images.bfloat16(), seed=310, config=config,
         grads=False)
    return written


def main() -> None:
    run(build_all, __doc__, DEFAULT_OUT)


if __name__ == "__main__":
    main()
