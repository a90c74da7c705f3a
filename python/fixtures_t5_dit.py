"""Write the T5 and DiT fixtures from their real reference implementations:
HF transformers T5 (`T5Attention` with its relative position bias, `T5EncoderModel`)
and the adaLN-Zero `DiTBlock` of facebookresearch/DiT (transcribed below).

    python python/fixtures_t5_dit.py                # writes under tests/fixtures/
    python python/fixtures_t5_dit.py --out DIR      # or under DIR (blocks/ and models/)

Files written: blocks/t5_attention_bias.safetensors, blocks/t5_attention_bias_causal.safetensors,
blocks/t5_attention_bias_bf16.safetensors, blocks/t5_buckets.safetensors,
blocks/dit_block.safetensors, blocks/dit_block_bf16.safetensors,
models/t5_encoder.safetensors, models/t5_encoder_gated.safetensors,
models/t5_encoder_bf16.safetensors, models/t5_encoder_eager.safetensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
import transformers
from timm.models.vision_transformer import Attention, Mlp
from torch import nn
from transformers import T5Config, T5EncoderModel
from transformers.models.t5.modeling_t5 import T5Attention

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_script import run  # noqa: E402
from replica_ref import capture, write_bundle  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
PRODUCER = {"transformers": transformers.__version__, "timm": timm.__version__}


def randomize_(model: nn.Module, std: float = 0.3) -> None:
    """Random values for every floating parameter, norm weights and zero-initialised
    modulation layers included: a parameter left at a constant hides a port that ignores it."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * std)


# --------------------------------------------------------------------------------
# DiT: `modulate` and `DiTBlock` transcribed line for line from facebookresearch/DiT
# models.py (commit 00d70ac), which imports `Attention` and `Mlp` from timm's
# vision_transformer: those are the installed timm's own classes, not copies.
# Deviation: none in the forward pass; `initialize_weights` (a method of the whole
# `DiT`) zero-inits `adaLN_modulation[-1]`, which the fixture overwrites with random
# values so the modulation is not trivially zero.
# --------------------------------------------------------------------------------

def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """
    A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning.
    """
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, **block_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, **block_kwargs)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        approx_gelu = lambda: nn.GELU(approximate="tanh")  # noqa: E731
        self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden_dim, act_layer=approx_gelu, drop=0)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(),
            nn.Linear(hidden_size, 6 * hidden_size, bias=True)
        )

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


def t5_config(**overrides) -> T5Config:
    base = dict(vocab_size=32, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2,
                relative_attention_num_buckets=8, relative_attention_max_distance=6, dropout_rate=0.0,
                layer_norm_epsilon=1e-6, feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0)
    base.update(overrides)
    return T5Config(**base)


def buckets(out: Path) -> Path:
    """HF's `T5Attention._relative_position_bucket` itself on relative positions -200..200,
    bidirectional and causal, for several (num_buckets, max_distance): the bucket table
    a port must reproduce exactly (its f32 logarithm included)."""
    relative = torch.arange(-200, 201, dtype=torch.long)
    tensors = {"input/relative_position": relative.int().numpy()}
    settings = [(32, 128), (8, 12), (16, 20), (10, 50), (64, 256), (4, 3), (33, 100)]
    for num_buckets, max_distance in settings:
        for bidirectional in (True, False):
            table = T5Attention._relative_position_bucket(relative, bidirectional=bidirectional,
                                                          num_buckets=num_buckets, max_distance=max_distance)
            kind = "bidirectional" if bidirectional else "causal"
            tensors[f"output/{kind}_{num_buckets}_{max_distance}"] = table.int().numpy()  # small: i32
    metadata = {
        "format_version": 1, "component": "transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket",
        "config": {"settings": [list(s) for s in settings]},
        "producer": {"name": "torch", "version": torch.__version__, **PRODUCER},
        "dtype": "float32", "seed": None, "activations": [], "inputs": ["relative_position"],
        "outputs": [k.removeprefix("output/") for k in tensors if k.startswith("output/")],
        "shadow": {"skipped": "integer buckets, compared exactly"},
    }
    path = out / "blocks" / "t5_buckets.safetensors"
    return write_bundle(path, tensors, metadata, overwrite=True)


