"""Write the mixture-of-experts reference bundles under tests/fixtures/moe/ from
HF transformers' own modules: Mixtral's sparse MoE block (arXiv 2401.04088) and
DeepSeek-V2's MoE with shared experts (arXiv 2405.04434, DeepSeekMoE 2401.06066).

Every bundle is tiny and built from a fixed seed on one CPU thread with
deterministic algorithms, so running this twice gives byte-identical files.

    ~/venv-ref/bin/python python/fixtures_moe.py            # writes tests/fixtures/moe/
    ~/venv-ref/bin/python python/fixtures_moe.py --out DIR  # somewhere else

The experts run through `batched_mm`: it computes what `grouped_mm` (the
implementation a HF model picks by default) computes, each expert's output times
its float32 routing weight, summed over the top-k in float32 and rounded once
(bf16 bundles byte-identical, f32 within a few ulps), and unlike `grouped_mm` it
runs in float64, so the bundles get their float64 shadow. A block built on its
own would fall back to the eager loop, which sums the experts in the hidden
states' dtype instead.

The bundles:

- `moe_mixtral`: `MixtralSparseMoeBlock` (softmax over the router logits in
  float32, top-2, renormalised), f32 with the gradients of every parameter and
  of the input; its router (`gate`) records the tuple (logits, top-k weights,
  top-k indices) as HF returns it;
- `moe_mixtral_bf16`: the same block in bfloat16, forward only;
- `moe_deepseek_v2`: `DeepseekV2Moe` (router in float32, group-limited greedy
  top-k, no renormalisation, `routed_scaling_factor`, two shared experts), f32
  with gradients;
- `mla`, `mla_bf16`, `mla_yarn`: `DeepseekV2Attention` (eager, causal) with
  compressed queries and default RoPE (f32 with gradients; bf16), and with one
  `q_proj` and YaRN RoPE with `mscale_all_dim` over 20 positions, past the
  original 16 (f32 with gradients);
- `mixtral`: `MixtralForCausalLM` (2 layers, 4 experts, top-2, width 16) with
  `output_router_logits`, so its outputs are the logits and `aux_loss`, f32 with
  the gradients of every parameter; `mixtral_bf16`: the same in bfloat16, forward
  only; `mixtral_generate`: 20 greedy tokens from HF `generate`, with and without
  the KV cache;
- `deepseek_v2`: `DeepseekV2ForCausalLM` (2 layers: dense, then MoE with
  group-limited routing and a shared expert; MLA without query compression, YaRN
  RoPE), f32 with the gradients of every parameter; `deepseek_v2_bf16`: forward only;
  `deepseek_v2_generate`: 20 greedy tokens, with and without the KV cache.
  Its rotary module is taken out of the module tree before capture (complex
  output).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, MixtralConfig, MixtralForCausalLM
from transformers.models.deepseek_v2.modeling_deepseek_v2 import (DeepseekV2Attention, DeepseekV2Moe,
                                                                 DeepseekV2RotaryEmbedding)
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_script import run  # noqa: E402
from fixtures_models import generate  # noqa: E402
from replica_ref import capture  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "moe"
PRODUCER = {"transformers": transformers.__version__}


def randomize_(module: torch.nn.Module, std: float = 0.3) -> None:
    """Random values for every parameter (the router and experts start from empty tensors)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * std)


def mixtral_block_config() -> MixtralConfig:
    config = MixtralConfig(hidden_size=16, intermediate_size=12, num_local_experts=4, num_experts_per_tok=2)
    config._experts_implementation = "batched_mm"
    return config


def deepseek_block_config() -> DeepseekV2Config:
    config = DeepseekV2Config(
        hidden_size=16, num_attention_heads=2, num_key_value_heads=2, moe_intermediate_size=6, n_routed_experts=6, num_experts_per_tok=3,
        n_shared_experts=2, n_group=3, topk_group=2, topk_method="group_limited_greedy",
        routed_scaling_factor=1.5,
    )
    config._experts_implementation = "batched_mm"
    return config


MIXTRAL_MOE_FIELDS = ("hidden_size", "intermediate_size", "num_local_experts", "num_experts_per_tok", "hidden_act",
                      "router_jitter_noise")
DEEPSEEK_MOE_FIELDS = ("hidden_size", "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok",
                       "n_shared_experts", "n_group", "topk_group", "topk_method", "routed_scaling_factor",
                       "norm_topk_prob", "hidden_act", "mlp_bias")


