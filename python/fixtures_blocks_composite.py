"""Write the composite-block reference bundles under tests/fixtures/blocks/:
whole transformer layers from the real timm, HF transformers and torch code,
and differential attention (arXiv 2410.05258) from a transcription of the
paper's reference module.

Every bundle is tiny and built from a fixed seed on one CPU thread with
deterministic algorithms, so running this twice gives byte-identical files.

    ~/venv-ref/bin/python python/fixtures_blocks_composite.py            # writes tests/fixtures/blocks/
    ~/venv-ref/bin/python python/fixtures_blocks_composite.py --out DIR  # somewhere else

The layers:

- timm `Block` (pre-norm), once with LayerScale and QK-norm and once without
  LayerScale (its `ls1`/`ls2` and `drop_path1`/`drop_path2` are `nn.Identity`,
  whose hooks still fire);
- HF `GPT2Block` (pre-norm, `Conv1D` weights stored `[in, out]`), called directly:
  with no mask its sdpa attention is causal;
- HF `LlamaDecoderLayer` (RMSNorm, GQA, RoPE, SwiGLU) inside `LlamaLayer`, a
  wrapper that builds the layer's `position_embeddings` and causal mask the way
  `LlamaModel.forward` does, so the bundle's only input is the hidden states;
  once eager in f32 (the attention also returns its probabilities) and once
  with sdpa in bf16 (forward only);
- `torch.nn.TransformerEncoderLayer(norm_first=False)` (post-norm, fused
  `in_proj_weight`, the MLP's `linear1`/`linear2` directly on the layer);
- HF `GPTJBlock` (parallel attention and MLP from one shared LayerNorm,
  interleaved partial rotary) inside `GPTJLayer`, a wrapper like `LlamaLayer`;
- `MultiheadDiffAttn`, the differential attention of arXiv 2410.05258, with and
  without grouped-query heads (no library ships it: see the transcription below).

Wrappers only route arguments: every number is computed by the library code they
call, except differential attention, which is transcribed from the paper's
reference code and says so.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

# Plain PyTorch attention everywhere: no hub kernels, no TF32.
os.environ.setdefault("USE_HUB_KERNELS", "0")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from timm.models.vision_transformer import Block as TimmBlock  # noqa: E402
from torch import nn  # noqa: E402
from transformers import GPT2Config, GPTJConfig, LlamaConfig  # noqa: E402
from transformers.masking_utils import create_causal_mask  # noqa: E402
from transformers.models.gpt2.modeling_gpt2 import GPT2Block  # noqa: E402
from transformers.models.gptj.modeling_gptj import GPTJBlock, GPTJRotaryEmbedding  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_ref import capture  # noqa: E402
from fixture_script import run  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "blocks"
PRODUCER = {"transformers": transformers.__version__, "timm": timm.__version__}


def randomize_(*tensors: torch.Tensor, scale: float = 1.0, shift: float = 0.0) -> None:
    """Overwrite parameters that init to ones/zeros/constants, so a reimplementation
    that ignores them cannot pass."""
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn_like(t) * scale + shift)


def randomize_norms_(module: nn.Module) -> None:
    """Every LayerNorm / RMSNorm weight near 1 and bias near 0, but not exactly."""
    for sub in module.modules():
        if "Norm" in type(sub).__name__ and getattr(sub, "weight", None) is not None:
            randomize_(sub.weight, scale=0.2, shift=1.0)
            if getattr(sub, "bias", None) is not None:
                randomize_(sub.bias, scale=0.2)


def hf_config(config) -> dict:
    """The HF config as its config.json has it, minus bookkeeping fields."""
    skip = {"transformers_version", "architectures", "torch_dtype", "dtype", "id2label", "label2id"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}


# ------------------------------------------------------------------ HF wrappers


class LlamaLayer(nn.Module):
    """One `LlamaDecoderLayer` called as `LlamaModel.forward` calls it in a prefill:

    - `rotary_emb` (`LlamaRotaryEmbedding`) gives `position_embeddings = (cos, sin)`
      for position ids `0 .. S` (recorded as `act/rotary_emb:0` and `:1`);
    - the causal mask is HF's own `create_causal_mask` with no padding: an additive
      `[B, 1, S, S]` mask (0 / finfo.min) for eager attention, `None` for sdpa
      (whose kernel then applies `is_causal`);
    - the layer lives under `layer`, so its weights are `layer.*` and its
      activations `act/layer.*`.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.layer = LlamaDecoderLayer(config, layer_idx=0)

    def forward(self, hidden_states):
        position_ids = torch.arange(hidden_states.shape[1])[None]
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        mask = create_causal_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=None, cache=None,
            position_ids=position_ids,
        )
        return self.layer(
            hidden_states, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings
        )