def build_all(out: Path) -> list[Path]:
    written = []
    (out / "blocks").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)

    def save(name, module, inputs, *, seed, config, grads=True, component=None, kwargs=None):
        module.eval()
        path = capture(module, inputs, out / name, config=config, component=component, grads=grads, seed=seed,
                       kwargs=kwargs, overwrite=True, producer_extra=PRODUCER)
        print(f"wrote {path} ({path.stat().st_size} bytes)")
        written.append(path)

    # The first layer's T5 self-attention, which owns the relative position bias:
    # encoder (bidirectional buckets) and decoder (causal buckets and the causal mask
    # that HF's sdpa path adds for `is_causal`). 9 tokens reach past max_distance 6.
    attention_config = {"d_model": 16, "d_kv": 8, "num_heads": 2, "relative_attention_num_buckets": 8,
                        "relative_attention_max_distance": 6}
    for name, is_decoder in (("t5_attention_bias", False), ("t5_attention_bias_causal", True)):
        torch.manual_seed(60 + is_decoder)
        config = t5_config(is_decoder=is_decoder, attn_implementation="sdpa")
        module = T5Attention(config, has_relative_attention_bias=True, layer_idx=0, is_causal=is_decoder)
        randomize_(module)
        x = torch.randn(2, 9, 16)
        save(f"blocks/{name}.safetensors", module, (x,), seed=60 + is_decoder,
             config={**attention_config, "is_decoder": is_decoder})
        if not is_decoder:
            save("blocks/t5_attention_bias_bf16.safetensors", module.to(torch.bfloat16), (x.bfloat16(),),
                 seed=60, grads=False, config={**attention_config, "is_decoder": False})
    written.append(buckets(out))
    print(f"wrote {written[-1]}")

    # T5EncoderModel: ReLU feed-forward (t5-small's) on a padded batch, gated GELU
    # (t5-v1_1's), and bf16.
    torch.manual_seed(62)
    small = dict(d_model=8, d_kv=4, d_ff=12)
    config = t5_config(**small, attn_implementation="sdpa")
    model = T5EncoderModel(config).eval()
    randomize_(model)
    ids = torch.randint(1, config.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids = ids * mask
    save("models/t5_encoder.safetensors", model, (ids,), seed=62, config=config.to_dict(),
         kwargs={"attention_mask": mask}, component="transformers.T5EncoderModel")
    save("models/t5_encoder_bf16.safetensors", model.to(torch.bfloat16), (ids,), seed=62, grads=False,
         config=config.to_dict(), kwargs={"attention_mask": mask}, component="transformers.T5EncoderModel")
    # HF's eager attention (the probabilities are returned and recorded too), on the
    # bf16 model's weights widened back to f32.
    config = t5_config(**small, attn_implementation="eager")
    eager = T5EncoderModel(config).eval()
    eager.load_state_dict(model.float().state_dict())
    save("models/t5_encoder_eager.safetensors", eager, (ids,), seed=62, grads=False, config=config.to_dict(),
         kwargs={"attention_mask": mask}, component="transformers.T5EncoderModel")
    torch.manual_seed(63)
    config = t5_config(**small, feed_forward_proj="gated-gelu", attn_implementation="sdpa")
    model = T5EncoderModel(config).eval()
    randomize_(model)
    ids = torch.randint(0, config.vocab_size, (2, 8))
    save("models/t5_encoder_gated.safetensors", model, (ids,), seed=63, config=config.to_dict(),
         component="transformers.T5EncoderModel")

    # DiTBlock with random (non-zero) modulation weights.
    torch.manual_seed(64)
    block = DiTBlock(12, num_heads=2, mlp_ratio=1.5)
    randomize_(block)
    x, c = torch.randn(2, 4, 12), torch.randn(2, 12)
    dit_config = {"hidden_size": 12, "num_heads": 2, "mlp_ratio": 1.5}
    component = "DiTBlock (facebookresearch/DiT models.py, transcribed)"
    save("blocks/dit_block.safetensors", block, (x, c), seed=64, config=dit_config, component=component)
    save("blocks/dit_block_bf16.safetensors", block.to(torch.bfloat16), (x.bfloat16(), c.bfloat16()), seed=64,
         grads=False, config=dit_config, component=component)
    return written


def main() -> None:
    run(build_all, __doc__, DEFAULT_OUT)


if __name__ == "__main__":
    main()
