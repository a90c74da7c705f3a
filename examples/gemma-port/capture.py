"""Capture HF `GemmaForCausalLM` at a tiny random configuration into
reference/gemma.safetensors: inputs, logits, every module's output, the
gradient of every parameter, and their float64 shadow.

    pip install ../../python torch transformers
    python capture.py
"""

from pathlib import Path

import torch
from transformers import GemmaConfig, GemmaForCausalLM

from replica_ref import capture

torch.manual_seed(0)
config = GemmaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=32,
                     pad_token_id=0, attn_implementation="eager")
model = GemmaForCausalLM(config).eval()
with torch.no_grad():  # random values everywhere, norms included: HF's init would hide swapped weights
    for p in model.parameters():
        p.copy_(torch.randn_like(p) * 0.2)
ids = torch.randint(1, config.vocab_size, (2, 6))
ids[1, 0] = config.pad_token_id  # the padding row's embedding gets no gradient
out = Path(__file__).parent / "reference" / "gemma.safetensors"
capture(model, (ids,), out, config=config.to_dict(), grads=True, kwargs={"use_cache": False},
        component="transformers.GemmaForCausalLM", overwrite=True)
print(f"wrote {out}")
