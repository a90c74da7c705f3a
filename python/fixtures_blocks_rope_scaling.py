"""Write the RoPE scaling reference bundles under tests/fixtures/blocks/ from HF
transformers' own rotary embedding: `LlamaRotaryEmbedding` built from a
`LlamaConfig` whose `rope_parameters` name a scaled rope type (`linear`,
`dynamic`, `yarn`, `llama3`, `longrope`), so the frequencies and the
`attention_scaling` are those of `transformers.modeling_rope_utils`.

Every bundle is tiny and built from a fixed seed on one CPU thread with
deterministic algorithms, so running this twice gives byte-identical files.

    ~/venv-ref/bin/python python/fixtures_blocks_rope_scaling.py            # writes tests/fixtures/blocks/
    ~/venv-ref/bin/python python/fixtures_blocks_rope_scaling.py --out DIR  # somewhere else

The positions start past the original context (`original_max_position_embeddings`,
or `max_position_embeddings` for `dynamic`), where the scalings differ from plain
RoPE and from each other; `longrope` also once inside it (its short factors), and
`dynamic` once more after the module has run a longer sequence (its state). The
wrapper is `LlamaRope` of fixtures_blocks_attention.py: the module's `(cos, sin)`
are recorded as `rotary_emb:0` / `rotary_emb:1`, then `apply_rotary_pos_emb`
rotates the queries and keys.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_blocks_attention import DEFAULT_OUT, PRODUCER, LlamaRope, hf_config  # noqa: E402
from replica_ref import capture  # noqa: E402
from fixture_script import run  # noqa: E402

COMPONENT = "transformers.models.llama.modeling_llama.LlamaRotaryEmbedding + apply_rotary_pos_emb"

# One factor per frequency (head_dim 16: 8), as Phi-3's lists are.
SHORT_FACTOR = [1.0, 1.02, 1.05, 1.1, 1.2, 1.35, 1.5, 1.7]
LONG_FACTOR = [1.0, 1.3, 2.1, 3.4, 5.2, 7.9, 11.0, 16.5]

# file, rope_parameters, max_position_embeddings, first position, seed
CASES = [
    ("rope_linear.safetensors", {"rope_type": "linear", "factor": 4.0}, 256, 200, 300),
    ("rope_dynamic.safetensors", {"rope_type": "dynamic", "factor": 2.0}, 64, 90, 301),
    ("rope_yarn.safetensors", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}, 256, 200, 302),
    ("rope_llama3.safetensors", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 64}, 512, 400, 303),
    ("rope_longrope.safetensors", {"rope_type": "longrope", "short_factor": SHORT_FACTOR, "long_factor": LONG_FACTOR,
                       "original_max_position_embeddings": 64}, 256, 200, 304),
    ("rope_longrope_short.safetensors", {"rope_type": "longrope", "short_factor": SHORT_FACTOR, "long_factor": LONG_FACTOR,
                             "original_max_position_embeddings": 64}, 256, 10, 305),
]


def rope_config(parameters: dict, max_positions: int) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=max_positions,
        rope_parameters={**parameters, "rope_theta": 10000.0},
    )


def build_all(out: Path) -> list[Path]:
    written = []

    def save(name, config, offset, seed, dtype, grown_to=None):
        torch.manual_seed(seed)
        q, k = torch.randn(1, 2, 6, 16), torch.randn(1, 1, 6, 16)
        module = LlamaRope(config, offset=offset).eval()
        extra = {"offset": offset}
        if grown_to is not None:
            # Dynamic NTK's module state: a longer sequence seen before keeps its frequencies.
            module.rotary_emb(q, torch.arange(grown_to)[None])
            extra["grown_to"] = grown_to
        path = capture(
            module, (q.to(dtype), k.to(dtype)), out / name,
            config={**hf_config(config), **extra}, component=COMPONENT,
            grads=dtype == torch.float32, seed=seed, overwrite=True, producer_extra=PRODUCER,
        )
        print(f"wrote {path} ({path.stat().st_size} bytes)")
        written.append(path)

    for name, parameters, max_positions, offset, seed in CASES:
        save(name, rope_config(parameters, max_positions), offset, seed, torch.float32)
    # The same positions after the module has run a sequence of 120: HF keeps those frequencies.
    name, parameters, max_positions, offset, seed = CASES[1]
    save("rope_dynamic_grown.safetensors", rope_config(parameters, max_positions), offset, seed, torch.float32, grown_to=120)
    # bf16: the tables are scaled by yarn's attention factor in f32, then rounded.
    name, parameters, max_positions, offset, seed = CASES[2]
    save("rope_yarn_bf16.safetensors", rope_config(parameters, max_positions), offset, seed, torch.bfloat16)
    return written


def main() -> None:
    run(build_all, __doc__, DEFAULT_OUT)


if __name__ == "__main__":
    main()
