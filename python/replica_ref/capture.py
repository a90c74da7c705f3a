"""Run a torch module once and store everything a reimplementation is checked
against: weights, inputs, outputs, every submodule's output and, optionally,
gradients; then run a float64 copy of it on the same inputs (the *shadow*), so a
checker can tell the reference's own rounding error from a port's bug (see
docs/bundle-format.md).
"""

from __future__ import annotations

import contextlib
import copy
import functools
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
    shadow: bool = True,
) -> Path:
    """Call `module(*inputs, **kwargs)` once and write the bundle to `path`.

    `inputs` is one tensor or a tuple of positional arguments; non-tensor
    arguments are passed through but not stored. With `grads=True` the
    upstream gradients are standard normal from `torch.manual_seed(seed)`'s
    stream (a private generator, so the global RNG is left alone) and the loss
    is sum_o (output_o * grad_o).sum(). `producer_extra` adds fields such as
    {"transformers": "4.46.0"} to `producer`.

    With `shadow=True` (the default) a float64 copy of the module runs on the
    same inputs and upstream gradients, and its outputs, activations and
    gradients are stored under `shadow/`. When it cannot run (or `shadow=False`,
    or the module already runs in float64) the metadata's `shadow` says why.
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
    named_inputs = _named_inputs(positional, keyword)
    dtype = _compute_dtype(module, named_inputs)
    _refuse_random_outputs(module, positional, keyword)

    # Snapshot before the call: a forward pass may update buffers in place.
    tensors: dict[str, Any] = {}
    state = module.state_dict()
    for key, value in state.items():
        tensors[f"param/{key}"] = to_bundle_value(f"param/{key}", value)
    for name, value in named_inputs:
        tensors[f"input/{name}"] = to_bundle_value(f"input/{name}", value)

    twin, shadow_info = _shadow_module(module, dtype, shadow)
    rng = torch.random.get_rng_state()
    reference = _run(module, positional, keyword, grads, seed, upstream=None)
    for name, value in reference.outputs:
        tensors[f"output/{name}"] = to_bundle_value(f"output/{name}", value)
    tensors.update(reference.stored)

    if twin is not None:
        after = torch.random.get_rng_state()
        torch.random.set_rng_state(rng)  # the same dropout masks, should the module draw any
        try:
            tensors.update(_run_shadow(twin, positional, keyword, grads, seed, reference))
        except ShadowUnavailable as why:
            shadow_info = {"skipped": str(why)}
        torch.random.set_rng_state(after)

    producer = {"name": "torch", "version": torch.__version__, **(producer_extra or {})}
    metadata = {
        "format_version": FORMAT_VERSION,
        "component": component or component_name(type(module)),
        "config": {} if config is None else config,
        "producer": producer,
        "dtype": dtype,
        "seed": seed,
        "activations": [name for name, _ in reference.activations],
        "inputs": [name for name, _ in named_inputs],
        "outputs": [name for name, _ in reference.outputs],
        "shadow": shadow_info,
    }
    return write_bundle(path, tensors, metadata, overwrite=overwrite)


def _refuse_random_outputs(module: torch.nn.Module, positional: list[Any], keyword: Mapping[str, Any]) -> None:
    """A module left in training mode whose dropout is active gives outputs no port
    can reproduce, and a failed check would blame the port: two runs of a copy
    from different random states must agree."""
    if not any(m.training for m in module.modules()):
        return
    probe = copy.deepcopy(module)
    state = torch.random.get_rng_state()
    runs = []
    try:
        for seed in (0, 1):
            torch.manual_seed(seed)
            with torch.no_grad():
                runs.append(_outputs_by_name(probe(*positional, **keyword)))
    finally:
        torch.random.set_rng_state(state)
    for (name, first), (_, second) in zip(*runs):
        if not torch.equal(first, second):
            raise ValueError(
                f"{type(module).__name__} is in training mode and its output {name!r} is random "
                "(dropout): call module.eval() before capture"
            )


def _named_inputs(positional: list[Any], keyword: Mapping[str, Any]) -> list[tuple[str, torch.Tensor]]:
    named = [(str(i), v) for i, v in enumerate(positional) if isinstance(v, torch.Tensor)]
    return named + [(k, v) for k, v in keyword.items() if isinstance(v, torch.Tensor)]


class _Run:
    """What one forward (and backward) pass gave: tensors still as torch tensors
    except `stored`, the bundle values of the activations and gradients."""

    def __init__(self) -> None:
        self.outputs: list[tuple[str, torch.Tensor]] = []
        self.activations: list[tuple[str, Any]] = []
        self.upstream: dict[str, torch.Tensor] = {}
        self.stored: dict[str, Any] = {}


def _run(
    module: torch.nn.Module,
    positional: list[Any],
    keyword: Mapping[str, Any],
    grads: bool,
    seed: int | None,
    upstream: Mapping[str, torch.Tensor] | None,
    store: Any = None,
    prefix: str = "",
) -> _Run:
    """Runs the module with forward hooks on every submodule; `store` turns a
    recorded tensor into its bundle value (copied at once: a later in-place op
    must not change what was recorded), and keys get `prefix`."""
    store = store or to_bundle_value
    run = _Run()
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
                key = f"{prefix}act/{name}"
                run.activations.append((name, value))
                if (value := store(key, value)) is not None:
                    run.stored[key] = value

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
    run.outputs = _outputs_by_name(result)
    if grads:
        named_inputs = _named_inputs(positional, keyword)
        run.upstream, found = _gradients(module, named_inputs, run.outputs, seed, upstream)
        for key, grad in found.items():
            if (value := store(f"{prefix}{key}", grad)) is not None:
                run.stored[f"{prefix}{key}"] = value
        if not prefix:
            for name, value in run.upstream.items():
                run.stored[f"grad/output/{name}"] = to_bundle_value(f"grad/output/{name}", value)
    return run


class ShadowUnavailable(Exception):
    """Why a module has no float64 shadow; the text goes into the metadata."""


def _shadow_module(module: torch.nn.Module, dtype: str, wanted: bool) -> tuple[Any, dict[str, str]]:
    """A float64 copy of `module` taken before the reference runs (a forward
    pass may update buffers), or None and the reason there is none."""
    if not wanted:
        return None, {"skipped": "turned off by the caller (shadow=False)"}
    if dtype == "float64":
        return None, {"skipped": "the reference already runs in float64"}
    try:
        return copy.deepcopy(module).double(), {"dtype": "float64"}
    except Exception as exc:  # a module holding something deepcopy refuses
        return None, {"skipped": f"the module cannot be copied: {type(exc).__name__}: {exc}"}


def _run_shadow(
    twin: torch.nn.Module,
    positional: list[Any],
    keyword: Mapping[str, Any],
    grads: bool,
    seed: int | None,
    reference: _Run,
) -> dict[str, Any]:
    """The `shadow/` tensors: the float64 twin on the reference's inputs (widened
    exactly) and upstream gradients, every floating tensor the reference stored."""

    def widen(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.detach().to(torch.float64).requires_grad_(value.requires_grad)
        return value

    def store(key: str, value: torch.Tensor) -> Any:
        if not value.is_floating_point():
            return None  # integers have no rounding to measure: compared exactly
        return value.detach().to("cpu", torch.float64).contiguous().numpy().copy()

    upstream = {name: t.detach().to(torch.float64) for name, t in reference.upstream.items()}
    try:
        with _float64_compute():
            shadow = _run(
                twin, [widen(v) for v in positional], {k: widen(v) for k, v in keyword.items()},
                grads, seed, upstream, store=store, prefix="shadow/",
            )
    except Exception as exc:
        raise ShadowUnavailable(f"the module cannot run in float64: {type(exc).__name__}: {exc}") from exc
    names = [n for n, _ in reference.activations], [n for n, _ in reference.outputs]
    if names != ([n for n, _ in shadow.activations], [n for n, _ in shadow.outputs]):
        raise ShadowUnavailable("the float64 run recorded other activations or outputs than the reference")
    for name, value in shadow.outputs:
        if (stored := store(f"shadow/output/{name}", value)) is not None:
            shadow.stored[f"shadow/output/{name}"] = stored
    for key, value in shadow.stored.items():
        ref_shape = _reference_shape(key, reference)
        if ref_shape is not None and tuple(value.shape) != ref_shape:
            raise ShadowUnavailable(f"the float64 run gave {key} the shape {tuple(value.shape)}, not {ref_shape}")
    return shadow.stored


def _reference_shape(key: str, reference: _Run) -> tuple[int, ...] | None:
    name = key.removeprefix("shadow/")
    for ns, items in (("output/", reference.outputs), ("act/", reference.activations)):
        if name.startswith(ns):
            found = dict(items).get(name[len(ns):])
            return None if found is None else tuple(found.shape)
    value = reference.stored.get(name)
    return None if value is None else tuple(value.shape)


@contextlib.contextmanager
def _float64_compute():
    """Inside, float32 requested anywhere (`.float()`, `.to(torch.float32)`, a factory's
    `dtype=`, `softmax(..., dtype=torch.float32)`) means float64, so code that upcasts
    "to be safe" (HF norms, rotary tables, attention softmax) stays in float64.

    Explicit float16/bfloat16 casts are kept: a reference that rounds to half precision
    on purpose does so in its shadow too, and a port that skips the rounding is caught.
    """

    def widen(value: Any) -> Any:
        return torch.float64 if value == torch.float32 else value

    def retyped(f):
        @functools.wraps(f)
        def call(*args, **kwargs):
            args = tuple(widen(a) if isinstance(a, torch.dtype) else a for a in args)
            if isinstance(kwargs.get("dtype"), torch.dtype):
                kwargs["dtype"] = widen(kwargs["dtype"])
            return f(*args, **kwargs)

        return call

    def to_double(_f):
        return lambda self, *args, **kwargs: self.double()

    patches = [(torch.Tensor, name, retyped) for name in (
        "to", "type", "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor",
        "softmax", "log_softmax", "sum", "mean", "cumsum", "prod",
    )]
    patches += [(torch.Tensor, "float", to_double)]
    patches += [(torch, name, retyped) for name in (
        "zeros", "ones", "full", "empty", "arange", "tensor", "as_tensor", "linspace",
        "zeros_like", "ones_like", "full_like", "empty_like", "softmax", "log_softmax", "cumsum",
    )]
    patches += [(torch.nn.functional, name, retyped) for name in ("softmax", "log_softmax")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    default = torch.get_default_dtype()
    try:
        for owner, name, wrap in patches:
            setattr(owner, name, wrap(getattr(owner, name)))
        torch.set_default_dtype(torch.float64)
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        torch.set_default_dtype(default)


def _gradients(
    module: torch.nn.Module,
    inputs: list[tuple[str, torch.Tensor]],
    outputs: list[tuple[str, torch.Tensor]],
    seed: int,
    upstream: Mapping[str, torch.Tensor] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The upstream gradients (drawn from `seed` unless given) and the
    grad/param/ and grad/input/ tensors of the seeded loss."""
    generator = torch.Generator().manual_seed(seed)  # same stream as torch.manual_seed(seed)
    drawn: dict[str, torch.Tensor] = {}
    loss_terms = []
    for name, out in outputs:
        if not out.is_floating_point():
            continue
        if upstream is None:
            # Drawn in float32 on the CPU so the values do not depend on device or dtype.
            grad = torch.randn(out.shape, generator=generator, dtype=torch.float32)
            grad = grad.to(device=out.device, dtype=out.dtype)
        else:
            grad = upstream[name].to(device=out.device, dtype=out.dtype)
        drawn[name] = grad
        if out.requires_grad:
            loss_terms.append((out * grad).sum())

    # Every state_dict key that is a trainable parameter (tied weights included).
    params = dict(module.named_parameters(remove_duplicate=False))
    state = module.state_dict(keep_vars=True)
    targets = [(f"grad/param/{k}", params[k]) for k in state if k in params and params[k].requires_grad]
    targets += [
        (f"grad/input/{name}", t) for name, t in inputs if t.is_floating_point() and t.requires_grad
    ]
    found: tuple[Any, ...] = (None,) * len(targets)
    if targets and loss_terms:
        loss = torch.stack([term.float() for term in loss_terms]).sum()
        found = torch.autograd.grad(loss, [t for _, t in targets], allow_unused=True)
    grads = {}
    for (key, target), grad in zip(targets, found):
        # A tensor the outputs do not depend on has a gradient of zero.
        grads[key] = torch.zeros_like(target) if grad is None else grad
    return drawn, grads