def fields(config, names) -> dict:
    """The fields of a model config that its MoE block reads (the bundle of a block
    stores those, not the whole model's config)."""
    return {name: getattr(config, name) for name in names}


MLA_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "q_lora_rank", "kv_lora_rank",
              "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "attention_bias", "attention_dropout",
              "rope_parameters", "max_position_embeddings")


class MlaCausal(torch.nn.Module):
    """`DeepseekV2Attention` (eager) on positions 0..S with HF's causal mask, the
    rotary table made as `DeepseekV2Model.forward` makes it. The rotary module is
    held outside the module tree: it returns complex numbers, which a bundle does
    not store (its effect shows in every activation after it)."""

    def __init__(self, config: DeepseekV2Config):
        super().__init__()
        self.self_attn = DeepseekV2Attention(config, layer_idx=0)
        object.__setattr__(self, "rotary", DeepseekV2RotaryEmbedding(config))

    def forward(self, x):
        seq = x.shape[1]
        freqs_cis = self.rotary(x, torch.arange(seq)[None])
        mask = torch.full((seq, seq), torch.finfo(x.dtype).min, dtype=x.dtype).triu(1)[None, None]
        return self.self_attn(x, attention_mask=mask, position_embeddings=freqs_cis)[0]


def mla_config(q_lora_rank, rope_parameters) -> DeepseekV2Config:
    return DeepseekV2Config(
        hidden_size=16, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=q_lora_rank, kv_lora_rank=8,
        qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=6, max_position_embeddings=64,
        rope_parameters=rope_parameters, attn_implementation="eager",
    )


def deepseek_model_config() -> DeepseekV2Config:
    """DeepSeek-V2-Lite's layout in miniature: no query compression, YaRN RoPE with
    `mscale_all_dim`, the first layer dense, then group-limited routing over 4
    experts (top-2 of the best group's), scaled, beside one shared expert."""
    config = DeepseekV2Config(
        vocab_size=96, hidden_size=16, intermediate_size=32, moe_intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, q_lora_rank=None, kv_lora_rank=8, qk_nope_head_dim=4,
        qk_rope_head_dim=4, v_head_dim=6, first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2,
        n_shared_experts=1, n_group=2, topk_group=1, topk_method="group_limited_greedy", routed_scaling_factor=2.0,
        max_position_embeddings=64, rms_norm_eps=1e-6, attn_implementation="eager",
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 16, "beta_fast": 32.0, "beta_slow": 1.0,
                         "mscale": 0.707, "mscale_all_dim": 0.707},
    )
    config._experts_implementation = "batched_mm"
    return config


def hide_rotary(model) -> None:
    """Takes `model.rotary_emb` out of the module tree (it stays the attribute
    `forward` calls): it returns complex numbers, which a bundle does not store."""
    rotary = model.model.rotary_emb
    del model.model._modules["rotary_emb"]
    object.__setattr__(model.model, "rotary_emb", rotary)


def mixtral_model_config() -> MixtralConfig:
    config = MixtralConfig(
        vocab_size=96, hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
        rms_norm_eps=1e-6, output_router_logits=True, attn_implementation="eager",
    )
    config._experts_implementation = "batched_mm"
    return config


