"""Join the criterion results of benches/kernels.rs, benches/blocks.rs and benches/training.rs with
python/bench_torch.py's timings into BENCHMARKS.md: one table per kernel, block
or model, replica / candle / PyTorch times, their ratios and the fraction of the
machine's peak.

benches/run_all.sh runs all of it, each table's criterion and PyTorch rows back to
back (a shared host's slow phases last minutes). By hand, the same in larger sets:

    CANDLE_NUM_THREADS=1 cargo bench --bench kernels -- '_1t/' --warm-up-time 1 --measurement-time 2
    CANDLE_NUM_THREADS=2 cargo bench --bench kernels -- '_2t/' --warm-up-time 1 --measurement-time 2
    CANDLE_NUM_THREADS=1 cargo bench --bench kernels -- '^attention_fwd_bwd/.*_2t/' --warm-up-time 1 --measurement-time 2
    CANDLE_NUM_THREADS=1 cargo bench --bench blocks -- '_1t/'
    CANDLE_NUM_THREADS=2 cargo bench --bench blocks -- '_2t/'
    CANDLE_NUM_THREADS=1 cargo bench --bench training -- '_1t/'
    CANDLE_NUM_THREADS=1 cargo bench --bench training -- '_2t/'
    ~/venv-ref/bin/python python/bench_torch.py --out target/bench_torch.json
    python3 python/benchmarks_md.py --criterion target/criterion \\
        --torch target/bench_torch.json --out BENCHMARKS.md

Each table states when its rows were measured (criterion's files' modification
times, the PyTorch records' dates), so sets re-run at different times stay honest.

Standard library only. Every number in the output comes from those two inputs
and from lscpu; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
from collections import defaultdict

# Table order: what each measures, what bounds it ("memory": a copy column; "flops":
# GFLOP/s and % of peak; "model": times and ratios only), its targets (as in the
# issue, `other / replica` at least this) and the implementations it compares.
KERNEL_IMPLS = ["replica", "candle", "composed", "torch"]
BLOCK_IMPLS = ["replica", "composed", "torch"]
KERNELS = {
    "softmax": ("softmax over the last dimension", "memory", {"candle": 3.0, "torch": 1.0}, KERNEL_IMPLS),
    "softmax_scale_causal": ("softmax(scale·x + causal mask): fused in replica, mask added first elsewhere", "memory", {}, KERNEL_IMPLS),
    "layer_norm": ("LayerNorm with weight and bias, eps 1e-5", "memory", {"torch": 1.0, "memory": 0.5}, KERNEL_IMPLS),
    "rms_norm": ("RMSNorm with weight, eps 1e-6", "memory", {"torch": 1.0, "memory": 0.5}, KERNEL_IMPLS),
    "gelu_erf": ("GELU, erf form", "memory", {"torch": 1.0, "memory": 0.5}, KERNEL_IMPLS),
    "gelu_tanh": ("GELU, tanh approximation", "memory", {"torch": 1.0, "memory": 0.5}, KERNEL_IMPLS),
    "silu": ("SiLU", "memory", {"torch": 1.0, "memory": 0.5}, KERNEL_IMPLS),
    "swiglu": ("SwiGLU gating silu(gate)·up (candle: built-in silu, then a product)", "memory", {}, KERNEL_IMPLS),
    "rope_half_split": ("RoPE, half-split pairs (HF LLaMA); PyTorch: HF's rotate_half composition", "memory", {"torch": 1.0, "memory": 0.5}, KERNEL_IMPLS),
    "rope_interleaved": ("RoPE, interleaved pairs (GPT-J); PyTorch: GPT-J's rotate_every_two composition", "memory", {"torch": 1.0, "memory": 0.5}, KERNEL_IMPLS),
    "attention": ("attention at model shapes; candle: candle_nn::attention::flash_attn (CPU); PyTorch: F.scaled_dot_product_attention", "flops", {"torch": 1.0, "composed": 3.0}, KERNEL_IMPLS),
    "attention_prefill": ("attention prefill at the issue's target shapes: batch 1, 12 heads, head dim 64, 512 and 2048 tokens, causal and not; "
                          "candle: candle_nn::attention::flash_attn (CPU); PyTorch: F.scaled_dot_product_attention", "flops", {"torch": 1.0, "composed": 3.0}, KERNEL_IMPLS),
    "attention_fwd_bwd": ("attention forward and backward (training), causal", "flops", {"torch": 1.0}, KERNEL_IMPLS),
    "matmul": ("matrix product; replica: `linear(x, W)` with the same matrix as a weight `[n, k]` (a linear layer's layout); "
               "candle: `a.matmul(b)` (gemm crate); PyTorch: `a @ b` (MKL/oneDNN)", "flops", {"torch": 0.9}, KERNEL_IMPLS),
    "block_attention": ("replica_blocks `Attention` (q/k/v and output projections around attention; GPT-2: one fused qkv "
                        "projection, causal) against the same in PyTorch: `nn.Linear` projections around `F.scaled_dot_product_attention` "
                        "(python/bench_torch.py `SdpaAttention`)", "model", {}, BLOCK_IMPLS),
    "block_mlp": ("replica_blocks `Mlp` (Linear, GELU — erf for BERT/MiniLM, tanh for GPT-2 —, Linear) against the same "
                  "`nn.Sequential`", "model", {}, BLOCK_IMPLS),
    "block_transformer": ("replica_blocks `TransformerBlock`: BERT/MiniLM as torch's post-norm encoder layer, GPT-2 as "
                          "`Gpt2Config::block_config` (pre-norm, causal); PyTorch: HF `BertLayer` / `GPT2Block` with SDPA attention",
                          "model", {}, BLOCK_IMPLS),
    "minilm_forward": ("all-MiniLM-L6-v2 forward (6 layers, 384 wide, 12 heads), the last hidden state of a batch of "
                       "fixed token ids, attention mask all ones. replica: `replica_models::Bert`; candle: "
                       "candle-transformers 0.11 `BertModel`; PyTorch: HF transformers `BertModel` (SDPA), "
                       "`torch.inference_mode()`. replica's and HF's BertModel also run the pooler (one 384x384 product "
                       "on the first token); candle-transformers' has none", "model", {"torch": 1.0, "candle": 2.0}, KERNEL_IMPLS),
    "gpt2_forward": ("GPT-2 small forward (12 layers, 768 wide, 12 heads; random weights), the last hidden state of batch 1 "
                     "(no LM head). replica: `replica_models::Gpt2::forward_hidden`; PyTorch: HF transformers `GPT2Model` "
                     "(SDPA), `torch.inference_mode()`. candle-transformers 0.11 has no GPT-2", "model", {"torch": 1.0},
                     ["replica", "torch"]),
    "training_step": ("one training step of examples/mingpt_char.rs (benches/training.rs): GPT-2 with 3 layers, 4 heads, "
                      "96 wide, context 64, vocabulary 59, dropout 0.1, a batch of 16 windows; forward, cross-entropy, "
                      "backward, gradient norm clipped to 1, AdamW (betas 0.9/0.95, weight decay 0.1 on the linear "
                      "layers' matrices). replica: `FusedAdamW::clip_and_step`; candle: the same model with candle_nn's "
                      "`AdamW` after clipping with tensor ops; PyTorch: HF `GPT2LMHeadModel` (SDPA), "
                      "`clip_grad_norm_`, `torch.optim.AdamW`", "model", {"torch": 1.0}, ["replica", "candle", "torch"]),
}

# What a column means per table family, when it differs from the kernels'.
LABELS = {
    "replica": "replica",
    "candle": "candle",
    "composed": "composed",
    "torch": "PyTorch",
}
MODEL_LABELS = {**LABELS, "replica": "replica (kernels)", "composed": "replica (composition)"}
CANDLE_TRANSFORMERS = {**MODEL_LABELS, "candle": "candle-transformers"}
TRAINING = {**LABELS, "replica": "replica (FusedAdamW)", "candle": "replica model, candle_nn AdamW"}


def labels_for(kernel: str) -> dict:
    if kernel == "minilm_forward":
        return CANDLE_TRANSFORMERS
    if kernel == "training_step":
        return TRAINING
    if kernel == "gpt2_forward":
        return MODEL_LABELS
    return MODEL_LABELS if kernel.startswith("block_") else LABELS


# The criterion group whose copy measures the machine's memory bandwidth.
BANDWIDTH_GROUP = "memory_bandwidth"

# What limits a kernel that misses its target, shown only when it does.
# Keys are a kernel, or (kernel, other) where the reason depends on the comparison.
LIMITS = {
    "softmax": "The OS at the GPT-2 shape: its scores are 50 MB, above glibc's largest mmap threshold, so every "
    "call's output is a fresh mapping that the OS must fault in, zero and unmap again, and candle pays the same. "
    "Backing the output with transparent huge pages (docs/kernels.md) cut that cost: in one run, "
    "`cargo bench --bench kernels -- '^softmax/replica(-4k-pages)?_1t/gpt2'` times replica's softmax at 24.6 ms "
    "with them and 61.9 ms without. Where the OS refuses huge pages, this target is out of reach at that shape.",
    ("matmul", "torch"): "The gemm crate against MKL, on a noisy host. From 257 rows replica's product is the gemm "
    "crate's own call (the candle column, the same gemm through candle, stays within about 10% of it), and which "
    "rows miss changes from run to run: on the Intel Xeon of 2026-12-06 the 1-thread BERT and MiniLM FFN rows "
    "were 0.97x and 1.02x in one run and 0.84x and 0.81x in another, the 2-thread BERT FFN row 0.89x, 0.64x and "
    "1.00x in three. At llama-7b_proj_s128 (128 rows) replica's product is the transposed one, a chunk of rows "
    "per thread (each thread's gemm reads all of the 64 MiB weight): 0.78x and 0.93x at 2 threads in two runs. "
    "A probe on 2026-12-06 (2 threads, best of 7 x 5 calls, seven shapes of 128 to 1,024 rows) that split the "
    "output columns over the threads instead of gemm's threading was mixed over three runs: up to 20% faster at "
    "some 1,024-row shapes, as much as 45% slower at 128 rows, so it was left. A product of replica's own "
    "(BLIS's loops, tried on 2026-12-06; docs/kernels.md) ran 0.49x to 0.93x as fast as gemm's, so the products "
    "stay gemm's.",
    ("minilm_forward", "torch"): "The MLP: in this run's block tables MiniLM's attention block is ahead of "
    "PyTorch's (block_attention 1.08x, 1.25x) and its MLP behind (block_mlp 0.95x, 0.88x). The MLP's two products "
    "are at PyTorch's speed or near it (matmul minilm_ffn 1.02x, 0.95x; replica's at 116-126% of the nominal "
    "peak), and 73-77% of the forward is gemm's (profiles on the Intel Xeon of 2026-12-06, `benches/profile.rs "
    "minilm-b8`, perf sampling cpu-clock, the benches' allocator setting: at 1 thread gemm's microkernel 72% and its "
    "packing 4%, attention's tile products 5%, GELU 4%, memmove 3%, the online softmax 3%, candle's binary adds 2%, "
    "LayerNorm 1%). The GELU between the products runs from memory: in the forward it took about 1.2 ms per layer at "
    "1 thread (4% of 175 ms over 6 layers) on the 6 MiB output of the first product, against 0.26 ms for the same "
    "kernel on 3 MiB that stays in cache; applying it to each block of the product while the block is in cache would "
    "save most of that (not attempted). At 2 threads candle's element-wise pool (`CANDLE_NUM_THREADS=2`, as in this "
    "table) spins after each of the forward's residual adds, on a core rayon's threads are using: 3.8% of the "
    "samples, 0.8% with `CANDLE_BARRIER_POOL_SPIN_LIMIT=100` (docs/training.md). The forward gained 1.9x from the "
    "second core in this run (183 to 95 ms), as PyTorch's did (172 to 90 ms). The host's noise is as large as the gaps: minutes apart "
    "on 2026-12-06 the same build's b8 forward took 96-98 and 132-145 ms at 2 threads (fastest of 15 calls), and "
    "PyTorch's 88-90 ms in the first of those minutes.",
    ("minilm_forward", "candle"): "Amdahl's law and the host's noise: both BERTs run their projections and MLPs "
    "through the same gemm crate (three quarters of replica's b8 forward: the profile in the reason against "
    "PyTorch), and those products take the same time in both; a product of replica's own did not beat gemm (see matmul). "
    "replica's lead is in everything else (attention, GELU, LayerNorm, the bias added inside the product, fewer copies). candle-transformers' own "
    "time at b8_s128, 1 thread, was 437 ms and 324 ms in two runs 15 minutes apart on 2026-12-06 (2.19x and 1.81x), "
    "replica's 199 and 179 ms.",
    ("training_step", "torch"): "Two threads: the step is mostly serial. A profile of the 2-thread step on the "
    "Intel Xeon of 2026-12-06 (`RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=1 REPLICA_TRAINING_STEPS=60`, perf sampling "
    "cpu-clock) used 1.21 CPUs: candle's binary ops (bias and residual adds, the adds that accumulate gradients; "
    "19% of the samples) and memset (10%, the zeroed tensors candle starts from) run on the calling thread when "
    "candle's own pool has one thread, and with two they contend with rayon's pool for the same cores "
    "(docs/training.md); the products at this size (1,024 rows by 96 to 384) gain little from a second core. So "
    "the 2-thread step takes about as long as the 1-thread one, while PyTorch's gains 1.4x. At 1 thread the "
    "kernels' dropout (a counter-based mask, 2026-12-06) took the step from 82-88 to 66-68 ms of CPU (the two "
    "builds alternated); the same machine had measured PyTorch's step at 63.5 ms on 2026-12-05 and 92 ms in "
    "this run, so the 1-thread ratio is as noisy as the host.",
    ("gpt2_forward", "torch"): "Matrix products at about this core's peak, on a noisy host. Since 2026-12-06 a "
    "linear layer of at most 256 rows has gemm read its weight in place instead of repacking it every call "
    "(docs/kernels.md, \"Linear layers with few rows\"): the b1_s128 forward went from 331-335 to 217-227 ms at 1 "
    "thread (the two builds alternated in one session). A profile of that forward after the change (Intel Xeon, "
    "2026-12-06, 1 thread, criterion's `--profile-time`, perf sampling cpu-clock; shares of the forward's samples, "
    "the weights' random set-up left out) puts 72% in gemm's AVX-512 microkernel, 6% in transposing the products "
    "into place, 4% in gemm's packing, 3% in candle's bias and residual adds and 5% in replica's kernels: the "
    "products run at about 130 GFLOP/s, this core's nominal peak (134), where PyTorch's whole forward ran at 106 "
    "GFLOP/s in this run. The b1_s1024 rows (1,024 rows: candle's order of the product) were 1.18x and 0.87x at 1 "
    "thread in two runs of the same code 15 minutes apart.",
    ("gelu_erf", "torch"): "Arithmetic at 1 thread, and PyTorch's side moved: replica's 1-thread rows took "
    "1.17 ms and 644 µs in the previous table (1.25x and 1.21x PyTorch's) and 1.10 ms and 622 µs in this one, "
    "PyTorch's 1.46 ms and 777 µs then, 1.07 ms and 546 µs now. The 2-thread rows, where memory is the bound, pass. "
    "A profile of the 1-thread kernel (Intel Xeon, 2026-12-06, `benches/profile.rs gelu-erf-bert`, 3,000 calls on "
    "BERT-base's 786K hidden states, perf sampling cpu-clock, annotated) puts 36% of its samples on the "
    "instructions right after the four unrolled divisions of erf's rational approximation and about 12% on loads "
    "and stores: arithmetic-bound (0.26-0.27 ms for data that stays in cache). A division-free reciprocal (a bit-"
    "trick seed and three Newton steps, within half an ulp) was slower: fastest calls 0.30-0.31 against 0.26-0.27 ms "
    "in three alternations; the division stays.",
    ("layer_norm", "torch"): "One 2-thread row of small absolute time (about 0.2 ms; the other rows 1.11-1.35x); "
    "within the host's noise, not profiled.",
    ("layer_norm", "memory"): "LayerNorm reads each row twice (statistics, then normalising, the second time "
    "from L1) and the weight and bias for every row; it was not profiled further.",
    ("gelu_erf", "memory"): "Per element the kernel computes a rational erf: 11 FMAs, a division, the clamps and "
    "the final products: arithmetic, not bandwidth.",
    ("gelu_tanh", "memory"): "Per element the kernel computes tanh both ways (an exp and a division for large "
    "|x|, a degree-13 odd polynomial for small |x|) and selects: arithmetic, not bandwidth.",
    ("silu", "memory"): "Per element the kernel computes an exp (a range reduction and a degree-7 polynomial) "
    "and a division: arithmetic, not bandwidth.",
    "attention": "The host's noise first, then the online softmax. The same build measured minutes apart "
    "(Intel Xeon, 2026-12-06): BERT b8 s128 at 1 thread 6.81 ms in one criterion run and 4.33 ms in the next; "
    "b1_h12_d64_s2048 at 2 threads 74 ms in one table and 57-61 ms with `benches/profile.rs attention-prefill-2048` "
    "(113-117 ms at 1 thread) in the same half hour; at 1 thread 125 and 197 ms in runs of 5 calls a minute apart. Profiles of that build (1 thread, `benches/profile.rs`, perf "
    "sampling cpu-clock): at b1_h12_d64_s512 the tile products take 70% of the samples at about 134 GFLOP/s (the "
    "nominal peak of this core), the online softmax 21% (its exponentials: a range reduction and a degree-7 "
    "polynomial per score), the keys' transpose 3% and writing the output 2%; at s2048 the products 71% and the "
    "softmax 19%. The products have no room left; the softmax's share is what separates the two.",
    ("attention", "composed"): "At BERT's 128 tokens a head's whole score matrix is one 128x128 tile, so the "
    "composition is itself two well-shaped matrix products per head plus element-wise passes over a small matrix: "
    "fusion saves only those passes. The kernel pulls ahead as the sequence grows and the composition has to "
    "materialise and re-read large score matrices (the GPT-2 and LLaMA rows, attention_prefill).",
    ("attention_prefill", "torch"): "As for attention: the same profiles and the same noise (Intel Xeon, "
    "2026-12-06). On the AMD EPYC of 2026-12-05 the kernel (before the changes of 2026-12-06) was 1.07x to 1.94x "
    "PyTorch's at these shapes (docs/kernels.md).",
    ("attention_fwd_bwd", "torch"): "Two threads: candle's share of the backward runs on one. A profile of the "
    "2-thread forward and backward (Intel Xeon, 2026-12-06, `benches/profile.rs attention-fwd-bwd-1024`, perf "
    "sampling cpu-clock, the benches' allocator setting) puts about 10 ms of each call on the calling thread "
    "alone while the pool's two threads wait: candle's gradient plumbing around the kernel (the sum's gradient "
    "broadcast, the transpose's gradient copied, and every gradient accumulated into a zero-filled tensor: memmove, "
    "memset and candle's binary add), of a call of 42-60 ms (before the backward's D = rowsum(dO O) moved into "
    "its parallel tasks and its gradients into the inputs' layout, the same day); the kernel's own work splits evenly over the two "
    "threads. With `CANDLE_NUM_THREADS=2` candle's own pool also spins beside rayon's (the fastest call 59 against "
    "42 ms with `CANDLE_NUM_THREADS=1`, as this table runs it). The 1-thread row passes.",
    ("silu", "torch"): "One 1-thread row, 4% short, within the host's noise (the same kernel was 1.15x and 1.13x "
    "PyTorch's at this shape in the table of 05:43 UTC the same day); not profiled.",
    ("rms_norm", "memory"): "The OS at the s2048 shape: its 32 MiB output is a fresh mapping on every call that "
    "the OS faults in and zeroes (as for softmax at the GPT-2 shape), and RMSNorm reads each row twice (the sum "
    "of squares, then scaling).",
}


# A 2-thread time this much above the 1-thread time of the same implementation
# means the second core was busy elsewhere during that measurement.
CONTENDED = 1.2


def lscpu() -> dict:
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    for line in out.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def machine_description(info: dict) -> tuple[str, float, int]:
    """A one-line description, the nominal f32 peak per core in GFLOP/s and the flops per cycle it assumes."""
    model = info.get("Model name", "unknown CPU")
    cores = info.get("CPU(s)", "?")
    flags = info.get("Flags", "").split()
    simd = "+".join(f for f in ("avx512f", "avx2", "fma") if f in flags) or "no AVX"
    mhz = None
    if "CPU max MHz" in info:
        mhz = float(info["CPU max MHz"])
    elif "BogoMIPS" in info:
        mhz = float(info["BogoMIPS"]) / 2
    # Two FMA units per core: 256 bits wide on AVX2 machines and on AMD's AVX-512 (Zen 4
    # splits a 512-bit operation in two), 512 bits on Intel's AVX-512 parts.
    intel_512 = "avx512f" in flags and info.get("Vendor ID") == "GenuineIntel"
    flops_per_cycle = 64 if intel_512 else 32 if ("avx2" in flags and "fma" in flags) else 8
    peak = (mhz or 0) * 1e-3 * flops_per_cycle
    freq = f"{mhz / 1000:.2f} GHz" if mhz else "unknown frequency"
    l3 = info.get("L3 cache", "?")
    desc = f"{model}, {cores} cores, {simd}, {freq} nominal, L3 {l3}"
    return desc, peak, flops_per_cycle


def utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)


def read_criterion(root: str) -> tuple[dict, dict, dict]:
    """{(kernel, impl, threads, shape): seconds} from criterion's samples (the fastest
    sample's time per call), the same keys' measurement times (the samples file's
    modification time), and the bytes moved by the benchmarks whose throughput is
    given in bytes (the copies)."""
    results, when, traffic = {}, {}, {}
    for dirpath, _, files in os.walk(root):
        if "benchmark.json" not in files or not dirpath.endswith(os.sep + "new"):
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        m = re.fullmatch(r"(.+)_(\d+)t", bench["function_id"] or "")
        if not m:
            continue
        impl, threads = m.group(1), int(m.group(2))
        key = (bench["group_id"], impl, threads, bench["value_str"])
        sample_file = os.path.join(dirpath, "sample.json")
        with open(sample_file) as f:
            samples = json.load(f)
        results[key] = min(t / n for t, n in zip(samples["times"], samples["iters"])) * 1e-9
        when[key] = utc(os.path.getmtime(sample_file))
        if "Bytes" in (bench.get("throughput") or {}):
            traffic[key] = bench["throughput"]["Bytes"]
    return results, when, traffic


def read_skipped(root: str) -> dict:
    """{(kernel, impl, shape): record} of what benches/kernels.rs left out of criterion as too slow."""
    path = os.path.join(root, "skipped.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return {(r["group"], r["impl"], r["shape"]): r for r in json.load(f)}


def read_torch(path: str) -> tuple[dict, dict, dict]:
    with open(path) as f:
        data = json.load(f)
    results, when = {}, {}
    flops = {}
    for r in data["records"]:
        key = (r["kernel"], "torch", r["threads"], r["shape"])
        results[key] = r["seconds"]
        when[key] = datetime.datetime.fromisoformat(r.get("date") or data["date"])
        if r.get("flops"):
            flops[(r["kernel"], r["shape"])] = r["flops"]
    return results, when, {"meta": data, "flops": flops}


def fastest(passes: list) -> tuple[dict, dict, dict]:
    """Joins the (results, when, extra) of several passes: each key's fastest time, all
    its measurement times, the first pass's extra."""
    results, when = {}, defaultdict(list)
    for times, dates, _ in passes:
        for key, seconds in times.items():
            results[key] = min(seconds, results.get(key, math.inf))
            when[key].append(dates[key])
    return results, when, passes[0][2]