class GPTJLayer(nn.Module):
    """One `GPTJBlock` called as `GPTJModel.forward` calls it: `rotary_emb`
    (`GPTJRotaryEmbedding`) gives `(sin, cos)` for positions `0 .. S` from its
    table, the mask is `create_causal_mask`'s (eager: additive), the block is `layer`."""

    def __init__(self, config: GPTJConfig):
        super().__init__()
        self.config = config
        self.rotary_emb = GPTJRotaryEmbedding(config)
        self.layer = GPTJBlock(config, layer_idx=0)

    def forward(self, hidden_states):
        position_ids = torch.arange(hidden_states.shape[1])[None]
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        mask = create_causal_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=None, cache=None,
            position_ids=position_ids,
        )
        return self.layer(
            hidden_states, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings
        )


# --------------------------------------------------- differential attention
#
# Ye et al., "Differential Transformer", arXiv 2410.05258. The reference is
# `Diff-Transformer/multihead_diffattn.py` in github.com/microsoft/unilm, which no
# pip package ships. `MultiheadDiffAttn` below is that file's class line for line
# (comments shortened); what it imports is transcribed just above it:
# - `RMSNorm`: the repo's `rms_norm.RMSNorm`, its fallback when apex's FusedRMSNorm
#   is missing (normalise in float32, cast back, times the weight);
# - `apply_rotary_emb`: the repo imports a Triton kernel (`kernel.rotary`, from
#   flash-attn); this is flash-attn's own pure-torch reference of the same function,
#   `apply_rotary_emb_torch`.
# `DiffAttentionCausal` only computes `rel_pos` (the model's rotary cos/sin tables,
# theta 10000, positions 0 .. S) so that the bundle's only input is `x`.
# Rotary embeddings are ON (interleaved, on each half-head of `head_dim` features),
# the mask is the module's own causal mask (`attn_mask=None`), and one of the two
# bundles uses grouped-query heads (`num_kv_heads`). `depth` is the 0-based layer
# index (the paper's l - 1), so lambda_init = 0.8 - 0.6 * exp(-0.3 * depth).


