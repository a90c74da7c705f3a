"""capture() against real torch modules: names, order, gradients, low precision."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from replica_ref import RawTensor, capture, read_bundle  # noqa: E402


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))


def test_sequential_records_params_inputs_outputs_activations(tmp_path):
    model = mlp()
    x = torch.randn(3, 8)
    path = capture(model, x, tmp_path / "mlp.safetensors", config={"hidden": 16})
    tensors, meta = read_bundle(path)

    assert meta["component"] == "torch.nn.Sequential"
    assert meta["config"] == {"hidden": 16}
    assert meta["producer"] == {"name": "torch", "version": torch.__version__}
    assert meta["dtype"] == "float32" and meta["seed"] == 0
    assert meta["activations"] == ["0", "1", "2"]
    assert meta["inputs"] == ["0"] and meta["outputs"] == ["0"]
    reference = {"output/0", "act/0", "act/1", "act/2"}
    assert set(tensors) == {
        "param/0.weight", "param/0.bias", "param/2.weight", "param/2.bias", "input/0",
    } | reference | {f"shadow/{key}" for key in reference}
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(tensors[f"param/{key}"], value.numpy())
    np.testing.assert_array_equal(tensors["input/0"], x.numpy())
    h = model[0](x)
    np.testing.assert_array_equal(tensors["act/0"], h.detach().numpy())
    np.testing.assert_array_equal(tensors["act/1"], model[1](h).detach().numpy())
    np.testing.assert_array_equal(tensors["output/0"], model(x).detach().numpy())
    np.testing.assert_array_equal(tensors["act/2"], tensors["output/0"])


class Twice(nn.Module):
    """Calls one submodule twice and returns a tuple with a gap."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x, scale=None):
        y = self.act(self.proj(x))
        y = self.proj(y)
        if scale is not None:
            y = y * scale
        return y, None, x.sum()


def test_repeated_calls_and_tuple_outputs(tmp_path):
    torch.manual_seed(1)
    model = Twice()
    x, scale = torch.randn(2, 4), torch.tensor(0.5)
    path = capture(model, (x,), tmp_path / "t.safetensors", kwargs={"scale": scale})
    tensors, meta = read_bundle(path)

    assert meta["component"].endswith("Twice")
    assert meta["activations"] == ["proj", "act", "proj#1"]
    assert meta["inputs"] == ["0", "scale"] and meta["outputs"] == ["0", "2"]
    np.testing.assert_array_equal(tensors["input/scale"], scale.numpy())
    first = model.proj(x)
    np.testing.assert_array_equal(tensors["act/proj"], first.detach().numpy())
    np.testing.assert_array_equal(tensors["act/proj#1"], model.proj(first.relu()).detach().numpy())


class Pair(nn.Module):
    def forward(self, x):
        return x + 1, None, x * 2


class UsesPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = Pair()

    def forward(self, x):
        a, _, b = self.pair(x)
        a2, _, _ = self.pair(a)
        return {"sum": a2 + b, "count": torch.tensor(3)}


def test_submodule_tuple_outputs_and_dict_outputs(tmp_path):
    x = torch.randn(3)
    tensors, meta = read_bundle(capture(UsesPair(), x, tmp_path / "p.safetensors", grads=True))
    assert meta["activations"] == ["pair:0", "pair:2", "pair#1:0", "pair#1:2"]
    assert meta["outputs"] == ["sum", "count"]
    np.testing.assert_array_equal(tensors["act/pair:2"], (x * 2).numpy())
    assert tensors["output/count"].dtype == np.int64
    assert "grad/output/sum" in tensors and "grad/output/count" not in tensors


