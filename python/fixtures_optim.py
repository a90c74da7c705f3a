"""Write the optimiser fixture: a few steps of the real torch.optim.AdamW, with and
without torch.nn.utils.clip_grad_norm_, for replica_blocks::FusedAdamW's test.

    python python/fixtures_optim.py                # writes tests/fixtures/optim/adamw.safetensors
    python python/fixtures_optim.py --out DIR      # or DIR/adamw.safetensors

Two runs of STEPS steps over three parameters in two groups (a matrix with weight
decay 0.1; a vector and a table with none), the gradients given (seeded random
values, some exactly zero so that `eps` decides those elements, one step with
small gradients that clipping leaves alone, and the table without a gradient at
step 2, which torch skips without counting its step):

- `plain`: AdamW with eps 1e-3 (large, so that its place in the formula shows);
- `clip`: clip_grad_norm_(params, 1.0) before each AdamW step, eps 1e-8.

Tensors: `<run>.init.<param>` (f32), `<run>.grad.<step>.<param>` (f32, absent when
the parameter has no gradient at that step), `<run>.after.<step>.<param>` (the
parameter after that step, torch in f32) and `<run>.after64.<step>.<param>` (the
same run in float64 from the same values: the shadow that tells the f32 rounding
noise from a wrong formula). Metadata `fixture`, JSON: `runs` (each run's
hyperparameters and groups), `defaults` (torch.optim.AdamW's own defaults, read
from its signature) and `torch` (the version).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_script import run  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "optim"
STEPS = 4
SHAPES = {"w": (8, 6), "b": (6,), "e": (5, 4)}
GROUPS = [(["w"], 0.1), (["b", "e"], 0.0)]
RUNS = {
    "plain": {"lr": 0.05, "betas": [0.9, 0.95], "eps": 1e-3, "max_norm": None},
    "clip": {"lr": 0.05, "betas": [0.9, 0.95], "eps": 1e-8, "max_norm": 1.0},
}


def gradients(generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    steps = []
    for step in range(1, STEPS + 1):
        grads = {}
        for name, shape in SHAPES.items():
            if name == "e" and step == 2:
                continue  # no gradient: torch skips the parameter and does not count its step
            g = torch.randn(shape, generator=generator)
            g[torch.rand(shape, generator=generator) < 0.2] = 0.0  # eps alone decides these
            if step == 3:
                g = g * 0.01  # under max_norm: clipping must leave these alone
            grads[name] = g
        steps.append(grads)
    return steps


def train(init: dict, grads: list, config: dict, dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    params = {name: torch.nn.Parameter(t.to(dtype).clone()) for name, t in init.items()}
    groups = [{"params": [params[n] for n in names], "weight_decay": wd} for names, wd in GROUPS]
    optimizer = torch.optim.AdamW(groups, lr=config["lr"], betas=tuple(config["betas"]), eps=config["eps"])
    after = []
    for step_grads in grads:
        for name, p in params.items():
            p.grad = step_grads[name].to(dtype).clone() if name in step_grads else None
        if config["max_norm"] is not None:
            torch.nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None], config["max_norm"])
        optimizer.step()
        after.append({name: p.detach().clone() for name, p in params.items()})
    return after


def build(out: Path) -> list[Path]:
    generator = torch.Generator().manual_seed(20260517)
    tensors, runs = {}, {}
    for run_name, config in RUNS.items():
        init = {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}
        grads = gradients(generator)
        for name, t in init.items():
            tensors[f"{run_name}.init.{name}"] = t
        for step, step_grads in enumerate(grads, start=1):
            for name, g in step_grads.items():
                tensors[f"{run_name}.grad.{step}.{name}"] = g
        for key, dtype in (("after", torch.float32), ("after64", torch.float64)):
            for step, params in enumerate(train(init, grads, config, dtype), start=1):
                for name, p in params.items():
                    tensors[f"{run_name}.{key}.{step}.{name}"] = p
        runs[run_name] = {**config, "steps": STEPS, "groups": [{"params": names, "weight_decay": wd} for names, wd in GROUPS]}
    signature = inspect.signature(torch.optim.AdamW.__init__).parameters
    defaults = {name: signature[name].default for name in ("lr", "betas", "eps", "weight_decay", "amsgrad")}
    defaults["lr"] = float(defaults["lr"])
    defaults["betas"] = list(defaults["betas"])
    # One metadata entry: safetensors writes several in no fixed order, and the file must be byte-identical run to run.
    metadata = {"fixture": json.dumps({"runs": runs, "defaults": defaults, "torch": torch.__version__}, sort_keys=True)}
    path = out / "adamw.safetensors"
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(path), metadata=metadata)
    return [path]


if __name__ == "__main__":
    run(build, __doc__, DEFAULT_OUT)