class RMSNorm(nn.Module):
    """Diff-Transformer's `rms_norm.RMSNorm` (the non-fused path)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if self.elementwise_affine:
            self.weight = nn.Parameter(torch.ones(dim))
        else:
            self.register_parameter("weight", None)

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        output = self._norm(x.float()).type_as(x)
        if self.weight is not None:
            output = output * self.weight
        return output


def rotate_half(x, interleaved=False):
    """flash_attn.layers.rotary.rotate_half."""
    if not interleaved:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)  # rearrange "... d two -> ... (d two)"


def apply_rotary_emb(x, cos, sin, interleaved=False):
    """flash_attn's `apply_rotary_emb_torch`: x `(batch, seqlen, nheads, headdim)`,
    cos/sin `(seqlen, rotary_dim / 2)`."""
    ro_dim = cos.shape[-1] * 2
    assert ro_dim <= x.shape[-1]
    if interleaved:  # repeat "... d -> ... 1 (d 2)"
        cos = cos.repeat_interleave(2, dim=-1)[..., None, :]
        sin = sin.repeat_interleave(2, dim=-1)[..., None, :]
    else:  # repeat "... d -> ... 1 (2 d)"
        cos = torch.cat((cos, cos), dim=-1)[..., None, :]
        sin = torch.cat((sin, sin), dim=-1)[..., None, :]
    return torch.cat(
        [x[..., :ro_dim] * cos + rotate_half(x[..., :ro_dim], interleaved) * sin, x[..., ro_dim:]],
        dim=-1,
    )


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """torch.repeat_interleave(x, dim=1, repeats=n_rep)"""
    bs, n_kv_heads, slen, head_dim = x.shape
    if n_rep == 1:
        return x
    return (
        x[:, :, None, :, :]
        .expand(bs, n_kv_heads, n_rep, slen, head_dim)
        .reshape(bs, n_kv_heads * n_rep, slen, head_dim)
    )


def lambda_init_fn(depth):
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


class MultiheadDiffAttn(nn.Module):
    def __init__(
        self,
        embed_dim,
        depth,  # current layer index
        num_heads,
        num_kv_heads=None,
    ):
        super().__init__()
        self.embed_dim = embed_dim

        # arg num_heads set to half of baseline Transformer's num_heads
        self.num_heads = num_heads

        # arg num_kv_heads set to half of baseline Transformer's num_kv_heads if use GQA
        # if use MHA, pass in num_kv_heads=None
        self.num_kv_heads = num_kv_heads if num_kv_heads is not None else num_heads
        self.n_rep = self.num_heads // self.num_kv_heads

        self.head_dim = embed_dim // num_heads // 2
        self.scaling = self.head_dim**-0.5

        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim // self.n_rep, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim // self.n_rep, bias=False)
        self.out_proj = nn.Linear(self.num_heads * 2 * self.head_dim, embed_dim, bias=False)

        # depth means current layer index
        self.lambda_init = lambda_init_fn(depth)
        self.lambda_q1 = nn.Parameter(torch.zeros(self.head_dim, dtype=torch.float32).normal_(mean=0, std=0.1))
        self.lambda_k1 = nn.Parameter(torch.zeros(self.head_dim, dtype=torch.float32).normal_(mean=0, std=0.1))
        self.lambda_q2 = nn.Parameter(torch.zeros(self.head_dim, dtype=torch.float32).normal_(mean=0, std=0.1))
        self.lambda_k2 = nn.Parameter(torch.zeros(self.head_dim, dtype=torch.float32).normal_(mean=0, std=0.1))

        self.subln = RMSNorm(2 * self.head_dim, eps=1e-5, elementwise_affine=True)

    def forward(self, x, rel_pos, attn_mask=None):
        bsz, tgt_len, embed_dim = x.size()
        src_len = tgt_len

        q = self.q_proj(x)
        k = self.k_proj(x)
        v = self.v_proj(x)

        q = q.view(bsz, tgt_len, 2 * self.num_heads, self.head_dim)
        k = k.view(bsz, src_len, 2 * self.num_kv_heads, self.head_dim)
        v = v.view(bsz, src_len, self.num_kv_heads, 2 * self.head_dim)

        q = apply_rotary_emb(q, *rel_pos, interleaved=True)
        k = apply_rotary_emb(k, *rel_pos, interleaved=True)

        offset = src_len - tgt_len
        q = q.transpose(1, 2)
        k = repeat_kv(k.transpose(1, 2), self.n_rep)
        v = repeat_kv(v.transpose(1, 2), self.n_rep)
        q *= self.scaling
        attn_weights = torch.matmul(q, k.transpose(-1, -2))
        if attn_mask is None:
            attn_mask = torch.triu(
                torch.zeros([tgt_len, src_len]).float().fill_(float("-inf")).type_as(attn_weights),
                1 + offset,
            )
        attn_weights = torch.nan_to_num(attn_weights)
        attn_weights += attn_mask
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).type_as(attn_weights)

        lambda_1 = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1, dim=-1).float()).type_as(q)
        lambda_2 = torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2, dim=-1).float()).type_as(q)
        lambda_full = lambda_1 - lambda_2 + self.lambda_init
        attn_weights = attn_weights.view(bsz, self.num_heads, 2, tgt_len, src_len)
        attn_weights = attn_weights[:, :, 0] - lambda_full * attn_weights[:, :, 1]

        attn = torch.matmul(attn_weights, v)
        attn = self.subln(attn)
        attn = attn * (1 - self.lambda_init)
        attn = attn.transpose(1, 2).reshape(bsz, tgt_len, self.num_heads * 2 * self.head_dim)

        attn = self.out_proj(attn)
        return attn


class DiffAttentionCausal(MultiheadDiffAttn):
    """`MultiheadDiffAttn` with its `rel_pos` computed here: the rotary cos/sin
    tables `(S, head_dim / 2)` for positions `0 .. S`, theta 10000, in float32.
    Everything else, the causal mask included, is the reference module's."""

    def __init__(self, embed_dim, depth, num_heads, num_kv_heads=None, rope_theta=10000.0):
        super().__init__(embed_dim, depth, num_heads, num_kv_heads)
        self.rope_theta = rope_theta

    def forward(self, x):
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        angles = torch.outer(torch.arange(x.shape[1], dtype=torch.float32), inv_freq)
        return super().forward(x, (angles.cos().to(x.dtype), angles.sin().to(x.dtype)))