def build_all(out: Path) -> list[Path]:
    written = []

    def save(name, module, inputs, *, seed, config, grads=True):
        module.eval()
        # The wrapper by its module's name, whether this script is imported or run.
        component = "fixtures_moe.MlaCausal" if isinstance(module, MlaCausal) else None
        path = capture(
            module, inputs, out / name, config=config, component=component, grads=grads, seed=seed,
            overwrite=True, producer_extra=PRODUCER,
        )
        print(f"wrote {path} ({path.stat().st_size} bytes)")
        written.append(path)

    # ---- Mixtral's sparse MoE block
    torch.manual_seed(700)
    config = mixtral_block_config()
    block = MixtralSparseMoeBlock(config)
    randomize_(block)
    x = torch.randn(2, 4, 16)
    moe = fields(config, MIXTRAL_MOE_FIELDS)
    save("moe_mixtral.safetensors", block, x, seed=700, config=moe)
    save("moe_mixtral_bf16.safetensors", block.to(torch.bfloat16), x.to(torch.bfloat16), seed=701, config=moe,
         grads=False)

    # ---- DeepSeek-V2's MoE: group-limited routing, scaling, shared experts
    torch.manual_seed(710)
    config = deepseek_block_config()
    block = DeepseekV2Moe(config)
    randomize_(block)
    x = torch.randn(2, 4, 16)
    save("moe_deepseek_v2.safetensors", block, x, seed=710, config=fields(config, DEEPSEEK_MOE_FIELDS))
    # ---- DeepSeek-V2's multi-head latent attention: compressed queries, default RoPE
    # (f32 with gradients, bf16), and a plain q_proj with YaRN RoPE and mscale_all_dim
    # as DeepSeek-V2-Lite's (f32 with gradients)
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}
    for name, seed, q_lora_rank, rope in [("mla.safetensors", 730, 8, {"rope_type": "default", "rope_theta": 10000.0}),
                                          ("mla_yarn.safetensors", 731, None, yarn)]:
        torch.manual_seed(seed)
        config = mla_config(q_lora_rank, rope)
        module = MlaCausal(config)
        randomize_(module)
        x = torch.randn(2, 5, 16) if q_lora_rank else torch.randn(1, 20, 16)
        save(name, module, x, seed=seed, config=fields(config, MLA_FIELDS))
        if q_lora_rank:
            save("mla_bf16.safetensors", module.to(torch.bfloat16), x.to(torch.bfloat16), seed=seed,
                 config=fields(config, MLA_FIELDS), grads=False)

    # ---- MixtralForCausalLM: logits and the load-balancing loss (output_router_logits)
    torch.manual_seed(720)
    config = mixtral_model_config()
    model = MixtralForCausalLM(config).eval()
    assert model.config._experts_implementation == "batched_mm"
    randomize_(model, std=0.2)
    ids = torch.randint(0, config.vocab_size, (2, 7))
    for name, dtype, grads in [("mixtral.safetensors", torch.float32, True),
                               ("mixtral_bf16.safetensors", torch.bfloat16, False)]:
        path = capture(model.to(dtype), (ids,), out / name, config=config.to_dict(), grads=grads, seed=720,
                       kwargs={"use_cache": False}, component="transformers.MixtralForCausalLM",
                       producer_extra=PRODUCER, overwrite=True)
        print(f"wrote {path} ({path.stat().st_size} bytes)")
        written.append(path)

    # ---- Greedy generation, with and without the KV cache (a seed whose 20 tokens
    # wander and never reach the end-of-sequence token 2, where HF would stop)
    torch.manual_seed(722)
    model = MixtralForCausalLM(mixtral_model_config()).eval()
    randomize_(model, std=1.0)
    path = out / "mixtral_generate.safetensors"
    generate(model, model.config, path, "transformers.MixtralForCausalLM.generate")
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    written.append(path)
    # ---- DeepseekV2ForCausalLM: MLA, a dense first layer, DeepSeekMoE after
    torch.manual_seed(740)
    config = deepseek_model_config()
    model = DeepseekV2ForCausalLM(config).eval()
    hide_rotary(model)
    randomize_(model, std=0.3)
    ids = torch.randint(0, config.vocab_size, (2, 7))
    for name, dtype, grads in [("deepseek_v2.safetensors", torch.float32, True),
                               ("deepseek_v2_bf16.safetensors", torch.bfloat16, False)]:
        path = capture(model.to(dtype), (ids,), out / name, config=config.to_dict(), grads=grads, seed=740,
                       kwargs={"use_cache": False}, component="transformers.DeepseekV2ForCausalLM",
                       producer_extra=PRODUCER, overwrite=True)
        print(f"wrote {path} ({path.stat().st_size} bytes)")
        written.append(path)

    # ---- Greedy generation through the latent cache, with and without it (a seed
    # whose 20 tokens wander and never reach the end-of-sequence token 2)
    torch.manual_seed(741)
    model = DeepseekV2ForCausalLM(deepseek_model_config()).eval()
    hide_rotary(model)
    randomize_(model, std=1.0)
    path = out / "deepseek_v2_generate.safetensors"
    generate(model, model.config, path, "transformers.DeepseekV2ForCausalLM.generate")
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    written.append(path)
    return written


def main() -> None:
    run(build_all, __doc__, DEFAULT_OUT)


if __name__ == "__main__":
    main()
