"""Write the reference bundles under tests/fixtures/ from real torch modules.

Every bundle is tiny and built from a fixed seed on one CPU thread with
deterministic algorithms, so running this twice gives byte-identical files.

    python python/generate_fixtures.py            # writes tests/fixtures/
    python python/generate_fixtures.py --out DIR  # somewhere else
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_ref import capture  # noqa: E402
from fixture_script import run  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def randomize_(*tensors: torch.Tensor, scale: float = 1.0) -> None:
    """Overwrite parameters that init to ones/zeros, so a reimplementation that
    ignores them cannot pass."""
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn_like(t) * scale)


def spread(*shape: int) -> torch.Tensor:
    """Uniform values over [-6, 6]: both tails and the curved middle of an activation."""
    return torch.rand(*shape) * 12.0 - 6.0


def layer_norm(seed: int) -> tuple[nn.LayerNorm, torch.Tensor]:
    torch.manual_seed(seed)
    ln = nn.LayerNorm(16, eps=1e-5)
    randomize_(ln.weight, ln.bias)
    return ln, torch.randn(2, 5, 16)


LAYER_NORM_CONFIG = {"normalized_shape": [16], "eps": 1e-5, "elementwise_affine": True}


class SelfAttention(nn.Module):
    """Self-attention through nn.MultiheadAttention with one input, so the bundle
    holds input/0 only and the weights are the `attn.` state_dict keys."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, bias=True, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=True, average_attn_weights=False)


def build_all(out: Path) -> list[Path]:
    written = []

    def save(name, module, inputs, *, seed, config, grads=True, component=None):
        module.eval()
        path = capture(
            module, inputs, out / name,
            config=config, component=component, grads=grads, seed=seed, overwrite=True,
        )
        print(f"wrote {path} ({path.stat().st_size} bytes)")
        written.append(path)

    torch.manual_seed(1)
    save(
        "linear.safetensors", nn.Linear(16, 8), torch.randn(2, 5, 16),
        seed=1, config={"in_features": 16, "out_features": 8, "bias": True},
    )

    ln, x = layer_norm(2)
    save("layer_norm.safetensors", ln, x, seed=2, config=LAYER_NORM_CONFIG)

    torch.manual_seed(3)
    save(
        "softmax.safetensors", nn.Softmax(dim=-1), torch.randn(3, 4, 17) * 3.0,
        seed=3, config={"dim": -1},
    )

    torch.manual_seed(4)
    save("gelu_erf.safetensors", nn.GELU(), spread(4, 33), seed=4, config={"approximate": "none"})

    torch.manual_seed(5)
    save(
        "gelu_tanh.safetensors", nn.GELU(approximate="tanh"), spread(4, 33),
        seed=5, config={"approximate": "tanh"},
    )

    torch.manual_seed(6)
    attention = SelfAttention(16, 4)
    # in_proj_bias and out_proj.bias start at zero; give them values to check.
    randomize_(attention.attn.in_proj_bias, attention.attn.out_proj.bias, scale=0.1)
    save(
        "multihead_attention.safetensors", attention, torch.randn(2, 6, 16),
        seed=6,
        component="self_attention(torch.nn.MultiheadAttention)",
        config={
            "embed_dim": 16, "num_heads": 4, "bias": True, "batch_first": True,
            "query_key_value": "same input", "need_weights": True, "average_attn_weights": False,
        },
    )

    # Same weights and input as layer_norm.safetensors, run in half precision.
    ln, x = layer_norm(2)
    save(
        "layer_norm_f16.safetensors", ln.half(), x.half(),
        seed=2, config=LAYER_NORM_CONFIG, grads=False,
    )
    ln, x = layer_norm(2)
    save(
        "layer_norm_bf16.safetensors", ln.bfloat16(), x.bfloat16(),
        seed=2, config=LAYER_NORM_CONFIG, grads=False,
    )

    torch.manual_seed(9)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    save(
        "two_layer_mlp.safetensors", mlp, torch.randn(3, 8),
        seed=9, config={"sizes": [8, 16, 4], "activation": "gelu"},
    )
    return written


def main() -> None:
    run(build_all, __doc__, DEFAULT_OUT)


if __name__ == "__main__":
    main()
