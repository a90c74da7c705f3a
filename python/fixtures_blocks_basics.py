"""Write the reference bundles of the basic blocks under tests/fixtures/blocks/
from the real torch, HF transformers and timm modules.

Covers Linear, Embedding, LayerNorm, RMSNorm, the activations, the MLPs (timm
`Mlp`, HF `GPT2MLP`), the GLU MLPs (timm `SwiGLU` / `GluMlp`, HF `LlamaMLP`),
timm `PatchEmbed`, `LayerScale`, `DropPath`, `nn.Dropout` and ViT's class token.
Every bundle is tiny and built from a fixed seed on one CPU thread with
deterministic algorithms, so running this twice gives byte-identical files.

    ~/venv-ref/bin/python python/fixtures_blocks_basics.py            # writes tests/fixtures/blocks/
    ~/venv-ref/bin/python python/fixtures_blocks_basics.py --out DIR  # somewhere else
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
import transformers
from timm.layers import DropPath, GluMlp, LayerScale, Mlp, PatchEmbed, SwiGLU, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import GPT2Config, LlamaConfig
from transformers.activations import NewGELUActivation, QuickGELUActivation, ReLUSquaredActivation
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_ref import capture  # noqa: E402
from fixture_script import run  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "blocks"
LIBRARIES = {"transformers": transformers.__version__, "timm": timm.__version__}
HALF_DTYPES = (torch.float16, torch.bfloat16)


def randomize_(*tensors: torch.Tensor, scale: float = 1.0, shift: float = 0.0) -> None:
    """Overwrite parameters that init to ones/zeros/constants, so a reimplementation
    that ignores them cannot pass."""
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn_like(t) * scale + shift)


def spread(*shape: int) -> torch.Tensor:
    """Uniform values over [-6, 6]: both tails and the curved middle of an activation."""
    return torch.rand(*shape) * 12.0 - 6.0


class ClassTokenRef(nn.Module):
    """ViT's class token, run through timm's own `VisionTransformer._pos_embed`
    with no position embedding and no register tokens: the attributes that method
    reads, and nothing else, so the state_dict is just `cls_token`."""

    def __init__(self, dim: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = None
        self.pos_embed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return VisionTransformer._pos_embed(self, x)


# Each builder makes the module and its input from a seed, so the half-precision
# bundles hold the same weights and inputs as the f32 one.


def layer_norm(seed: int):
    torch.manual_seed(seed)
    ln = nn.LayerNorm(16, eps=1e-5)
    randomize_(ln.weight, ln.bias)
    return ln, torch.randn(2, 5, 16) * 2.0 + 0.5


def rms_norm(seed: int):
    torch.manual_seed(seed)
    norm = LlamaRMSNorm(16, eps=1e-6)
    randomize_(norm.weight)
    return norm, torch.randn(2, 5, 16) * 2.0


def timm_mlp(seed: int):
    torch.manual_seed(seed)
    return Mlp(16, hidden_features=32, act_layer=nn.GELU), torch.randn(2, 5, 16)


def llama_mlp(seed: int):
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=24, hidden_act="silu", mlp_bias=False,
        num_attention_heads=4, num_key_value_heads=4,
    )
    return LlamaMLP(config), torch.randn(2, 5, 16)


def patch_embed(seed: int):
    torch.manual_seed(seed)
    return PatchEmbed(img_size=8, patch_size=4, in_chans=3, embed_dim=16), torch.randn(2, 3, 8, 8)


LAYER_NORM_CONFIG = {"normalized_shape": 16, "eps": 1e-5, "elementwise_affine": True}
RMS_NORM_CONFIG = {"hidden_size": 16, "rms_norm_eps": 1e-6}
MLP_CONFIG = {"in_features": 16, "hidden_features": 32, "act_layer": "gelu", "bias": True, "drop": 0.0}
LLAMA_MLP_CONFIG = {"hidden_size": 16, "intermediate_size": 24, "hidden_act": "silu", "mlp_bias": False}
PATCH_EMBED_CONFIG = {"img_size": 8, "patch_size": 4, "in_chans": 3, "embed_dim": 16, "bias": True}


def build_all(out: Path) -> list[Path]:
    written = []

    def save(name, module, inputs, *, seed, config, grads=True, component=None):
        module.eval()
        path = capture(
            module, inputs, out / name,
            config=config, component=component, grads=grads, seed=seed, overwrite=True,
            producer_extra=LIBRARIES,
        )
        print(f"wrote {path} ({path.stat().st_size} bytes)")
        written.append(path)

    def save_half(names, build, seed, config, component=None):
        """The f16 and bf16 bundles named `names`: the f32 bundle's weights and
        input, run in that dtype (forward only)."""
        for name, dtype in zip(names, HALF_DTYPES):
            module, x = build(seed)
            save(
                name, module.to(dtype), x.to(dtype),
                seed=seed, config=config, grads=False, component=component,
            )

    # --- Linear and Embedding -------------------------------------------------
    torch.manual_seed(100)
    save(
        "linear.safetensors", nn.Linear(12, 6), torch.randn(2, 3, 12),
        seed=100, config={"in_features": 12, "out_features": 6, "bias": True},
    )
    torch.manual_seed(101)
    save(
        "linear_no_bias.safetensors", nn.Linear(12, 6, bias=False), torch.randn(2, 3, 12),
        seed=101, config={"in_features": 12, "out_features": 6, "bias": False},
    )
    torch.manual_seed(102)
    save(
        "embedding.safetensors", nn.Embedding(20, 8), torch.randint(0, 20, (2, 5)),
        seed=102, config={"num_embeddings": 20, "embedding_dim": 8},
    )

    # --- Norms ------------------------------------------------------------------
    save("layer_norm.safetensors", *layer_norm(110), seed=110, config=LAYER_NORM_CONFIG)
    save_half(("layer_norm_f16.safetensors", "layer_norm_bf16.safetensors"), layer_norm, 110, LAYER_NORM_CONFIG)
    save("rms_norm.safetensors", *rms_norm(111), seed=111, config=RMS_NORM_CONFIG)
    save_half(("rms_norm_f16.safetensors", "rms_norm_bf16.safetensors"), rms_norm, 111, RMS_NORM_CONFIG)

    # --- Activations (config: the HF `hidden_act` name) --------------------------
    activations = [
        ("act_gelu.safetensors", nn.GELU(), "gelu"),
        ("act_gelu_tanh.safetensors", nn.GELU(approximate="tanh"), "gelu_pytorch_tanh"),
        ("act_gelu_new.safetensors", NewGELUActivation(), "gelu_new"),
        ("act_quick_gelu.safetensors", QuickGELUActivation(), "quick_gelu"),
        ("act_silu.safetensors", nn.SiLU(), "silu"),
        ("act_relu.safetensors", nn.ReLU(), "relu"),
        ("act_relu_squared.safetensors", ReLUSquaredActivation(), "relu2"),
    ]
    for i, (name, module, hidden_act) in enumerate(activations):
        seed = 120 + i
        torch.manual_seed(seed)
        save(name, module, spread(3, 24), seed=seed, config={"hidden_act": hidden_act})

    # --- MLPs -------------------------------------------------------------------
    save("mlp.safetensors", *timm_mlp(130), seed=130, config=MLP_CONFIG)
    save_half(("mlp_f16.safetensors", "mlp_bf16.safetensors"), timm_mlp, 130, MLP_CONFIG)

    torch.manual_seed(131)
    mlp = Mlp(16, hidden_features=32, out_features=12, act_layer=nn.GELU, norm_layer=nn.LayerNorm)
    randomize_(mlp.norm.weight, mlp.norm.bias)
    save(
        "mlp_norm.safetensors", mlp, torch.randn(2, 5, 16), seed=131,
        config={**MLP_CONFIG, "out_features": 12, "norm_layer": "layer_norm"},
    )

    torch.manual_seed(132)
    gpt2 = GPT2Config(n_embd=16, n_inner=32, activation_function="gelu_new", resid_pdrop=0.0)
    # HF Conv1D starts with zero biases; give them values to check.
    mlp = GPT2MLP(32, gpt2)
    randomize_(mlp.c_fc.bias, mlp.c_proj.bias, scale=0.1)
    save(
        "mlp_gpt2.safetensors", mlp, torch.randn(2, 5, 16), seed=132,
        config={"n_embd": 16, "n_inner": 32, "activation_function": "gelu_new", "resid_pdrop": 0.0},
    )

    # --- GLU MLPs (arXiv 2002.05202) ---------------------------------------------
    torch.manual_seed(140)
    save(
        "swiglu.safetensors", SwiGLU(16, hidden_features=24), torch.randn(2, 5, 16), seed=140,
        config={"in_features": 16, "hidden_features": 24, "act_layer": "silu", "bias": True},
    )
    # timm GluMlp: one fused fc1 of twice the gated width, split in halves.
    torch.manual_seed(141)
    save(
        "swiglu_packed.safetensors", SwiGLUPacked(16, hidden_features=48), torch.randn(2, 5, 16),
        seed=141, component="timm.layers.SwiGLUPacked",
        config={"in_features": 16, "hidden_features": 48, "act_layer": "silu", "gate_last": False},
    )
    torch.manual_seed(142)
    save(
        "geglu.safetensors", GluMlp(16, hidden_features=48, act_layer=nn.GELU), torch.randn(2, 5, 16),
        seed=142, config={"in_features": 16, "hidden_features": 48, "act_layer": "gelu", "gate_last": True},
    )
    torch.manual_seed(143)
    save(
        "reglu.safetensors", GluMlp(16, hidden_features=48, act_layer=nn.ReLU), torch.randn(2, 5, 16),
        seed=143, config={"in_features": 16, "hidden_features": 48, "act_layer": "relu", "gate_last": True},
    )
    save("llama_mlp.safetensors", *llama_mlp(144), seed=144, config=LLAMA_MLP_CONFIG)
    save_half(("llama_mlp_f16.safetensors", "llama_mlp_bf16.safetensors"), llama_mlp, 144, LLAMA_MLP_CONFIG)

    # --- Vision: patches and the class token -----------------------------------
    save("patch_embed.safetensors", *patch_embed(150), seed=150, config=PATCH_EMBED_CONFIG)
    save_half(("patch_embed_f16.safetensors", "patch_embed_bf16.safetensors"), patch_embed, 150, PATCH_EMBED_CONFIG)

    torch.manual_seed(151)
    # Rectangular patches on a rectangular image, and a norm layer.
    pe = PatchEmbed(img_size=(8, 12), patch_size=(2, 4), in_chans=2, embed_dim=8, norm_layer=nn.LayerNorm)
    randomize_(pe.norm.weight, pe.norm.bias)
    save(
        "patch_embed_norm.safetensors", pe, torch.randn(2, 2, 8, 12), seed=151,
        config={
            "img_size": [8, 12], "patch_size": [2, 4], "in_chans": 2, "embed_dim": 8,
            "bias": True, "norm_layer": "layer_norm",
        },
    )

    torch.manual_seed(152)
    cls = ClassTokenRef(16)
    randomize_(cls.cls_token)
    save(
        "class_token.safetensors", cls, torch.randn(2, 4, 16), seed=152,
        component="timm.models.vision_transformer.VisionTransformer._pos_embed (class token, no pos_embed)",
        config={"embed_dim": 16, "class_token": True, "pos_embed": "none"},
    )

    # --- Regularisers and LayerScale -------------------------------------------
    torch.manual_seed(160)
    ls = LayerScale(16, init_values=1e-5)
    randomize_(ls.gamma)
    save("layer_scale.safetensors", ls, torch.randn(2, 5, 16), seed=160, config={"dim": 16, "init_values": 1e-5})

    # In eval mode both are the identity; the bundles pin that down, gradients included.
    torch.manual_seed(161)
    save(
        "drop_path.safetensors", DropPath(0.25), torch.randn(4, 5, 16), seed=161,
        config={"drop_prob": 0.25, "scale_by_keep": True, "training": False},
    )
    torch.manual_seed(162)
    save(
        "dropout.safetensors", nn.Dropout(0.25), torch.randn(4, 5, 16), seed=162,
        config={"p": 0.25, "training": False},
    )
    return written


def main() -> None:
    run(build_all, __doc__, DEFAULT_OUT)


if __name__ == "__main__":
    main()
