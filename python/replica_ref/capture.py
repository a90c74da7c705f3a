"""Run a torch module once and store everything a reimplementation is checked
against: weights, inputs, outputs, every submodule's output and, optionally,
gradients (see docs/bundle-format.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bundle import FORMAT_VERSION, BundleError, RawTensor, write_bundle

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
}


def to_bundle_value(key: str, tensor: torch.Tensor) -> Any:
    """A detached, contiguous CPU copy that write_bundle accepts (bf16 as raw bits).

    It is a copy so that later in-place updates (an in-place activation, a
    running-stat buffer) cannot change what was recorded.
    """
    t = tensor.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return RawTensor.bf16(t.view(torch.int16).numpy().view(np.uint16))
    try:
        return t.numpy().copy()
    except TypeError as exc:
        raise BundleError(f"tensor {key!r}: dtype {t.dtype} cannot be stored") from exc


def component_name(cls: type) -> str:
    """The shortest public dotted name of a class: `torch.nn.LayerNorm` rather
    than `torch.nn.modules.normalization.LayerNorm`."""
    parts = cls.__module__.split(".")
    for n in range(1, len(parts) + 1):
        prefix = ".".join(parts[:n])
        module = sys.modules.get(prefix)
        try:
            found = getattr(module, cls.__qualname__, None) if module is not None else None
        except Exception:  # lazy modules may fail to import an optional backend
            found = None
        if found is cls:
            return f"{prefix}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _named_items(value: Any) -> list[tuple[str, Any]]:
    """(suffix, element) pairs of a tuple/list (by index) or mapping (by key).

    Anything that is not a tensor is skipped; its index is not reused, so the
    numbering keeps the Python positions (None leaves a gap).
    """
    if isinstance(value, Mapping):  # dict and HF ModelOutput
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return []
    return [(name, v) for name, v in items if isinstance(v, torch.Tensor)]


def _outputs_by_name(output: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(output, torch.Tensor):
        return [("0", output)]
    return _named_items(output)


def _compute_dtype(module: torch.nn.Module, inputs: list[tuple[str, torch.Tensor]]) -> str:
    candidates = [p for p in module.parameters()] + [t for _, t in inputs]
    for t in candidates:
        if t.is_floating_point():
            if t.dtype not in _DTYPE_NAMES:
                raise BundleError(f"unsupported compute dtype {t.dtype}")
            return _DTYPE_NAMES[t.dtype]
    return "float32"


def capture(
    module: torch.nn.Module,
    inputs: Any,
    path: str | os.PathLike,
    *,
    config: Any = None,
    component: str | None = None,
    grads: bool = False,
    seed: int | None = 0,
    kwargs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    producer_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Call `module(*inputs, **kwargs)` once and write the bundle to `path`.

    `inputs` is one tensor or a tuple of positional arguments; non-tensor
    arguments are passed through but not stored. With `grads=True` the
    upstream gradients are standard normal from `torch.manual_seed(seed)`'s
    stream (a private generator, so the global RNG is left alone) and the loss
    is sum_o (output_o * grad_o).sum(). `producer_extra` adds fields such as
    {"transformers": "4.46.0"} to `producer`.
    """
    if Path(path).exists() and not overwrite:  # before a possibly long forward pass
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    positional = list(inputs) if isinstance(inputs, tuple) else [inputs]
    keyword = dict(kwargs or {})
    if grads and seed is None:
        raise ValueError("grads=True needs an integer seed for the upstream gradients")

    # Leaf copies of floating inputs, so autograd can give dL/d(input).
    def prepare(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.detach().clone()
            if grads and value.is_floating_point():
                value.requires_grad_(True)
        return value

    positional = [prepare(v) for v in positional]
    keyword = {k: prepare(v) for k, v in keyword.items()}
    named_inputs = [(str(i), v) for i, v in enumerate(positional) if isinstance(v, torch.Tensor)]
    named_inputs += [(k, v) for k, v in keyword.items() if isinstance(v, torch.Tensor)]

    # Snapshot before the call: a forward pass may update buffers in place.
    tensors: dict[str, Any] = {}
    state = module.state_dict()
    for key, value in state.items():
        tensors[f"param/{key}"] = to_bundle_value(f"param/{key}", value)
    for name, value in named_inputs:
        tensors[f"input/{name}"] = to_bundle_value(f"input/{name}", value)

    activations: list[str] = []
    calls: dict[str, int] = {}

    def make_hook(path_name: str):
        def hook(_module, _args, output):
            k = calls.get(path_name, 0)
            calls[path_name] = k + 1
            base = path_name if k == 0 else f"{path_name}#{k}"
            if isinstance(output, torch.Tensor):
                items = [(base, output)]
            else:
                items = [(f"{base}:{i}", v) for i, v in _named_items(output)]
            for name, value in items:
                tensors[f"act/{name}"] = to_bundle_value(f"act/{name}", value)
                activations.append(name)

        return hook

    handles = [
        sub.register_forward_hook(make_hook(name))
        for name, sub in module.named_modules()
        if name  # the root's output is output/, not act/
    ]
    try:
        with torch.enable_grad() if grads else torch.no_grad():
            result = module(*positional, **keyword)
    finally:
        for handle in handles:
            handle.remove()

    outputs = _outputs_by_name(result)
    for name, value in outputs:
        tensors[f"output/{name}"] = to_bundle_value(f"output/{name}", value)

    if grads:
        tensors.update(_gradients(module, state, named_inputs, outputs, seed))

    producer = {"name": "torch", "version": torch.__version__, **(producer_extra or {})}
    metadata = {
        "format_version": FORMAT_VERSION,
        "component": component or component_name(type(module)),
        "config": {} if config is None else config,
        "producer": producer,
        "dtype": _compute_dtype(module, named_inputs),
        "seed": seed,
        "activations": activations,
        "inputs": [name for name, _ in named_inputs],
        "outputs": [name for name, _ in outputs],
    }
    return write_bundle(path, tensors, metadata, overwrite=overwrite)


def _gradients(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    inputs: list[tuple[str, torch.Tensor]],
    outputs: list[tuple[str, torch.Tensor]],
    seed: int,
) -> dict[str, Any]:
    """grad/output/, grad/param/ and grad/input/ tensors for the seeded loss."""
    tensors: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(seed)  # same stream as torch.manual_seed(seed)
    loss_terms = []
    for name, out in outputs:
        if not out.is_floating_point():
            continue
        # Drawn in float32 on the CPU so the values do not depend on device or dtype.
        upstream = torch.randn(out.shape, generator=generator, dtype=torch.float32)
        upstream = upstream.to(device=out.device, dtype=out.dtype)
        tensors[f"grad/output/{name}"] = to_bundle_value(f"grad/output/{name}", upstream)
        if out.requires_grad:
            loss_terms.append((out * upstream).sum())

    # Every state_dict key that is a trainable parameter (tied weights included).
    params = dict(module.named_parameters(remove_duplicate=False))
    targets = [(f"grad/param/{k}", params[k]) for k in state if k in params and params[k].requires_grad]
    targets += [
        (f"grad/input/{name}", t) for name, t in inputs if t.is_floating_point() and t.requires_grad
    ]
    if not targets:
        return tensors

    found: tuple[Any, ...] = (None,) * len(targets)
    if loss_terms:
        loss = torch.stack([term.float() for term in loss_terms]).sum()
        found = torch.autograd.grad(loss, [t for _, t in targets], allow_unused=True)
    for (key, target), grad in zip(targets, found):
        # A tensor the outputs do not depend on has a gradient of zero.
        grad = torch.zeros_like(target) if grad is None else grad
        tensors[key] = to_bundle_value(key, grad)
    return tensors
