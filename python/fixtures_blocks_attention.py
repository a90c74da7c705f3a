"""Write the attention and position-encoding reference bundles under
tests/fixtures/blocks/ from the real torch, HF transformers and timm code.

Every bundle is tiny and built from a fixed seed on one CPU thread with
deterministic algorithms, so running this twice gives byte-identical files.

    ~/venv-ref/bin/python python/fixtures_blocks_attention.py            # writes tests/fixtures/blocks/
    ~/venv-ref/bin/python python/fixtures_blocks_attention.py --out DIR  # somewhere else

Several reference functions take arguments a bundle cannot hold (a `(cos, sin)`
tuple, a position offset, an options dict) or are plain functions rather than
modules. Each is called from a small `nn.Module` wrapper below whose inputs are
plain tensors; the wrapper's docstring says exactly what it adds. Wrappers only
route arguments: every number is computed by the library code they call, except
for the two paper formulas that no library ships as a module (the sinusoidal
table of arXiv 1706.03762 and ALiBi's `get_slopes` of arXiv 2108.12409), which
are transcribed line for line and say so.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

# Plain PyTorch attention everywhere: no hub kernels, no TF32.
os.environ.setdefault("USE_HUB_KERNELS", "0")

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from timm.layers import Attention as TimmAttention  # noqa: E402
from torch import nn  # noqa: E402
from transformers import Gemma2Config, GPTNeoXConfig, LlamaConfig  # noqa: E402
from transformers.models.bloom.modeling_bloom import build_alibi_tensor  # noqa: E402
from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention, Gemma2RotaryEmbedding  # noqa: E402
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding  # noqa: E402
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_apply_rotary_pos_emb  # noqa: E402
from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_apply_rotary_pos_emb  # noqa: E402
from transformers.models.gptj.modeling_gptj import create_sinusoidal_positions  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding  # noqa: E402
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply_rotary_pos_emb  # noqa: E402
from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_ref import capture  # noqa: E402
from fixture_script import run  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "blocks"
PRODUCER = {"transformers": transformers.__version__, "timm": timm.__version__}


def randomize_(*tensors: torch.Tensor, scale: float = 1.0) -> None:
    """Overwrite parameters that init to ones/zeros, so a reimplementation that
    ignores them cannot pass."""
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn_like(t) * scale)


def hf_config(config) -> dict:
    """The HF config as its config.json has it, minus bookkeeping fields."""
    skip = {"transformers_version", "architectures", "torch_dtype", "dtype", "id2label", "label2id"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}


# --------------------------------------------------------------------------- RoPE


class LlamaRope(nn.Module):
    """HF LLaMA's rotary embedding as LlamaModel applies it: `LlamaRotaryEmbedding`
    gives (cos, sin) for position ids `offset .. offset + S`, and
    `apply_rotary_pos_emb` (half-split, `rotate_half`) rotates q and k, both
    `[batch, heads, S, head_dim]`. `rotary_emb` is a submodule, so its (cos, sin)
    are recorded as `act/rotary_emb:0` and `act/rotary_emb:1`."""

    def __init__(self, config: LlamaConfig, offset: int):
        super().__init__()
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.offset = offset

    def forward(self, q, k):
        position_ids = torch.arange(self.offset, self.offset + q.shape[2])[None]
        cos, sin = self.rotary_emb(q, position_ids)
        return llama_apply_rotary_pos_emb(q, k, cos, sin)


class NeoxRope(nn.Module):
    """GPT-NeoX's partial rotary embedding: `GPTNeoXRotaryEmbedding` with
    `partial_rotary_factor` gives (cos, sin) over the rotated features only, and
    GPT-NeoX's `apply_rotary_pos_emb` rotates those (half-split) and passes the rest."""

    def __init__(self, config: GPTNeoXConfig, offset: int):
        super().__init__()
        self.rotary_emb = GPTNeoXRotaryEmbedding(config)
        self.offset = offset

    def forward(self, q, k):
        position_ids = torch.arange(self.offset, self.offset + q.shape[2])[None]
        cos, sin = self.rotary_emb(q, position_ids)
        return neox_apply_rotary_pos_emb(q, k, cos, sin)


