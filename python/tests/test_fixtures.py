"""The committed fixtures in tests/fixtures/ are valid bundles and hold what
their names promise: recomputed here from their own params and inputs."""

import math
from pathlib import Path

import numpy as np
import pytest

from replica_ref import RawTensor, read_bundle

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
NAMES = [
    "linear", "layer_norm", "softmax", "gelu_erf", "gelu_tanh",
    "multihead_attention", "layer_norm_f16", "layer_norm_bf16", "two_layer_mlp",
]


def load(name):
    path = FIXTURES / f"{name}.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not generated (python python/generate_fixtures.py)")
    tensors, meta = read_bundle(path)
    as_f64 = {k: (v.to_numpy() if isinstance(v, RawTensor) else v).astype(np.float64) for k, v in tensors.items()}
    return as_f64, meta


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_is_a_valid_tiny_bundle(name):
    path = FIXTURES / f"{name}.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not generated")
    assert path.stat().st_size < 64 * 1024
    tensors, meta = load(name)
    assert meta["inputs"] == ["0"]
    if meta["dtype"] == "float32":
        assert {f"grad/output/{o}" for o in meta["outputs"]} <= set(tensors)
        assert "grad/input/0" in tensors


def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu_erf(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def test_linear():
    t, _ = load("linear")
    x, w, b, g = t["input/0"], t["param/weight"], t["param/bias"], t["grad/output/0"]
    close(t["output/0"], x @ w.T + b)
    close(t["grad/input/0"], g @ w)
    close(t["grad/param/weight"], np.einsum("bso,bsi->oi", g, x))
    close(t["grad/param/bias"], g.sum((0, 1)))


def test_layer_norm_and_low_precision_copies():
    t, meta = load("layer_norm")
    assert meta["config"]["eps"] == 1e-5
    assert not np.allclose(t["param/weight"], 1) and not np.allclose(t["param/bias"], 0)
    close(t["output/0"], layer_norm(t["input/0"], t["param/weight"], t["param/bias"]))
    for name, tol in [("layer_norm_f16", 1e-2), ("layer_norm_bf16", 6e-2)]:
        low, meta = load(name)
        assert meta["dtype"] == {"layer_norm_f16": "float16", "layer_norm_bf16": "bfloat16"}[name]
        assert not any(k.startswith("grad/") for k in low)
        close(low["input/0"], t["input/0"], tol)
        close(low["output/0"], layer_norm(low["input/0"], low["param/weight"], low["param/bias"]), tol * 4)


def test_softmax():
    t, _ = load("softmax")
    x = t["input/0"]
    e = np.exp(x - x.max(-1, keepdims=True))
    close(t["output/0"], e / e.sum(-1, keepdims=True))
    assert np.abs(x).max() > 4  # scaled by 3


def test_gelu():
    t, _ = load("gelu_erf")
    x = t["input/0"]
    assert x.min() < -5 and x.max() > 5
    close(t["output/0"], gelu_erf(x))
    t, _ = load("gelu_tanh")
    x = t["input/0"]
    close(t["output/0"], 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))))


def test_two_layer_mlp_activations():
    t, meta = load("two_layer_mlp")
    assert meta["activations"] == ["0", "1", "2"]
    h = t["input/0"] @ t["param/0.weight"].T + t["param/0.bias"]
    close(t["act/0"], h)
    close(t["act/1"], gelu_erf(h))
    close(t["output/0"], t["act/1"] @ t["param/2.weight"].T + t["param/2.bias"])


def test_multihead_attention():
    t, meta = load("multihead_attention")
    assert meta["outputs"] == ["0", "1"]
    assert meta["activations"] == ["attn:0", "attn:1"]
    x, heads = t["input/0"], meta["config"]["num_heads"]
    batch, seq, dim = x.shape
    q, k, v = np.split(x @ t["param/attn.in_proj_weight"].T + t["param/attn.in_proj_bias"], 3, -1)
    split = lambda a: a.reshape(batch, seq, heads, dim // heads).transpose(0, 2, 1, 3)  # noqa: E731
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(dim // heads)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    ctx = (weights @ split(v)).transpose(0, 2, 1, 3).reshape(batch, seq, dim)
    close(t["output/1"], weights)
    close(t["output/0"], ctx @ t["param/attn.out_proj.weight"].T + t["param/attn.out_proj.bias"])


def test_gradients_match_torch():
    torch = pytest.importorskip("torch")
    t, _ = load("multihead_attention")
    attn = torch.nn.MultiheadAttention(16, 4, bias=True, batch_first=True).double()
    attn.load_state_dict({k[len("param/attn."):]: torch.tensor(v) for k, v in t.items() if k.startswith("param/")})
    x = torch.tensor(t["input/0"], requires_grad=True)
    out, weights = attn(x, x, x, need_weights=True, average_attn_weights=False)
    loss = (out * torch.tensor(t["grad/output/0"])).sum() + (weights * torch.tensor(t["grad/output/1"])).sum()
    loss.backward()
    close(t["grad/input/0"], x.grad.numpy(), 1e-4)
    for name, p in attn.named_parameters():
        close(t[f"grad/param/attn.{name}"], p.grad.numpy(), 1e-4)