# ------------------------------------------------------------------ builders


def randomize_lambdas_(module: MultiheadDiffAttn) -> None:
    """The reference draws the lambda vectors from N(0, 0.1^2), which leaves lambda
    within a few hundredths of lambda_init; wider draws (as after training) make a
    slip in eq. 2 visible. The subln weight moves off its init of ones."""
    randomize_(module.lambda_q1, module.lambda_k1, module.lambda_q2, module.lambda_k2, scale=0.5)
    randomize_(module.subln.weight, scale=0.2, shift=1.0)



def timm_block(seed: int, layer_scale: bool):
    torch.manual_seed(seed)
    block = TimmBlock(
        16, num_heads=4, mlp_ratio=2.0, qkv_bias=True, qk_norm=layer_scale,
        init_values=0.1 if layer_scale else None,
    )
    randomize_norms_(block)
    randomize_(block.attn.qkv.bias, block.attn.proj.bias, block.mlp.fc1.bias, block.mlp.fc2.bias, scale=0.1)
    if layer_scale:
        randomize_(block.ls1.gamma, block.ls2.gamma, scale=0.3)
    return block, torch.randn(2, 5, 16)


def timm_config(layer_scale: bool) -> dict:
    return {
        "dim": 16, "num_heads": 4, "mlp_ratio": 2.0, "qkv_bias": True, "qk_norm": layer_scale,
        "init_values": 0.1 if layer_scale else None, "drop_path": 0.0, "proj_drop": 0.0, "attn_drop": 0.0,
        "act_layer": "gelu", "norm_layer": "timm.layers.LayerNorm", "norm_eps": 1e-6,
    }


def llama_config(attn_implementation: str) -> LlamaConfig:
    config = LlamaConfig(
        hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=4, intermediate_size=24,
        hidden_act="silu", max_position_embeddings=32, rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, num_hidden_layers=1,
    )
    config._attn_implementation = attn_implementation
    return config