class GptjRope(nn.Module):
    """GPT-J's interleaved rotary embedding on the first `rotary_dim` features,
    exactly as `GPTJAttention.forward` slices, rotates and concatenates them:
    `create_sinusoidal_positions` makes the table, `apply_rotary_pos_emb`
    (`rotate_every_two`) rotates. GPT-J works on `[batch, S, heads, head_dim]`;
    this wrapper takes and returns `[batch, heads, S, head_dim]` like the others."""

    def __init__(self, rotary_dim: int, max_positions: int, offset: int):
        super().__init__()
        self.rotary_dim = rotary_dim
        self.offset = offset
        self.register_buffer(
            "embed_positions", create_sinusoidal_positions(max_positions, rotary_dim), persistent=False
        )

    def rotate(self, x, sin, cos):
        x = x.transpose(1, 2)
        x_rot, x_pass = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        x_rot = gptj_apply_rotary_pos_emb(x_rot, sin, cos)
        return torch.cat([x_rot, x_pass], dim=-1).transpose(1, 2)

    def forward(self, q, k):
        position_ids = torch.arange(self.offset, self.offset + q.shape[2])[None]
        sincos = self.embed_positions[position_ids].to(q.dtype)  # as GPTJRotaryEmbedding.forward
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        return self.rotate(q, sin, cos), self.rotate(k, sin, cos)


# ------------------------------------------------------------ absolute positions


class PaperSinusoidal(nn.Module):
    """Transcription of the sinusoidal encoding of arXiv 1706.03762 section 3.5:
    PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)),
    evaluated in float64 (as XLM's and Marian's tables are) and stored as float32.
    `forward(x)` adds the rows for positions `offset .. offset + S` to `x`
    (`[batch, S, d]`), as the paper adds them to the token embeddings."""

    def __init__(self, dim: int, max_positions: int, offset: int):
        super().__init__()
        table = np.zeros((max_positions, dim))
        for pos in range(max_positions):
            for i in range(0, dim, 2):
                angle = pos / 10000 ** (i / dim)
                table[pos, i] = math.sin(angle)
                if i + 1 < dim:
                    table[pos, i + 1] = math.cos(angle)
        self.register_buffer("pe", torch.tensor(table, dtype=torch.float32))
        self.offset = offset

    def forward(self, x):
        return x + self.pe[self.offset : self.offset + x.shape[1]]


class Gpt2Positions(nn.Module):
    """GPT-2's learned absolute positions (`GPT2Model.forward`): `wpe` is the
    `[n_positions, n_embd]` table, position ids run `past_length .. past_length + S`
    with a leading batch dimension of 1, and the embeddings are added to the input."""

    def __init__(self, n_positions: int, n_embd: int, past_length: int):
        super().__init__()
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.past_length = past_length

    def forward(self, inputs_embeds):
        position_ids = torch.arange(self.past_length, self.past_length + inputs_embeds.shape[1])[None]
        return inputs_embeds + self.wpe(position_ids)


class MarianPositions(nn.Module):
    """HF `MarianSinusoidalPositionalEmbedding` (sin features first, then cos; not
    interleaved) for `seq_len` positions after `cache_length` cached ones. The
    module takes a shape and an int, so they are fixed here."""

    def __init__(self, num_positions: int, dim: int, batch: int, seq_len: int, cache_length: int):
        super().__init__()
        self.embed_positions = MarianSinusoidalPositionalEmbedding(num_positions, dim)
        with torch.no_grad():
            self.embed_positions.weight.copy_(self.embed_positions.create_weight())
        self.shape = torch.Size([batch, seq_len])
        self.cache_length = cache_length

    def forward(self, x):
        return x + self.embed_positions(self.shape, self.cache_length)


# ------------------------------------------------------------------------ ALiBi