def natural(text: str) -> list:
    """A sort key that orders s512 before s2048."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds >= 1e-1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_ratio(other: float | None, replica: float | None) -> str:
    if other is None or replica is None:
        return "—"
    return f"{other / replica:.2f}x"


def fmt_span(times: list) -> str:
    if not times:
        return "—"
    first, last = min(times), max(times)
    stamp = "%Y-%m-%d %H:%M"
    if first.date() == last.date():
        return f"{first.strftime(stamp)}–{last.strftime('%H:%M')} UTC"
    return f"{first.strftime(stamp)} – {last.strftime(stamp)} UTC"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criterion", required=True, nargs="+",
                        help="criterion's output folder (CARGO_TARGET_DIR/criterion), one per pass")
    parser.add_argument("--torch", required=True, nargs="+", help="the JSON written by python/bench_torch.py, one per pass")
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args()

    # Several passes: each row's fastest (a shared host's interference only slows a run
    # down), and every pass's times in the "Measured" spans.
    passes = len(args.criterion)
    rust, rust_when, traffic = fastest([read_criterion(root) for root in args.criterion])
    skipped_runs = read_skipped(args.criterion[0])
    torch_results, torch_when, torch_extra = fastest([read_torch(path) for path in args.torch])
    results = {**rust, **torch_results}
    info = lscpu()
    machine, peak_per_core, flops_per_cycle = machine_description(info)
    try:
        with open(os.path.join(args.criterion[0], "replica_simd.json")) as f:
            recorded = json.load(f)
        simd_path, gemm_path = recorded["backend"], recorded["gemm"]
        allocator = recorded.get("allocator", "not recorded")
    except (OSError, ValueError, KeyError):
        simd_path = gemm_path = allocator = "not recorded"
    torch_meta = torch_extra["meta"]

    by_kernel = defaultdict(lambda: defaultdict(dict))
    for (kernel, impl, threads, shape), seconds in results.items():
        by_kernel[kernel][(shape, threads)][impl] = seconds
    # Memory bandwidth (bytes/s) per thread count, and for each memory-bound row the time
    # its traffic would take at that bandwidth: the "memory" column a target compares with.
    bandwidth = {threads: traffic[key] / seconds for key, seconds in rust.items()
                 if key[0] == BANDWIDTH_GROUP and key in traffic for threads in [key[2]]}
    for (kernel, impl, threads, shape), nbytes in traffic.items():
        if impl == "copy" and kernel != BANDWIDTH_GROUP and threads in bandwidth:
            by_kernel[kernel][(shape, threads)]["memory"] = nbytes / bandwidth[threads]

    today = datetime.date.today().isoformat()
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python/benchmarks_md.py` from criterion (`benches/kernels.rs`, `benches/blocks.rs`, `benches/training.rs`) and",
        "`python/bench_torch.py`; do not edit by hand. Regenerate with `benches/run_all.sh`, which",
        "measures each table's replica and PyTorch rows back to back.",
        "",
        f"- **Machine**: {machine} (lscpu), a VM on a shared host: even with nothing else running in the VM,",
        "  the same code's time moves by up to about 25% between runs minutes apart, and on the Intel Xeon of",
        "  2026-12-06 by up to 50% (replica's BERT attention at 1 thread: 6.8 and 4.3 ms in runs 20 minutes",
        "  apart). Compare the ratios within one row (measured in the same run, minutes apart) rather than",
        "  absolute times, and treat a ratio within 25% of its target as undecided by one run.",
        f"- **Date**: generated {today}; each table says when its rows were measured (criterion: the result files'"
        f" times; PyTorch {torch_meta.get('torch')} ({torch_meta.get('cpu_capability')}): each record's time).",
        "- **Threads**: every row is pinned to a thread count: a rayon pool of 1 or 2 threads for",
        "  replica and candle (candle's matrix products run on the rayon pool they are called from),",
        "  `torch.set_num_threads` for PyTorch. candle 0.11 also runs its element-wise ops on a pool of its own,",
        "  sized once per process by `CANDLE_NUM_THREADS` (default: the physical cores, 2 here): every table",
        "  ran each thread count in its own process with `CANDLE_NUM_THREADS` equal to it, except the rows that",
        "  train (the training step, attention_fwd_bwd) at 2 threads, run with `CANDLE_NUM_THREADS=1`: after each",
        "  of the backward's many element-wise ops candle's pool spins (25,000 pauses, `CANDLE_BARRIER_POOL_SPIN_LIMIT`)",
        "  on a core rayon's threads are using, and the step slows down (docs/training.md).",
        "- **Times**: the fastest sample of each measurement, both sides alike: of criterion's samples",
        "  (replica, candle, composed, copy; a sample is the mean of a batch of calls) and of",
        "  `torch.utils.benchmark` `blocked_autorange`'s blocks (PyTorch, under `torch.inference_mode()` but for",
        "  backward rows). The host's slow phases come and go within a measurement (the same call took 125 and",
        "  200 ms seconds apart), and interference only ever slows a call down, so the fastest sample is the",
        "  statistic least moved by it (the median moved with the phase). f32 throughout."
        + (f" Each time is the fastest of {passes} passes (`benches/run_all.sh` measures its tables that"
           " many times, one pass after the other), for the same reason." if passes > 1 else ""),
        "- **Ratios** are `other / replica`: above 1 means replica is faster.",
        f"- **ISA paths**: replica's kernels ran their `{simd_path}` path (chosen at run time: the widest"
        " the CPU has, or `REPLICA_SIMD`); candle's matrix products (and replica's attention while"
        f" decoding) ran the `gemm` crate's {gemm_path} kernels (its AVX-512 kernels exist only in"
        " builds with the `avx512-gemm` feature, on by default); PyTorch's path is in the Date line.",
        f"- **Allocator**: replica and candle: {allocator}; PyTorch: {torch_meta.get('allocator', 'not recorded')}"
        " (benches/common/mod.rs `keep_freed_pages`, python/bench_torch.py: the setting README's \"Speed\" section"
        " advises for binaries, given to both sides).",
        f"- **Peak**: compute-bound rows show GFLOP/s and the share of the nominal f32 peak,"
        f" {peak_per_core:.0f} GFLOP/s per core ({flops_per_cycle} flops per cycle: two fused multiply-add"
        " units at the nominal clock). A CPU that boosts above its nominal clock can pass 100%. Memory-bound rows show the bandwidth replica reaches (bytes read and",
        "  written once each, over its time) as a share of the machine's memory bandwidth, measured in the same",
        "  run by a 128 MiB copy (`memory_bandwidth` in benches/kernels.rs: "
        + ", ".join(f"{bandwidth[t] / 1e9:.1f} GB/s at {t} thread{'s' if t > 1 else ''}" for t in sorted(bandwidth))
        + "), and as a share of a copy of the",
        "  same bytes into a reused buffer (`copy`), which at these sizes mostly stays in the L3.",
        "- Implementations: **replica** is replica-kernels; **candle** is candle 0.11's built-in fused",
        "  op where one exists; **composed** is the plain candle composition of differentiable ops.",
        "  Block and model tables: **replica (kernels)** is replica-blocks with its default `Compute::Kernels`,",
        "  **replica (composition)** the same modules under `with_compute(Compute::Composition, ..)`.",
        "",
    ]

    summary = []
    contended = set()
    skipped = defaultdict(int)
    for kernel, (what, bound, targets, impls) in KERNELS.items():
        rows = by_kernel.get(kernel)
        if not rows:
            continue
        label = labels_for(kernel)
        rust_times = [t for k, times in rust_when.items() if k[0] == kernel for t in times]
        torch_times = [t for k, times in torch_when.items() if k[0] == kernel for t in times]
        lines += [f"## {kernel}", "", what + ".", "",
                  f"Measured: criterion {fmt_span(rust_times)}; PyTorch {fmt_span(torch_times)}.", ""]
        others = [impl for impl in impls if impl != "replica"]
        header = ["shape", "threads"] + [label[impl] for impl in impls]
        header += [f"{label[impl]} / replica" for impl in others]
        if bound == "flops":
            header += ["replica GFLOP/s", "% of peak"]
        elif bound == "memory":
            header += ["% of memory bandwidth", "% of copy"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * len(header)) + "|")
        notes = []
        for (shape, threads) in sorted(rows, key=lambda k: (natural(k[0]), k[1])):
            r = rows[(shape, threads)]
            rep = r.get("replica")
            reference = rep if rep is not None else r.get("candle")
            marked = set()

            def cell(impl):
                # † marks a 2-thread time slower than the same implementation's 1-thread time.
                text = fmt_time(r.get(impl))
                single = rows.get((shape, 1), {}).get(impl)
                if r.get(impl) is None and (kernel, impl, shape) in skipped_runs:
                    return "— ‡"
                if threads > 1 and r.get(impl) and single and r[impl] > CONTENDED * single:
                    contended.add(kernel)
                    marked.add(impl)
                    return text + " †"
                return text

            cells = [shape, str(threads)] + [cell(impl) for impl in impls]
            cells += [fmt_ratio(r.get(impl), reference) if (rep is not None or impl != "candle") else "—" for impl in others]
            if bound == "flops":
                flops = torch_extra["flops"].get((kernel, shape))
                if flops and reference:
                    gflops = flops / reference / 1e9
                    cells += [f"{gflops:.1f}", f"{100 * gflops / (peak_per_core * threads):.0f}%"]
                else:
                    cells += ["—", "—"]
            elif bound == "memory":
                cells += [f"{100 * r[base] / rep:.0f}%" if r.get(base) and rep else "—" for base in ("memory", "copy")]
            lines.append("| " + " | ".join(cells) + " |")
            for other, want in targets.items():
                have = r.get(other)
                if have is None or rep is None:
                    continue
                if marked & {"replica", other}:
                    skipped[(kernel, other)] += 1
                    continue
                summary.append((kernel, shape, threads, other, want, have / rep))
        for (k, impl, shape), record in sorted(skipped_runs.items()):
            if k == kernel:
                notes.append(
                    f"‡ {label[impl]} at {shape} is not timed by criterion: one call on {record['threads']} thread took "
                    f"{record['one_call_seconds']:.1f} s (over the {record['limit_seconds']:g} s limit of benches/kernels.rs), "
                    f"{utc(record['unix_time']).strftime('%Y-%m-%d %H:%M')} UTC."
                )
        lines.append("")
        if notes:
            lines += notes + [""]

    if contended:
        note = ("† Slower with 2 threads than with 1 (by more than 20%). Either the second core was taken by "
                "other work on the shared host during that measurement, which PyTorch suffers most from (its "
                "OpenMP threads meet at a barrier, so one descheduled thread stalls the whole op for a scheduler "
                "tick, while rayon's work stealing lets the running thread take the waiting one's work), or, on "
                "small shapes, splitting the work costs more than it gains (candle's element-wise pool in the "
                "composed rows). Either way such rows say little about the kernel: the 1-thread rows are the "
                "comparison to trust. Tables with such rows: " + ", ".join(sorted(contended)) + ".")
        lines += ["## A note on the 2-thread rows", "", note, ""]

    # Targets: every (kernel, shape, threads) against each target ratio.
    names = {"candle": "candle's built-in", "torch": "PyTorch", "composed": "the plain candle composition",
             "memory": "the machine's memory bandwidth (within 2x)"}
    names_for = {"minilm_forward": {**names, "candle": "candle-transformers' BERT", "composed": "replica's composition"}}
    lines += ["## Targets", "",
              "From the issue; ratios are `other / replica` (≥ the target is met). Rows marked † on either",
              "side are left out (see the note above); `left out` counts them.", "",
              "| kernel | against | target | worst ratio (shape, threads) | met | left out |", "|---|---|---|---|---|---|"]
    missed = []
    grouped = defaultdict(list)
    for kernel, shape, threads, other, want, ratio in summary:
        grouped[(kernel, other, want)].append((ratio, shape, threads))
    for (kernel, other, want), items in grouped.items():
        name = names_for.get(kernel, names)[other]
        worst = min(items)
        met = all(r >= want for r, _, _ in items)
        lines.append(
            f"| {kernel} | {name} | ≥ {want:g}x | {worst[0]:.2f}x ({worst[1]}, {worst[2]}t) | {'yes' if met else 'no'} "
            f"| {skipped[(kernel, other)]} |"
        )
        if not met:
            misses = [f"{shape} {threads}t: {r:.2f}x ({100 * (want - r) / want:.0f}% short)" for r, shape, threads in sorted(items) if r < want]
            missed.append((kernel, other, name, want, misses))
    lines.append("")
    if missed:
        lines += ["### Where a target is missed", ""]
        for kernel, other, name, want, misses in missed:
            lines.append(f"- **{kernel}** against {name} (target ≥ {want:g}x): " + "; ".join(misses) + ".")
            limit = LIMITS.get((kernel, other), LIMITS.get(kernel))
            if limit:
                lines.append(f"  What limits it: {limit}")
        lines.append("")

    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}: {sum(len(v) for v in by_kernel.values())} rows")


if __name__ == "__main__":
    main()