def llama_layer(seed: int, attn_implementation: str):
    torch.manual_seed(seed)
    module = LlamaLayer(llama_config(attn_implementation))
    randomize_norms_(module)
    return module, torch.randn(2, 6, 16)


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

    # ---- pre-norm: timm Block (arXiv 2010.11929, LayerScale 2103.17239)
    block, x = timm_block(200, layer_scale=True)
    save(
        "block_timm_layer_scale.safetensors", block, x,
        seed=200, component="timm.models.vision_transformer.Block", config=timm_config(True),
    )
    block, x = timm_block(201, layer_scale=False)
    save(
        "block_timm.safetensors", block, x,
        seed=201, component="timm.models.vision_transformer.Block", config=timm_config(False),
    )

    # ---- pre-norm: HF GPT2Block
    torch.manual_seed(210)
    config = GPT2Config(
        n_embd=16, n_head=4, n_inner=32, n_layer=1, n_positions=32, activation_function="gelu_new",
        resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0,
    )
    config._attn_implementation = "sdpa"
    block = GPT2Block(config, layer_idx=0)
    randomize_norms_(block)
    # HF Conv1D starts with zero biases; give them values to check.
    randomize_(block.attn.c_attn.bias, block.attn.c_proj.bias, block.mlp.c_fc.bias, block.mlp.c_proj.bias, scale=0.1)
    save(
        "block_gpt2.safetensors", block, torch.randn(2, 6, 16),
        seed=210, component="transformers.models.gpt2.modeling_gpt2.GPT2Block",
        config={**hf_config(config), "attn_implementation": "sdpa"},
    )

    # ---- pre-norm: HF LlamaDecoderLayer (RMSNorm, GQA, RoPE, SwiGLU)
    module, x = llama_layer(220, "eager")
    save(
        "block_llama.safetensors", module, x,
        seed=220, component="transformers.models.llama.modeling_llama.LlamaDecoderLayer (in LlamaLayer)",
        config={**hf_config(llama_config("eager")), "attn_implementation": "eager"},
    )
    # The same weights and input in bf16, with sdpa (whose CPU kernel the Rust attention follows).
    module, x = llama_layer(220, "sdpa")
    save(
        "block_llama_bf16.safetensors", module.bfloat16(), x.bfloat16(),
        seed=220, component="transformers.models.llama.modeling_llama.LlamaDecoderLayer (in LlamaLayer)",
        config={**hf_config(llama_config("sdpa")), "attn_implementation": "sdpa"}, grads=False,
    )

    # ---- post-norm: torch.nn.TransformerEncoderLayer (arXiv 1706.03762)
    torch.manual_seed(230)
    layer = nn.TransformerEncoderLayer(
        d_model=16, nhead=4, dim_feedforward=32, dropout=0.1, activation="gelu",
        layer_norm_eps=1e-5, batch_first=True, norm_first=False,
    )
    randomize_norms_(layer)
    randomize_(layer.self_attn.in_proj_bias, layer.self_attn.out_proj.bias, scale=0.1)
    save(
        "block_post_norm.safetensors", layer, torch.randn(2, 5, 16),
        seed=230, component="torch.nn.TransformerEncoderLayer",
        config={
            "d_model": 16, "nhead": 4, "dim_feedforward": 32, "dropout": 0.1, "activation": "gelu",
            "layer_norm_eps": 1e-5, "batch_first": True, "norm_first": False, "bias": True,
        },
    )

    # ---- parallel: HF GPTJBlock (attention and MLP from one LayerNorm)
    torch.manual_seed(240)
    config = GPTJConfig(
        n_embd=16, n_head=2, n_inner=32, n_layer=1, n_positions=32, rotary_dim=4,
        activation_function="gelu_new", resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0,
    )
    config._attn_implementation = "eager"
    module = GPTJLayer(config)
    randomize_norms_(module)
    save(
        "block_gptj.safetensors", module, torch.randn(2, 6, 16),
        seed=240, component="transformers.models.gptj.modeling_gptj.GPTJBlock (in GPTJLayer)",
        config={**hf_config(config), "attn_implementation": "eager"},
    )

    # ---- differential attention (arXiv 2410.05258)
    component = "MultiheadDiffAttn (transcription of microsoft/unilm Diff-Transformer/multihead_diffattn.py)"
    torch.manual_seed(250)
    module = DiffAttentionCausal(32, depth=2, num_heads=2)
    randomize_lambdas_(module)
    save(
        "diff_attention.safetensors", module, torch.randn(2, 6, 32),
        seed=250, component=component,
        config={"embed_dim": 32, "num_heads": 2, "num_kv_heads": None, "depth": 2, "rope_theta": 10000.0,
                "causal": True, "subln_eps": 1e-5},
    )
    torch.manual_seed(251)
    module = DiffAttentionCausal(32, depth=5, num_heads=4, num_kv_heads=2)
    randomize_lambdas_(module)
    save(
        "diff_attention_gqa.safetensors", module, torch.randn(2, 5, 32),
        seed=251, component=component,
        config={"embed_dim": 32, "num_heads": 4, "num_kv_heads": 2, "depth": 5, "rope_theta": 10000.0,
                "causal": True, "subln_eps": 1e-5},
    )
    return written


def main() -> None:
    run(build_all, __doc__, DEFAULT_OUT)


if __name__ == "__main__":
    main()
