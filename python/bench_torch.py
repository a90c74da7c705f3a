"""Time PyTorch at the shapes of benches/kernels.rs, benches/blocks.rs and benches/training.rs, with 1 and 2 threads.

    ~/venv-ref/bin/python python/bench_torch.py --out target/bench_torch.json
    ~/venv-ref/bin/python python/bench_torch.py --out target/bench_torch.json --merge --only '^(block_|minilm)'

Everything runs under torch.inference_mode() except the backward benchmarks and the training step.

Writes JSON: the machine, the torch version, and one record per
(kernel, shape, threads) with the seconds per call of the fastest timed block
(`seconds`; python/benchmarks_md.py takes criterion's fastest sample alike) and the median. The kernel and
shape names are those of the criterion benchmark ids, so
python/benchmarks_md.py can join the two. Keep the shapes in step with
benches/kernels.rs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys

# The Rust benches' allocator setting (benches/common/mod.rs, `keep_freed_pages`): glibc
# keeps freed pages (mmap threshold 32 MiB, trim threshold 1 GiB), so both sides serve
# their tensors from pages already mapped. glibc reads its tunables at start-up, so the
# script re-executes itself with them; REPLICA_BENCH_MALLOC=default skips it, as in Rust.
KEEP_FREED_PAGES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
if __name__ == "__main__" and os.environ.get("REPLICA_BENCH_MALLOC") != "default" \
        and KEEP_FREED_PAGES not in os.environ.get("GLIBC_TUNABLES", ""):
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), KEEP_FREED_PAGES]))
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": tunables})

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

THREADS = (1, 2)


def randn(*dims):
    return torch.randn(*dims, dtype=torch.float32)


def causal_mask(s):
    return torch.full((s, s), float("-inf")).triu(1)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_half_split(x, cos, sin):
    # HF LLaMA apply_rotary_pos_emb: tables [seq, d/2] repeated to [seq, d].
    cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    return x * cos + rotate_half(x) * sin


def rotate_every_two(x):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def rope_interleaved(x, cos, sin):
    # GPT-J apply_rotary_pos_emb.
    cos = torch.repeat_interleave(cos, 2, dim=-1)
    sin = torch.repeat_interleave(sin, 2, dim=-1)
    return x * cos + rotate_every_two(x) * sin


def cases():
    """(kernel, shape, flops or None, make) with make() -> a no-argument callable."""
    out = []
    for shape, dims in [
        ("bert-base_b8_s128", (8, 12, 128, 128)),
        ("gpt2_b1_s1024", (1, 12, 1024, 1024)),
        ("rows_64x4096", (64, 4096)),
    ]:
        out.append(("softmax", shape, None, lambda dims=dims: (lambda x: lambda: torch.softmax(x, -1))(randn(*dims))))

    def scaled_causal():
        x, mask = randn(1, 12, 1024, 1024), causal_mask(1024)
        return lambda: torch.softmax(x * 0.125 + mask, -1)

    out.append(("softmax_scale_causal", "gpt2_b1_s1024", None, scaled_causal))

    for shape, dims in [("minilm_b8_s128", (8, 128, 384)), ("bert-base_b8_s128", (8, 128, 768)), ("gpt2_b1_s1024", (1, 1024, 768))]:
        def ln(dims=dims):
            x, w, b = randn(*dims), randn(dims[-1]), randn(dims[-1])
            return lambda: F.layer_norm(x, (dims[-1],), w, b, 1e-5)
        out.append(("layer_norm", shape, None, ln))
    for shape, dims in [("llama-7b_b1_s128", (1, 128, 4096)), ("llama-7b_b1_s2048", (1, 2048, 4096))]:
        def rms(dims=dims):
            x, w = randn(*dims), randn(dims[-1])
            return lambda: F.rms_norm(x, (dims[-1],), w, 1e-6)
        out.append(("rms_norm", shape, None, rms))

    for shape, dims in [("minilm_b8_s128", (8, 128, 1536)), ("bert-base_b8_s128", (8, 128, 3072))]:
        out.append(("gelu_erf", shape, None, lambda dims=dims: (lambda x: lambda: F.gelu(x))(randn(*dims))))
    out.append(("gelu_tanh", "gpt2_b1_s1024", None, lambda: (lambda x: lambda: F.gelu(x, approximate="tanh"))(randn(1, 1024, 3072))))
    out.append(("silu", "llama-7b_b1_s128", None, lambda: (lambda x: lambda: F.silu(x))(randn(1, 128, 11008))))

    def swiglu():
        g, u = randn(1, 128, 11008), randn(1, 128, 11008)
        return lambda: F.silu(g) * u

    out.append(("swiglu", "llama-7b_b1_s128", None, swiglu))

    for kernel, fn in [("rope_half_split", rope_half_split), ("rope_interleaved", rope_interleaved)]:
        def rope(fn=fn):
            x, angles = randn(1, 32, 512, 128), randn(512, 64)
            cos, sin = angles.cos(), angles.sin()
            return lambda: fn(x, cos, sin)
        out.append((kernel, "llama-7b_b1_s512", None, rope))

    for shape, (b, h, s, d), causal in [
        ("bert-base_b8_s128", (8, 12, 128, 64), False),
        ("gpt2_b1_s1024_causal", (1, 12, 1024, 64), True),
        ("llama-7b_b1_s512_causal", (1, 32, 512, 128), True),
    ]:
        visible = s * (s + 1) // 2 if causal else s * s

        def sdpa(b=b, h=h, s=s, d=d, causal=causal):
            q, k, v = randn(b, h, s, d), randn(b, h, s, d), randn(b, h, s, d)
            return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        out.append(("attention", shape, 4 * b * h * visible * d, sdpa))

    def sdpa_fwd_bwd():
        q, k, v = (randn(1, 12, 1024, 64).requires_grad_() for _ in range(3))

        def step():
            q.grad = k.grad = v.grad = None
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

        return step

    out.append(("attention_fwd_bwd", "gpt2_b1_s1024_causal", 12 * 12 * (1024 * 1025 // 2) * 64, sdpa_fwd_bwd))

    for shape, (m, k, n) in [
        ("minilm_ffn_b8_s128", (1024, 384, 1536)),
        ("bert-base_ffn_b8_s128", (1024, 768, 3072)),
        ("llama-7b_proj_s128", (128, 4096, 4096)),
    ]:
        out.append(("matmul", shape, 2 * m * k * n, lambda m=m, k=k, n=n: (lambda a, b: lambda: a @ b)(randn(m, k), randn(k, n))))

    # The prefill target (benches/kernels.rs, group attention_prefill).
    for s in (512, 2048):
        for causal in (False, True):
            shape = f"b1_h12_d64_s{s}" + ("_causal" if causal else "")
            visible = s * (s + 1) // 2 if causal else s * s

            def prefill(s=s, causal=causal):
                q, k, v = randn(1, 12, s, 64), randn(1, 12, s, 64), randn(1, 12, s, 64)
                return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            out.append(("attention_prefill", shape, 4 * 12 * visible * 64, prefill))
    return out + block_cases() + minilm_cases() + gpt2_cases() + training_cases()


# Whole blocks at the shapes of benches/blocks.rs: (batch, seq, dim, heads, mlp hidden, causal, GELU form).
BLOCK_SHAPES = {
    "minilm_b8_s128": (8, 128, 384, 12, 1536, False, "none"),
    "bert-base_b8_s128": (8, 128, 768, 12, 3072, False, "none"),
    "gpt2_b1_s1024": (1, 1024, 768, 12, 3072, True, "tanh"),
}


def init_small(module):
    # N(0, 0.02) weights as benches/blocks.rs uses (the values do not change the time).
    for p in module.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02)
    return module.eval()


class SdpaAttention(torch.nn.Module):
    """Replica's `Attention` in PyTorch: q/k/v projections (one fused projection for GPT-2, as its c_attn), SDPA,
    output projection. nn.MultiheadAttention is not used: on this build, with GPT-2's causal mask, it took about
    3.5x the CPU time of SDPA plus the four projections (and 1.6x without a mask)."""

    def __init__(self, d, h, fused_qkv, causal):
        super().__init__()
        self.h, self.causal, self.fused = h, causal, fused_qkv
        if fused_qkv:
            self.qkv = torch.nn.Linear(d, 3 * d)
        else:
            self.q, self.k, self.v = torch.nn.Linear(d, d), torch.nn.Linear(d, d), torch.nn.Linear(d, d)
        self.out = torch.nn.Linear(d, d)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, -1) if self.fused else (self.q(x), self.k(x), self.v(x))
        heads = lambda t: t.view(b, s, self.h, d // self.h).transpose(1, 2)
        y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


def block_cases():
    """Attention: SdpaAttention (the projections and SDPA, as replica's Attention);
    MLP: Linear-GELU-Linear; transformer block: HF BertLayer (post-norm) or GPT2Block (pre-norm)."""
    from transformers import BertConfig, GPT2Config
    from transformers.models.bert.modeling_bert import BertLayer
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    out = []
    for shape, (b, s, d, h, hidden, causal, gelu) in BLOCK_SHAPES.items():
        def attention(b=b, s=s, d=d, h=h, causal=causal):
            module = init_small(SdpaAttention(d, h, fused_qkv=causal, causal=causal))
            x = randn(b, s, d)
            return lambda: module(x)

        def mlp(b=b, s=s, d=d, hidden=hidden, gelu=gelu):
            net = init_small(torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(approximate=gelu), torch.nn.Linear(hidden, d)))
            x = randn(b, s, d)
            return lambda: net(x)

        def layer(b=b, s=s, d=d, h=h, hidden=hidden, causal=causal):
            if causal:
                config = GPT2Config(n_embd=d, n_head=h, n_inner=hidden, resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0)
            else:
                config = BertConfig(hidden_size=d, num_attention_heads=h, intermediate_size=hidden, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
            # A standalone layer has no attention implementation set; use SDPA, as the models do.
            config._attn_implementation = "sdpa"
            module = init_small(GPT2Block(config, layer_idx=0) if causal else BertLayer(config))
            x = randn(b, s, d)
            return lambda: module(x)

        out += [("block_attention", shape, None, attention), ("block_mlp", shape, None, mlp), ("block_transformer", shape, None, layer)]
    return out


def token_ids(batch, seq):
    """The fixed pattern of benches/blocks.rs: [CLS] w... [SEP], w = 1000 + (131 b + 17 i) mod 20000."""
    ids = [[101 if i == 0 else 102 if i == seq - 1 else 1000 + (131 * b + 17 * i) % 20000 for i in range(seq)] for b in range(batch)]
    return torch.tensor(ids, dtype=torch.long)


def minilm_model():
    """HF BertModel on the cached all-MiniLM-L6-v2, or on random weights of its config (and says so)."""
    from transformers import BertConfig, BertModel

    directory = os.environ.get("REPLICA_MINILM_DIR") or os.path.expanduser("~/.cache/replica/all-MiniLM-L6-v2")
    if os.path.isfile(os.path.join(directory, "model.safetensors")):
        return BertModel.from_pretrained(directory, attn_implementation="sdpa").eval(), "real"
    print(f"all-MiniLM-L6-v2 is not in {directory} (python3 python/fetch_minilm.py fetches it): timing RANDOM weights")
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                        layer_norm_eps=1e-12, max_position_embeddings=512)
    config._attn_implementation = "sdpa"
    return BertModel(config).eval(), "random"


def minilm_cases():
    out = []
    for shape, (b, s) in [("b8_s128", (8, 128)), ("b1_s128", (1, 128))]:
        def forward(b=b, s=s):
            model, _ = minilm_model()
            ids = token_ids(b, s)
            types, mask = torch.zeros_like(ids), torch.ones_like(ids)
            return lambda: model(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state

        out.append(("minilm_forward", shape, None, forward))
    return out


def gpt2_cases():
    """HF GPT2Model (GPT-2 small's config, SDPA attention, random weights: the shapes are what is timed), the last
    hidden state of batch 1, as benches/blocks.rs's `gpt2_forward`."""
    from transformers import GPT2Config, GPT2Model

    out = []
    for shape, (b, s) in [("b1_s128", (1, 128)), ("b1_s1024", (1, 1024))]:
        def forward(b=b, s=s):
            config = GPT2Config()  # GPT-2 small: 12 layers, 768 wide, 12 heads, 1024 positions
            config._attn_implementation = "sdpa"
            model = GPT2Model(config).eval()
            ids = token_ids(b, s)
            return lambda: model(input_ids=ids, use_cache=False).last_hidden_state

        out.append(("gpt2_forward", shape, None, forward))
    return out


def training_cases():
    """One step of examples/mingpt_char.rs's training (benches/training.rs): HF GPT2LMHeadModel with 3 layers, 4 heads,
    96 wide, context 64, vocabulary 59, GPT-2's dropouts (0.1), SDPA attention; a batch of 16 windows; cross-entropy
    on the logits, backward, clip_grad_norm_(1.0), torch.optim.AdamW (lr 2e-3, betas 0.9/0.95, weight decay 0.1 on
    the linear layers' matrices only, as minGPT)."""
    import itertools

    from transformers import GPT2Config, GPT2LMHeadModel

    def step():
        config = GPT2Config(vocab_size=59, n_positions=64, n_embd=96, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0)
        config._attn_implementation = "sdpa"
        model = GPT2LMHeadModel(config).train()
        named = list(model.named_parameters())  # the tied LM head appears once, as transformer.wte.weight
        linear = lambda n: n.endswith(".weight") and (".attn." in n or ".mlp." in n)  # noqa: E731
        groups = [{"params": [p for n, p in named if linear(n)], "weight_decay": 0.1},
                  {"params": [p for n, p in named if not linear(n)], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=2e-3, betas=(0.9, 0.95), eps=1e-8)
        generator = torch.Generator().manual_seed(0x5EED)
        batches = itertools.cycle([(torch.randint(0, 59, (16, 64), generator=generator),
                                    torch.randint(0, 59, (16, 64), generator=generator)) for _ in range(8)])

        def run():
            x, y = next(batches)
            logits = model(input_ids=x, use_cache=False).logits
            loss = F.cross_entropy(logits.view(-1, 59), y.view(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            return loss

        return run

    return [("training_step", "mingpt_char", None, step)]


def machine():
    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="target/bench_torch.json")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--only", default=None, help="run only kernels whose name matches this regular expression")
    parser.add_argument("--merge", action="store_true", help="keep --out's records of the kernels this run skips")
    args = parser.parse_args()
    torch.manual_seed(0)
    records = []
    for kernel, shape, flops, make in cases():
        if args.only and not re.search(args.only, kernel):
            continue
        for threads in THREADS:
            torch.set_num_threads(threads)
            fn = make()
            grad = kernel.endswith("_bwd") or kernel == "training_step"
            with torch.set_grad_enabled(grad), (torch.inference_mode() if not grad else contextlib.nullcontext()):
                fn()  # warm-up
                timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
                m = timer.blocked_autorange(min_run_time=args.min_run_time)
            seconds = min(m.times)
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            records.append({"kernel": kernel, "shape": shape, "threads": threads, "seconds": seconds,
                            "median": m.median, "flops": flops, "date": now})
            print(f"{kernel:22} {shape:26} {threads}t {seconds * 1e3:10.3f} ms", flush=True)
    if args.merge and os.path.isfile(args.out):
        # Keep the earlier run's records of what this run did not measure; they carry their own date.
        with open(args.out) as f:
            earlier = json.load(f)
        done = {(r["kernel"], r["shape"], r["threads"]) for r in records}
        for r in earlier["records"]:
            if (r["kernel"], r["shape"], r["threads"]) not in done:
                records.append({**r, "date": r.get("date", earlier.get("date"))})
    result = {
        "machine": machine(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "allocator": "glibc defaults" if KEEP_FREED_PAGES not in os.environ.get("GLIBC_TUNABLES", "")
        else "glibc, freed pages kept (mmap threshold 32 MiB, trim threshold 1 GiB)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "records": records,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    assert all(math.isfinite(r["seconds"]) for r in records)


if __name__ == "__main__":
    main()
