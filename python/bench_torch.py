"""Time PyTorch at the shapes of benches/kernels.rs, with 1 and 2 threads.

    ~/venv-ref/bin/python python/bench_torch.py --out target/bench_torch.json

Writes JSON: the machine, the torch version, and one record per
(kernel, shape, threads) with the median seconds per call. The kernel and
shape names are those of the criterion benchmark ids, so
python/benchmarks_md.py can join the two. Keep the shapes in step with
benches/kernels.rs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess

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

    for shape, (m, k, n) in [("bert-base_ffn_b8_s128", (1024, 768, 3072)), ("llama-7b_proj_s128", (128, 4096, 4096))]:
        out.append(("matmul", shape, 2 * m * k * n, lambda m=m, k=k, n=n: (lambda a, b: lambda: a @ b)(randn(m, k), randn(k, n))))
    return out


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
    parser.add_argument("--only", default=None, help="run only kernels whose name contains this")
    args = parser.parse_args()
    torch.manual_seed(0)
    records = []
    for kernel, shape, flops, make in cases():
        if args.only and args.only not in kernel:
            continue
        for threads in THREADS:
            torch.set_num_threads(threads)
            fn = make()
            grad = kernel.endswith("_bwd")
            with torch.set_grad_enabled(grad):
                fn()  # warm-up
                timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
                m = timer.blocked_autorange(min_run_time=args.min_run_time)
            seconds = m.median
            records.append({"kernel": kernel, "shape": shape, "threads": threads, "seconds": seconds, "flops": flops})
            print(f"{kernel:22} {shape:26} {threads}t {seconds * 1e3:10.3f} ms", flush=True)
    result = {
        "machine": machine(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "records": records,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    assert all(math.isfinite(r["seconds"]) for r in records)


if __name__ == "__main__":
    main()
