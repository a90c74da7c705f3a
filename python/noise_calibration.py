"""Measure the calibrated verdict: planted bugs that must fail, equivalent
formulations that must pass, each under both rules, with the first divergent
module `replica check --trace` names.

A planted bug is a reference that computes something other than what its bundle's
config tells the port to compute (GELU erf captured, `gelu_new` configured; an
epsilon ten times larger than configured; ...), so the correct Rust port plays a
port with that bug. Every model uses HF's own initialisation (std 0.02), where
most bugs sit far below `atol`.

    ~/venv-ref/bin/python python/noise_calibration.py                       # table on stdout
    ~/venv-ref/bin/python python/noise_calibration.py --seeds 0 1 2 --replica target/debug/replica
    ~/venv-ref/bin/python python/noise_calibration.py --write-fixtures tests/fixtures/planted

Bundles go to a temporary directory; nothing in the repository changes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_ref import capture  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = {"transformers": transformers.__version__}


def gpt2(seed: int, *, act="gelu_new", port_act=None, eps=1e-5, port_eps=None, attn="eager", width=48):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=96, n_positions=32, n_embd=width, n_layer=2, n_head=4, activation_function=act,
                        layer_norm_epsilon=eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None, attn_implementation=attn)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 96, (2, 7))
    told = config.to_dict() | {"activation_function": port_act or act, "layer_norm_epsilon": port_eps or eps}
    return model, (ids,), {"use_cache": False}, told, "gpt2_lm_head_model", "transformers.GPT2LMHeadModel"


def llama(seed: int, *, eps=1e-6, port_eps=None, attn="eager", wrong_scale=False, bf16_rope=False):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_theta=10000.0, rms_norm_eps=eps, tie_word_embeddings=False, attn_implementation=attn)
    model = LlamaForCausalLM(config).eval()
    if wrong_scale:  # 1/sqrt(hidden / kv_heads) instead of 1/sqrt(head_dim)
        for layer in model.model.layers:
            layer.self_attn.scaling = (config.hidden_size // config.num_key_value_heads) ** -0.5
    if bf16_rope:  # the rotary table rounded to bfloat16 instead of kept in float32
        rotary = model.model.rotary_emb
        original = rotary.forward

        def rounded(x, position_ids):
            cos, sin = original(x, position_ids)
            return cos.to(torch.bfloat16).to(cos.dtype), sin.to(torch.bfloat16).to(sin.dtype)

        rotary.forward = rounded
    ids = torch.randint(0, 96, (2, 7))
    told = config.to_dict() | {"rms_norm_eps": port_eps or eps}
    return model, (ids,), {"use_cache": False}, told, "llama_causal_lm", "transformers.LlamaForCausalLM"


def bert(seed: int, *, act="gelu", port_act=None, attn="eager", width=32):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=96, hidden_size=width, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=2 * width, max_position_embeddings=32, type_vocab_size=2, hidden_act=act,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation=attn)
    model = BertModel(config).eval()
    ids = torch.randint(1, 96, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    kwargs = {"attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    told = config.to_dict() | {"hidden_act": port_act or act}
    return model, (ids,), kwargs, told, "bert_model", "transformers.BertModel"


# (label, kind, builder, where the bug is): kind "bug" must fail, "same" must pass.
EXPERIMENTS = [
    ("GPT-2: GELU erf captured, tanh (gelu_new) ported", "bug",
     lambda s: gpt2(s, act="gelu", port_act="gelu_new"), "transformer.h.0.mlp"),
    ("BERT: GELU erf captured, tanh (gelu_new) ported", "bug",
     lambda s: bert(s, act="gelu", port_act="gelu_new"), "encoder.layer.0.intermediate"),
    ("GPT-2: LayerNorm eps 1e-4 captured, 1e-5 ported", "bug",
     lambda s: gpt2(s, eps=1e-4, port_eps=1e-5), "transformer.h.0.ln_1"),
    ("LLaMA: RMSNorm eps 1e-5 captured, 1e-6 ported", "bug",
     lambda s: llama(s, eps=1e-5, port_eps=1e-6), "model.layers.0.input_layernorm"),
    ("LLaMA: attention scale from hidden/kv_heads, not head_dim", "bug",
     lambda s: llama(s, wrong_scale=True), "model.layers.0.self_attn"),
    ("LLaMA: RoPE table rounded to bf16", "bug",
     lambda s: llama(s, bf16_rope=True), "model.rotary_emb"),
    ("GPT-2: gelu_pytorch_tanh captured, gelu_new ported", "same",
     lambda s: gpt2(s, act="gelu_pytorch_tanh", port_act="gelu_new"), None),
    ("GPT-2: sdpa attention captured, eager ported", "same", lambda s: gpt2(s, attn="sdpa"), None),
    ("LLaMA: sdpa attention captured, eager ported", "same", lambda s: llama(s, attn="sdpa"), None),
    ("BERT: sdpa attention captured, eager ported", "same", lambda s: bert(s, attn="sdpa"), None),
    ("GPT-2: as captured", "same", lambda s: gpt2(s), None),
    ("LLaMA: as captured", "same", lambda s: llama(s), None),
    ("BERT: as captured", "same", lambda s: bert(s), None),
]


def check(replica: Path, component: str, bundle: Path, rule: str, compute: str) -> dict:
    """One `replica check --trace --format json` run: verdict, first divergence, largest multiple."""
    args = [str(replica), "check", "--model", component, "--reference", str(bundle), "--trace",
            "--format", "json", "--rule", rule]
    env = {"REPLICA_COMPUTE": compute, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    case = json.loads(done.stdout)["cases"][0]
    trace = case["trace"] or {}
    multiples = [row["comparison"]["noise"]["multiple"] for row in trace.get("rows", [])
                 if row.get("comparison") and row["comparison"].get("noise")]
    return {
        "failed": done.returncode == 1,
        "first": trace.get("first_divergence"),
        "max_multiple": max(multiples + [case.get("max_noise_multiple") or 0.0]),
    }


# The committed planted-bug fixtures (tests/fixtures/planted/): name, builder, what the CLI tests expect.
FIXTURES = [
    ("gpt2_gelu_erf_as_tanh", lambda: gpt2(0, act="gelu", port_act="gelu_new", width=16)),
    ("bert_gelu_erf_as_tanh", lambda: bert(0, act="gelu", port_act="gelu_new", width=16)),
    ("gpt2_gelu_pytorch_tanh_as_new", lambda: gpt2(0, act="gelu_pytorch_tanh", port_act="gelu_new", width=16)),
]


def write_fixtures(out: Path) -> None:
    """Forward passes only (no gradients) at width 16, to keep the files small."""
    out.mkdir(parents=True, exist_ok=True)
    for name, build in FIXTURES:
        model, inputs, kwargs, told, _, cls = build()
        path = capture(model, inputs, out / f"{name}.safetensors", config=told, component=cls, seed=0,
                       kwargs=kwargs, producer_extra=VERSIONS, overwrite=True)
        print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replica", type=Path, default=ROOT / "target" / "debug" / "replica")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--write-fixtures", type=Path, metavar="DIR",
                        help="write the planted-bug fixtures the CLI tests use (tests/fixtures/planted) and stop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.write_fixtures:
        write_fixtures(args.write_fixtures)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, kind, build, where in EXPERIMENTS:
            for seed in args.seeds:
                model, inputs, kwargs, told, component, cls = build(seed)
                path = Path(tmp) / f"case_{len(rows)}.safetensors"
                capture(model, inputs, path, config=told, component=cls, grads=True, seed=seed, kwargs=kwargs,
                        producer_extra=VERSIONS)
                for compute in ("kernels", "composition"):
                    close = check(args.replica, component, path, "assert-close", compute)
                    calibrated = check(args.replica, component, path, "calibrated", compute)
                    rows.append((label, kind, seed, compute, close, calibrated, where))
                    print(f"{label} seed {seed} {compute}: assert_close {close}, calibrated {calibrated}",
                          file=sys.stderr)

    print("| planted | seed | compute | assert_close fails | calibrated fails | largest noise x | first divergence (calibrated) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    for label, kind, seed, compute, close, calibrated, where in rows:
        named = calibrated["first"] or "-"
        if where and calibrated["first"] and not calibrated["first"].startswith(where):
            named += f" (expected {where})"
        print(f"| {label} | {seed} | {compute} | {yes(close['failed'])} | {yes(calibrated['failed'])} | "
              f"{calibrated['max_multiple']:.3g} | {named} |")
    wrong = [r for r in rows if (r[1] == "bug") != r[5]["failed"]]
    alarms = [r for r in rows if r[1] == "same" and r[5]["failed"]]
    missed = [r for r in rows if r[1] == "bug" and not r[5]["failed"]]
    print(f"\n{len(rows)} runs: {len(missed)} planted bugs missed, {len(alarms)} false alarms, "
          f"{len(wrong)} wrong verdicts under the calibrated rule.")


if __name__ == "__main__":
    main()