def paper_get_slopes(n: int) -> list[float]:
    """`get_slopes` from the ALiBi reference code (ofirpress/attention_with_linear_biases,
    fairseq/models/transformer.py), transcribed line for line."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + paper_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


class BloomAlibiAttention(nn.Module):
    """The attention core of `BloomAttention.forward` on q, k, v `[batch, heads, S, d]`:
    the bias from HF `build_alibi_tensor` (slope * key position, which equals the
    paper's -slope * (i - j) up to a per-row constant that softmax cancels), scores
    `alibi + q k^T / sqrt(d)` via `baddbmm`, a causal mask filled with finfo.min,
    softmax in float32. Also returns the paper's `get_slopes(heads)` as a tensor."""

    def __init__(self, heads: int):
        super().__init__()
        self.heads = heads

    def forward(self, q, k, v):
        batch, heads, seq, dim = q.shape
        alibi = build_alibi_tensor(torch.ones(batch, seq, dtype=torch.long), heads, q.dtype)
        scores = alibi.baddbmm(
            batch1=q.reshape(batch * heads, seq, dim),
            batch2=k.reshape(batch * heads, seq, dim).transpose(1, 2),
            beta=1.0,
            alpha=1.0 / math.sqrt(dim),
        ).view(batch, heads, seq, seq)
        causal = torch.ones(seq, seq, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(causal, torch.finfo(scores.dtype).min)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        slopes = torch.tensor(paper_get_slopes(heads), dtype=torch.float32)
        return probs @ v, slopes


# ------------------------------------------------------------------------- SDPA


class Sdpa(nn.Module):
    """`F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **options)` with the
    keyword options fixed, so the bundle's inputs are q, k, v and the mask."""

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **self.options)


class SdpaHfPadding(nn.Module):
    """`F.scaled_dot_product_attention` under the boolean mask HF builds for sdpa
    from a 0/1 `attention_mask` `[batch, S]` in a causal model: key j is visible to
    query i when `attention_mask[b, j] == 1` and `j <= i`. With left padding the
    padded queries see no key at all; torch's sdpa returns zeros for those rows."""

    def forward(self, q, k, v, attention_mask):
        seq = q.shape[2]
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        mask = attention_mask.bool()[:, None, None, :] & causal
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# -------------------------------------------------------------------- attention


class LlamaSelfAttention(nn.Module):
    """`LlamaAttention` as `LlamaDecoderLayer` calls it in a causal prefill:
    `rotary_emb` (`LlamaRotaryEmbedding`) gives (cos, sin) for positions 0 .. S,
    no attention mask (the sdpa path then sets `is_causal`), and the attention
    weights (None under sdpa) are dropped so the output is one tensor."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.self_attn = LlamaAttention(config, layer_idx=0)

    def forward(self, hidden_states):
        position_ids = torch.arange(hidden_states.shape[1])[None]
        cos, sin = self.rotary_emb(hidden_states, position_ids)
        out, _ = self.self_attn(hidden_states, position_embeddings=(cos, sin), attention_mask=None)
        return out


class Gemma2SelfAttention(nn.Module):
    """`Gemma2Attention` (eager: logit softcapping needs it) as `Gemma2DecoderLayer`
    calls it in a causal prefill: `rotary_emb` gives (cos, sin) for positions 0 .. S,
    and the additive causal mask is built as HF's `create_causal_mask` does for the
    eager path (0 where visible, finfo.min elsewhere, shape `[1, 1, S, S]`); on a
    sliding layer as `create_sliding_window_causal_mask` does (HF's overlay, transcribed:
    key `k` is visible to query `q` when `k > q - sliding_window`)."""

    def __init__(self, config: Gemma2Config):
        super().__init__()
        self.rotary_emb = Gemma2RotaryEmbedding(config)
        self.self_attn = Gemma2Attention(config, layer_idx=0)

    def forward(self, hidden_states):
        seq = hidden_states.shape[1]
        position_ids = torch.arange(seq)[None]
        cos, sin = self.rotary_emb(hidden_states, position_ids)
        future = torch.ones(seq, seq, dtype=torch.bool).triu(1)
        window = self.self_attn.sliding_window
        if window is not None:
            q, k = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
            future |= ~(k > q - window)
        mask = torch.zeros(seq, seq, dtype=hidden_states.dtype).masked_fill(
            future, torch.finfo(hidden_states.dtype).min
        )[None, None]
        out, _ = self.self_attn(hidden_states, position_embeddings=(cos, sin), attention_mask=mask)
        return out


class CrossAttention(nn.Module):
    """`nn.MultiheadAttention` (batch first) as cross-attention: queries from `x`,
    keys and values from `context`, whose features (`kdim == vdim`) differ from
    `embed_dim`, so the projections are the separate `q_proj_weight`,
    `k_proj_weight`, `v_proj_weight` with one `in_proj_bias`. Weights not returned."""

    def __init__(self, embed_dim: int, num_heads: int, kdim: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, kdim=kdim, vdim=kdim, batch_first=True)

    def forward(self, x, context):
        out, _ = self.attn(x, context, context, need_weights=False)
        return out


def llama_config(kv_heads: int) -> LlamaConfig:
    config = LlamaConfig(
        hidden_size=16,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=4,
        intermediate_size=32,
        max_position_embeddings=32,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False,
    )
    config._attn_implementation = "sdpa"
    return config


def llama_attention(seed: int, kv_heads: int) -> tuple[LlamaSelfAttention, torch.Tensor]:
    torch.manual_seed(seed)
    module = LlamaSelfAttention(llama_config(kv_heads))
    return module, torch.randn(2, 6, 16)


def timm_attention(seed: int, qk_norm: bool) -> tuple[TimmAttention, torch.Tensor]:
    torch.manual_seed(seed)
    module = TimmAttention(16, num_heads=4, qkv_bias=True, qk_norm=qk_norm, norm_layer=nn.LayerNorm)
    randomize_(module.qkv.bias, module.proj.bias, scale=0.1)
    if qk_norm:
        randomize_(module.q_norm.weight, module.k_norm.weight, module.q_norm.bias, module.k_norm.bias, scale=0.5)
    return module, torch.randn(2, 5, 16)


TIMM_CONFIG = {
    "dim": 16,
    "num_heads": 4,
    "qkv_bias": True,
    "proj_bias": True,
    "norm_layer": "torch.nn.LayerNorm",
    "fused_attn": None,
}


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

    # ---- rotary embeddings
    torch.manual_seed(100)
    config = LlamaConfig(
        hidden_size=32, num_attention_heads=4, head_dim=8, max_position_embeddings=32,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    save(
        "rope_half_split.safetensors", LlamaRope(config, offset=3),
        (torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8)),
        seed=100, component="transformers.models.llama.modeling_llama.apply_rotary_pos_emb",
        config={**hf_config(config), "offset": 3},
    )

    # Far positions: the angles `position * inv_freq` only agree with HF's there when
    # inv_freq is computed as HF computes it (in float32).
    torch.manual_seed(103)
    config = LlamaConfig(
        hidden_size=256, num_attention_heads=4, head_dim=64, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    save(
        "rope_long_positions.safetensors", LlamaRope(config, offset=4000),
        (torch.randn(1, 2, 4, 64), torch.randn(1, 1, 4, 64)),
        seed=103, component="transformers.models.llama.modeling_llama.apply_rotary_pos_emb",
        config={**hf_config(config), "offset": 4000},
    )

    torch.manual_seed(101)
    config = GPTNeoXConfig(
        hidden_size=32, num_attention_heads=2, max_position_embeddings=32,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    )
    save(
        "rope_half_split_partial.safetensors", NeoxRope(config, offset=2),
        (torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)),
        seed=101, component="transformers.models.gpt_neox.modeling_gpt_neox.apply_rotary_pos_emb",
        config={**hf_config(config), "offset": 2},
    )

    torch.manual_seed(102)
    save(
        "rope_interleaved_partial.safetensors", GptjRope(rotary_dim=6, max_positions=32, offset=4),
        (torch.randn(2, 3, 5, 10), torch.randn(2, 3, 5, 10)),
        seed=102, component="transformers.models.gptj.modeling_gptj.apply_rotary_pos_emb",
        config={"head_dim": 10, "rotary_dim": 6, "max_position_embeddings": 32, "offset": 4},
    )

    # ---- absolute positions
    torch.manual_seed(110)
    save(
        "sinusoidal_paper.safetensors", PaperSinusoidal(dim=12, max_positions=40, offset=5),
        torch.randn(2, 7, 12),
        seed=110, component="transcription: arXiv 1706.03762 section 3.5",
        config={"dim": 12, "max_positions": 40, "offset": 5, "layout": "interleaved"},
    )

    torch.manual_seed(111)
    save(
        "sinusoidal_marian.safetensors", MarianPositions(32, 10, batch=2, seq_len=6, cache_length=3),
        torch.randn(2, 6, 10),
        seed=111, component="transformers.models.marian.modeling_marian.MarianSinusoidalPositionalEmbedding",
        config={"num_positions": 32, "embedding_dim": 10, "cache_length": 3, "layout": "concatenated"},
    )

    torch.manual_seed(112)
    save(
        "learned_position.safetensors", Gpt2Positions(n_positions=10, n_embd=8, past_length=3),
        torch.randn(2, 5, 8),
        seed=112, component="GPT-2 wpe (torch.nn.Embedding)",
        config={"n_positions": 10, "n_embd": 8, "past_length": 3},
    )

    # ---- ALiBi: 6 heads, not a power of two
    torch.manual_seed(120)
    save(
        "alibi.safetensors", BloomAlibiAttention(heads=6),
        (torch.randn(2, 6, 5, 4), torch.randn(2, 6, 5, 4), torch.randn(2, 6, 5, 4)),
        seed=120, component="transformers.models.bloom.modeling_bloom.build_alibi_tensor",
        config={"num_attention_heads": 6, "causal": True},
    )

    # ---- scaled dot-product attention
    sdpa = "torch.nn.functional.scaled_dot_product_attention"
    torch.manual_seed(130)
    save(
        "sdpa_causal.safetensors", Sdpa(is_causal=True),
        (torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)),
        seed=130, component=sdpa, config={"is_causal": True},
    )

    torch.manual_seed(131)
    save(
        "sdpa_causal_top_left.safetensors", Sdpa(is_causal=True),
        (torch.randn(1, 2, 3, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)),
        seed=131, component=sdpa,
        config={"is_causal": True, "note": "q_len < k_len: torch aligns the causal mask top-left"},
    )

    torch.manual_seed(132)
    lengths = [6, 4, 1]
    padding = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    save(
        "sdpa_padding.safetensors", Sdpa(),
        (torch.randn(3, 2, 6, 8), torch.randn(3, 2, 6, 8), torch.randn(3, 2, 6, 8), padding[:, None, None, :]),
        seed=132, component=sdpa, config={"lengths": lengths, "mask": "bool, True = attend"},
    )

    torch.manual_seed(133)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    save(
        "sdpa_left_padding_causal.safetensors", SdpaHfPadding(),
        (torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8), attention_mask),
        seed=133, component=sdpa,
        config={"attention_mask": attention_mask.tolist(), "causal": True},
    )

    torch.manual_seed(134)
    q, k, v = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 6)
    additive = torch.randn(2, 1, 4, 7) * 2.0
    additive[1, 0, 0, :3] = float("-inf")  # a few masked entries, no row fully masked
    save(
        "sdpa_additive.safetensors", Sdpa(scale=0.3),
        (q, k, v, additive),
        seed=134, component=sdpa, config={"scale": 0.3, "mask": "additive float"},
    )

    torch.manual_seed(135)
    save(
        "sdpa_gqa.safetensors", Sdpa(is_causal=True, enable_gqa=True),
        (torch.randn(2, 6, 5, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)),
        seed=135, component=sdpa, config={"is_causal": True, "enable_gqa": True},
    )

    # ---- attention modules
    for qk_norm, name, seed in [
        (False, "attention_timm.safetensors", 140),
        (True, "attention_timm_qk_norm.safetensors", 141),
    ]:
        module, x = timm_attention(seed, qk_norm)
        save(
            name, module, x,
            seed=seed, config={**TIMM_CONFIG, "qk_norm": qk_norm, "fused_attn": module.fused_attn},
        )
    # Same weights and input as attention_timm_qk_norm, run in half precision.
    module, x = timm_attention(141, True)
    config = {**TIMM_CONFIG, "qk_norm": True, "fused_attn": module.fused_attn}
    save("attention_timm_qk_norm_f16.safetensors", module.half(), x.half(), seed=141, config=config, grads=False)
    module, x = timm_attention(141, True)
    save(
        "attention_timm_qk_norm_bf16.safetensors", module.bfloat16(), x.bfloat16(),
        seed=141, config=config, grads=False,
    )

    module, x = llama_attention(150, kv_heads=2)
    save(
        "attention_gqa.safetensors", module, x,
        seed=150, component="transformers.models.llama.modeling_llama.LlamaAttention",
        config=hf_config(llama_config(2)),
    )
    module, x = llama_attention(150, kv_heads=2)
    save(
        "attention_gqa_f16.safetensors", module.half(), x.half(),
        seed=150, component="transformers.models.llama.modeling_llama.LlamaAttention",
        config=hf_config(llama_config(2)), grads=False,
    )
    module, x = llama_attention(150, kv_heads=2)
    save(
        "attention_gqa_bf16.safetensors", module.bfloat16(), x.bfloat16(),
        seed=150, component="transformers.models.llama.modeling_llama.LlamaAttention",
        config=hf_config(llama_config(2)), grads=False,
    )
    module, x = llama_attention(151, kv_heads=1)
    save(
        "attention_mqa.safetensors", module, x,
        seed=151, component="transformers.models.llama.modeling_llama.LlamaAttention",
        config=hf_config(llama_config(1)),
    )

    torch.manual_seed(160)
    module = CrossAttention(16, 4, kdim=12)
    randomize_(module.attn.in_proj_bias, module.attn.out_proj.bias, scale=0.1)
    save(
        "attention_cross.safetensors", module, (torch.randn(2, 4, 16), torch.randn(2, 7, 12)),
        seed=160, component="torch.nn.MultiheadAttention",
        config={"embed_dim": 16, "num_heads": 4, "kdim": 12, "vdim": 12, "batch_first": True, "bias": True},
    )

    torch.manual_seed(170)
    config = Gemma2Config(
        hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=32,
        max_position_embeddings=32, query_pre_attn_scalar=6, attn_logit_softcapping=1.5,
        layer_types=["full_attention"], num_hidden_layers=1,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    config._attn_implementation = "eager"
    module = Gemma2SelfAttention(config)
    save(
        "attention_softcap.safetensors", module, torch.randn(2, 6, 16) * 2.0,
        seed=170, component="transformers.models.gemma2.modeling_gemma2.Gemma2Attention",
        config=hf_config(config),
    )

    torch.manual_seed(171)
    config = Gemma2Config(
        hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=32,
        max_position_embeddings=32, query_pre_attn_scalar=6, attn_logit_softcapping=1.5,
        layer_types=["sliding_attention"], sliding_window=3, num_hidden_layers=1,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    config._attn_implementation = "eager"
    module = Gemma2SelfAttention(config)
    assert module.self_attn.sliding_window == 3
    save(
        "attention_sliding_window.safetensors", module, torch.randn(2, 7, 16) * 2.0,
        seed=171, component="transformers.models.gemma2.modeling_gemma2.Gemma2Attention",
        config=hf_config(config),
    )
    return written


def main() -> None:
    run(build_all, __doc__, DEFAULT_OUT)


if __name__ == "__main__":
    main()