def test_grads_match_manual_autograd(tmp_path):
    model = mlp()
    x = torch.randn(3, 8)
    tensors, meta = read_bundle(capture(model, x, tmp_path / "g.safetensors", grads=True, seed=7))
    assert meta["seed"] == 7

    torch.manual_seed(7)
    upstream = torch.randn(3, 4)
    np.testing.assert_array_equal(tensors["grad/output/0"], upstream.numpy())

    xr = x.clone().requires_grad_(True)
    (model(xr) * upstream).sum().backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(tensors[f"grad/param/{name}"], p.grad.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tensors["grad/input/0"], xr.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_capture_leaves_the_caller_alone(tmp_path):
    model = mlp()
    x = torch.randn(3, 8)
    state = torch.random.get_rng_state()
    capture(model, x, tmp_path / "a.safetensors", grads=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not x.requires_grad and x.grad is None
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_hooks_removed_after_error(tmp_path):
    model = mlp()
    with pytest.raises(RuntimeError):
        capture(model, torch.randn(3, 5), tmp_path / "bad.safetensors")
    assert all(not m._forward_hooks for m in model.modules())
    assert not (tmp_path / "bad.safetensors").exists()


def test_in_place_ops_do_not_change_recorded_activations(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
    x = torch.randn(5, 4)
    tensors, _ = read_bundle(capture(model, x, tmp_path / "r.safetensors"))
    np.testing.assert_array_equal(tensors["act/0"], model[0](x).detach().numpy())
    assert (tensors["act/0"] < 0).any()


def test_bf16_round_trip(tmp_path):
    model = mlp().to(torch.bfloat16)
    x = torch.randn(3, 8).to(torch.bfloat16)
    tensors, meta = read_bundle(capture(model, x, tmp_path / "bf16.safetensors", grads=True))
    assert meta["dtype"] == "bfloat16"
    out = model(x)
    for key, expected in [("param/0.weight", model[0].weight), ("input/0", x), ("output/0", out)]:
        raw = tensors[key]
        assert isinstance(raw, RawTensor) and raw.dtype == "BF16"
        bits = expected.detach().view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(raw.bits(), bits)
        np.testing.assert_array_equal(raw.to_numpy(), expected.detach().float().numpy())
    assert tensors["grad/param/0.weight"].dtype == "BF16"


def test_bf16_readable_by_official_torch_loader(tmp_path):
    from safetensors.torch import load_file

    model = mlp().to(torch.bfloat16)
    x = torch.randn(3, 8).to(torch.bfloat16)
    path = capture(model, x, tmp_path / "bf16.safetensors")
    loaded = load_file(str(path))
    assert loaded["param/0.weight"].dtype == torch.bfloat16
    assert torch.equal(loaded["param/0.weight"], model[0].weight.detach())
    assert torch.equal(loaded["output/0"], model(x).detach())


def test_f16_module(tmp_path):
    torch.manual_seed(0)
    ln = nn.LayerNorm(8).half()
    x = torch.randn(2, 8).half()
    tensors, meta = read_bundle(capture(ln, x, tmp_path / "f16.safetensors"))
    assert meta["dtype"] == "float16" and meta["component"] == "torch.nn.LayerNorm"
    assert tensors["output/0"].dtype == np.float16
    np.testing.assert_array_equal(tensors["output/0"], ln(x).detach().numpy())


def test_producer_extra_and_component(tmp_path):
    path = capture(
        nn.Identity(), torch.ones(2), tmp_path / "i.safetensors",
        component="demo.Identity", producer_extra={"transformers": "4.46.0"}, seed=None,
    )
    _, meta = read_bundle(path)
    assert meta["component"] == "demo.Identity" and meta["seed"] is None
    assert meta["producer"]["transformers"] == "4.46.0"
    assert json.loads(json.dumps(meta)) == meta


def test_capture_refuses_to_overwrite(tmp_path):
    path = capture(nn.Identity(), torch.ones(2), tmp_path / "i.safetensors")
    with pytest.raises(FileExistsError):
        capture(nn.Identity(), torch.zeros(2), path)
    capture(nn.Identity(), torch.zeros(2), path, overwrite=True)
    np.testing.assert_array_equal(read_bundle(path)[0]["input/0"], np.zeros(2, np.float32))


# ---- the float64 shadow ---------------------------------------------------------


class Upcasts(nn.Module):
    """Upcasts "for safety" as HF norms do, then rounds to bfloat16 on purpose."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        y = self.proj(x).float().exp()
        return y, y.to(torch.bfloat16).to(y.dtype)


def test_shadow_holds_float64_twins_of_what_the_reference_computed(tmp_path):
    model = mlp()
    x = torch.randn(3, 8)
    tensors, meta = read_bundle(capture(model, x, tmp_path / "s.safetensors", grads=True))
    assert meta["shadow"] == {"dtype": "float64"}
    shadowed = sorted(k.removeprefix("shadow/") for k in tensors if k.startswith("shadow/"))
    assert shadowed == sorted(k for k in tensors if k.split("/")[0] in ("output", "act")
                              or k.startswith(("grad/param/", "grad/input/")))
    twin = {k: v.double() for k, v in model.state_dict().items()}
    model64 = mlp().double()
    model64.load_state_dict(twin)
    x64 = x.double().requires_grad_(True)
    out = model64(x64)
    np.testing.assert_array_equal(tensors["shadow/output/0"], out.detach().numpy())
    assert tensors["shadow/output/0"].dtype == np.float64
    (out * torch.from_numpy(tensors["grad/output/0"]).double()).sum().backward()
    np.testing.assert_allclose(tensors["shadow/grad/input/0"], x64.grad.numpy(), rtol=1e-12)
    # The reference differs from its shadow by float32 rounding only.
    np.testing.assert_allclose(tensors["output/0"], tensors["shadow/output/0"], rtol=1e-5, atol=1e-6)


def test_shadow_widens_float32_upcasts_and_keeps_half_precision_rounding(tmp_path):
    torch.manual_seed(0)
    model, x = Upcasts(), torch.randn(2, 4)
    tensors, _ = read_bundle(capture(model, x, tmp_path / "u.safetensors"))
    w, b = model.proj.weight.detach().double(), model.proj.bias.detach().double()
    exact = torch.exp(x.double() @ w.T + b)
    np.testing.assert_allclose(tensors["shadow/output/0"], exact.numpy(), rtol=1e-14)
    rounded = exact.to(torch.bfloat16).double()
    np.testing.assert_array_equal(tensors["shadow/output/1"], rounded.numpy())


def test_shadow_can_be_turned_off_and_says_why_it_is_missing(tmp_path):
    tensors, meta = read_bundle(capture(mlp(), torch.randn(3, 8), tmp_path / "n.safetensors", shadow=False))
    assert meta["shadow"] == {"skipped": "turned off by the caller (shadow=False)"}
    assert not any(k.startswith("shadow/") for k in tensors)
    _, meta = read_bundle(capture(mlp().double(), torch.randn(3, 8).double(), tmp_path / "d.safetensors"))
    assert meta["shadow"] == {"skipped": "the reference already runs in float64"}


class NoFloat64(nn.Module):
    def forward(self, x):
        if x.dtype == torch.float64:
            raise TypeError("float64 is not supported here")
        return x * 2


def test_a_module_that_cannot_run_in_float64_is_captured_without_shadow(tmp_path):
    tensors, meta = read_bundle(capture(NoFloat64(), torch.randn(3), tmp_path / "f.safetensors"))
    assert meta["shadow"]["skipped"].startswith("the module cannot run in float64: TypeError")
    assert "output/0" in tensors and not any(k.startswith("shadow/") for k in tensors)


def test_shadow_of_a_bf16_reference_starts_from_its_exact_weights(tmp_path):
    model = mlp().to(torch.bfloat16)
    x = torch.randn(3, 8).to(torch.bfloat16)
    tensors, _ = read_bundle(capture(model, x, tmp_path / "b.safetensors"))
    model64 = mlp().double()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    np.testing.assert_allclose(tensors["shadow/output/0"], model64(x.double()).detach().numpy(), rtol=1e-12)


def test_a_module_whose_training_mode_output_is_random_is_refused(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="training mode .* random .*module.eval"):
        capture(module, x, tmp_path / "train.safetensors")
    # Deterministic in training mode (no active dropout), or in eval mode: captured.
    capture(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.0)), x, tmp_path / "p0.safetensors")
    capture(module.eval(), x, tmp_path / "eval.safetensors")
