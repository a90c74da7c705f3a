"""Bundle writing and reading with numpy only: the format must not depend on torch."""

import json
import os
import struct

import numpy as np
import pytest

from replica_ref import (
    FORMAT_VERSION,
    BundleError,
    RawTensor,
    float32_to_bf16_bits,
    read_bundle,
    write_bundle,
)

safetensors_numpy = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402


def meta(**overrides):
    base = {
        "format_version": FORMAT_VERSION,
        "component": "test.Identity",
        "config": {"eps": 1e-5},
        "producer": {"name": "numpy", "version": np.__version__},
        "dtype": "float32",
        "seed": 0,
        "activations": [],
        "inputs": ["0"],
        "outputs": ["0"],
    }
    base.update(overrides)
    return base


def all_dtypes():
    rng = np.random.default_rng(0)
    return {
        "param/f64": rng.standard_normal((2, 3)),
        "param/f32": rng.standard_normal((4,)).astype(np.float32),
        "param/f16": rng.standard_normal((3, 1, 2)).astype(np.float16),
        "param/i64": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
        "param/i32": np.array([1, -2, 3], dtype=np.int32),
        "param/i16": np.array([7, -8], dtype=np.int16),
        "param/i8": np.array([-1, 2, -3], dtype=np.int8),
        "param/u64": np.array([2**40], dtype=np.uint64),
        "param/u32": np.array([5, 6], dtype=np.uint32),
        "param/u16": np.array([65535], dtype=np.uint16),
        "param/u8": np.array([[0, 255]], dtype=np.uint8),
        "param/bool": np.array([True, False, True]),
        "param/scalar": np.float32(2.5),
        "param/empty": np.zeros((0, 4), dtype=np.float32),
        "input/0": rng.standard_normal((2, 5)).astype(np.float32),
        "output/0": rng.standard_normal((2, 5)).astype(np.float32),
    }


BF16_BITS = np.array([[0x3F80, 0xBF80, 0x7F80], [0x0001, 0x7FC0, 0x4049]], dtype=np.uint16)


def test_round_trip_every_dtype(tmp_path):
    tensors = all_dtypes()
    tensors["param/bf16"] = RawTensor.bf16(BF16_BITS)
    path = write_bundle(tmp_path / "b.safetensors", tensors, meta())

    back, metadata = read_bundle(path)
    assert metadata == meta()
    assert set(back) == set(tensors)
    for key, value in tensors.items():
        if key == "param/bf16":
            assert back[key].dtype == "BF16"
            np.testing.assert_array_equal(back[key].bits(), BF16_BITS)
            continue
        expected = np.asarray(value)
        assert back[key].dtype == expected.dtype, key
        assert back[key].shape == expected.shape, key
        np.testing.assert_array_equal(back[key], expected)


def test_bf16_bits_widen_to_float32():
    values = RawTensor.bf16(BF16_BITS).to_numpy()
    assert values.dtype == np.float32
    assert values[0, 0] == 1.0 and values[0, 1] == -1.0 and np.isinf(values[0, 2])
    assert np.isnan(values[1, 1])
    assert values[1, 2] == np.float32(3.140625)


def test_bf16_rounding_is_nearest_even():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.0, np.inf, np.nan], dtype=np.float32)
    bits = float32_to_bf16_bits(x)
    assert list(bits[:5]) == [0x3F80, 0x3F80, 0x3F82, 0xC000, 0x7F80]
    assert np.isnan(RawTensor.bf16(bits).to_numpy()[5])


def test_official_safetensors_reads_it(tmp_path):
    tensors = all_dtypes()
    path = write_bundle(tmp_path / "b.safetensors", tensors, meta())
    loaded = safetensors_numpy.load_file(str(path))
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(loaded[key], np.asarray(value))


def test_official_safetensors_reads_bf16_header(tmp_path):
    # numpy has no bfloat16, so safetensors' numpy backend can list a BF16
    # tensor but not load it; the torch test loads its values.
    tensors = all_dtypes()
    tensors["param/bf16"] = RawTensor.bf16(BF16_BITS)
    path = write_bundle(tmp_path / "b.safetensors", tensors, meta())
    with safe_open(str(path), framework="np") as f:
        assert json.loads(f.metadata()["replica"]) == meta()
        assert set(f.keys()) == set(tensors)
        for key in set(tensors) - {"param/bf16"}:
            np.testing.assert_array_equal(f.get_tensor(key), np.asarray(tensors[key]))


def test_header_is_padded_and_offsets_aligned(tmp_path):
    tensors = all_dtypes()
    tensors["param/bf16"] = RawTensor.bf16(BF16_BITS)
    path = write_bundle(tmp_path / "b.safetensors", tensors, meta())
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    sizes = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4,
             "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
    for key, info in header.items():
        if key != "__metadata__":
            assert info["data_offsets"][0] % sizes.get(info["dtype"], 1) == 0, key
    assert list(header) == sorted(header)


def test_encoding_is_deterministic(tmp_path):
    a = write_bundle(tmp_path / "a.safetensors", all_dtypes(), meta())
    b = write_bundle(tmp_path / "b.safetensors", dict(reversed(all_dtypes().items())), meta())
    assert a.read_bytes() == b.read_bytes()


def test_activations_round_trip(tmp_path):
    x = np.ones((2, 2), dtype=np.float32)
    tensors = {"input/0": x, "output/0": x, "act/0": x, "act/0#1": x, "act/attn:1": x}
    m = meta(activations=["0", "attn:1", "0#1"])
    _, back = read_bundle(write_bundle(tmp_path / "b.safetensors", tensors, m))
    assert back["activations"] == ["0", "attn:1", "0#1"]


@pytest.mark.parametrize("key", ["weight", "params/w", "grad/w", "grad/x/0", "activation/x", "param/"])
def test_key_outside_namespaces_is_refused(tmp_path, key):
    x = np.zeros(2, dtype=np.float32)
    with pytest.raises(BundleError, match=key.replace("/", "/")):
        write_bundle(tmp_path / "b.safetensors", {"input/0": x, "output/0": x, key: x}, meta())
    assert not (tmp_path / "b.safetensors").exists()


def test_act_key_missing_from_activations(tmp_path):
    x = np.zeros(2, dtype=np.float32)
    tensors = {"input/0": x, "output/0": x, "act/ln_1": x, "act/attn": x}
    with pytest.raises(BundleError, match="act/attn"):
        write_bundle(tmp_path / "b.safetensors", tensors, meta(activations=["ln_1"]))


def test_activation_listed_without_tensor(tmp_path):
    x = np.zeros(2, dtype=np.float32)
    with pytest.raises(BundleError, match="'mlp'"):
        write_bundle(tmp_path / "b.safetensors", {"input/0": x, "output/0": x}, meta(activations=["mlp"]))


def test_activation_listed_twice(tmp_path):
    x = np.zeros(2, dtype=np.float32)
    tensors = {"input/0": x, "output/0": x, "act/mlp": x}
    with pytest.raises(BundleError, match="more than once"):
        write_bundle(tmp_path / "b.safetensors", tensors, meta(activations=["mlp", "mlp"]))


def test_gradient_without_its_tensor(tmp_path):
    x = np.zeros(2, dtype=np.float32)
    tensors = {"input/0": x, "output/0": x, "grad/param/weight": x}
    with pytest.raises(BundleError, match="grad/param/weight"):
        write_bundle(tmp_path / "b.safetensors", tensors, meta())


@pytest.mark.parametrize("field", ["format_version", "component", "config", "producer", "dtype", "seed"])
def test_missing_metadata_field(tmp_path, field):
    m = meta()
    del m[field]
    x = np.zeros(2, dtype=np.float32)
    with pytest.raises(BundleError, match=field):
        write_bundle(tmp_path / "b.safetensors", {"input/0": x, "output/0": x}, m)


@pytest.mark.parametrize(
    "field, value",
    [("dtype", "float8"), ("seed", "0"), ("producer", {"name": "torch"}), ("inputs", "0"), ("config", float("nan"))],
)
def test_bad_metadata_value(tmp_path, field, value):
    x = np.zeros(2, dtype=np.float32)
    with pytest.raises(BundleError):
        write_bundle(tmp_path / "b.safetensors", {"input/0": x, "output/0": x}, meta(**{field: value}))


@pytest.mark.parametrize("version", [0, 2, "1", 1.0, True])
def test_wrong_format_version(tmp_path, version):
    x = np.zeros(2, dtype=np.float32)
    with pytest.raises(BundleError, match="format_version"):
        write_bundle(tmp_path / "b.safetensors", {"input/0": x, "output/0": x}, meta(format_version=version))


def test_reader_refuses_wrong_format_version(tmp_path):
    # Written by hand, the way another producer might.
    header = {"__metadata__": {"replica": json.dumps(meta(format_version=2, inputs=[], outputs=[]))}}
    raw = json.dumps(header).encode()
    path = tmp_path / "v2.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(BundleError, match="format_version 2"):
        read_bundle(path)


def test_reader_refuses_truncated_file(tmp_path):
    x = np.arange(8, dtype=np.float32)
    path = write_bundle(tmp_path / "b.safetensors", {"input/0": x, "output/0": x}, meta())
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(BundleError, match="outside"):
        read_bundle(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(BundleError, match="truncated"):
        read_bundle(path)


def test_unsupported_numpy_dtype(tmp_path):
    x = np.zeros(2, dtype=np.float32)
    with pytest.raises(BundleError, match="input/0"):
        write_bundle(tmp_path / "b.safetensors", {"input/0": np.zeros(2, np.complex64), "output/0": x}, meta())


def test_refuses_to_overwrite(tmp_path):
    x = np.zeros(2, dtype=np.float32)
    path = tmp_path / "b.safetensors"
    write_bundle(path, {"input/0": x, "output/0": x}, meta())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_bundle(path, {"input/0": x + 1, "output/0": x}, meta())
    assert path.read_bytes() == before
    write_bundle(path, {"input/0": x + 1, "output/0": x}, meta(), overwrite=True)
    np.testing.assert_array_equal(read_bundle(path)[0]["input/0"], x + 1)


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    x = np.zeros(2, dtype=np.float32)
    path = tmp_path / "b.safetensors"
    write_bundle(path, {"input/0": x, "output/0": x}, meta())
    before = path.read_bytes()

    def crash(src, dst):
        raise KeyboardInterrupt  # as if the run was stopped just before the rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(path, {"input/0": x + 1, "output/0": x}, meta(), overwrite=True)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["b.safetensors"]


def test_invalid_bundle_never_reaches_disk(tmp_path):
    x = np.zeros(2, dtype=np.float32)
    with pytest.raises(BundleError):
        write_bundle(tmp_path / "b.safetensors", {"input/0": x, "output/0": x, "bad": x}, meta())
    assert os.listdir(tmp_path) == []


def test_name_lists_are_optional(tmp_path):
    # Only the fields the format marks required must be present.
    m = meta()
    for field in ("activations", "inputs", "outputs"):
        del m[field]
    x = np.zeros(2, dtype=np.float32)
    _, back = read_bundle(write_bundle(tmp_path / "b.safetensors", {"input/0": x, "param/w": x}, m))
    assert back == m


def test_inputs_must_name_the_stored_inputs(tmp_path):
    x = np.zeros(2, dtype=np.float32)
    with pytest.raises(BundleError, match="input/mask"):
        write_bundle(tmp_path / "b.safetensors", {"input/0": x, "input/mask": x, "output/0": x}, meta())
    with pytest.raises(BundleError, match="'1'"):
        write_bundle(tmp_path / "b.safetensors", {"input/0": x, "output/0": x}, meta(outputs=["0", "1"]))


def test_a_file_that_appears_during_the_write_is_kept(tmp_path, monkeypatch):
    # Another writer creates the file after the early check, while the bytes are encoded:
    # the final placement must still refuse it, and leave no temporary file.
    import replica_ref.bundle as bundle_module

    x = np.zeros(2, dtype=np.float32)
    path = tmp_path / "b.safetensors"
    real_encode = bundle_module.encode_bundle

    def encode_while_another_writer_wins(tensors, metadata):
        path.write_bytes(b"the other writer")
        return real_encode(tensors, metadata)

    monkeypatch.setattr(bundle_module, "encode_bundle", encode_while_another_writer_wins)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_bundle(path, {"input/0": x, "output/0": x}, meta())
    assert path.read_bytes() == b"the other writer"
    assert os.listdir(tmp_path) == ["b.safetensors"]


def test_without_hard_links_a_new_file_is_still_written(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    x = np.zeros(2, dtype=np.float32)
    path = tmp_path / "b.safetensors"
    write_bundle(path, {"input/0": x, "output/0": x}, meta())
    np.testing.assert_array_equal(read_bundle(path)[0]["input/0"], x)
    assert os.listdir(tmp_path) == ["b.safetensors"]


# ---- the float64 shadow ---------------------------------------------------------


def _shadow_meta(**extra):
    return {"format_version": 1, "component": "c", "config": {}, "producer": {"name": "t", "version": "0"},
            "dtype": "float32", "seed": 0, "activations": [], **extra}


def test_shadow_tensors_need_their_reference_float64_and_the_metadata(tmp_path):
    ok = {"output/0": np.ones(2, np.float32), "shadow/output/0": np.ones(2, np.float64)}
    write_bundle(tmp_path / "ok.safetensors", ok, _shadow_meta(shadow={"dtype": "float64"}))
    with pytest.raises(BundleError, match="shadow/output/1"):
        write_bundle(tmp_path / "a.safetensors", {**ok, "shadow/output/1": np.ones(2)},
                     _shadow_meta(shadow={"dtype": "float64"}))
    with pytest.raises(BundleError, match="a shadow is float64"):
        write_bundle(tmp_path / "b.safetensors", {**ok, "shadow/output/0": np.ones(2, np.float32)},
                     _shadow_meta(shadow={"dtype": "float64"}))
    with pytest.raises(BundleError, match="needs metadata shadow"):
        write_bundle(tmp_path / "c.safetensors", ok, _shadow_meta())
    with pytest.raises(BundleError, match="'shadow' must be"):
        write_bundle(tmp_path / "d.safetensors", {"output/0": np.ones(2)}, _shadow_meta(shadow={"dtype": "f32"}))
    with pytest.raises(BundleError, match="outside the bundle namespaces"):
        write_bundle(tmp_path / "e.safetensors", {"param/w": np.ones(2), "shadow/param/w": np.ones(2)},
                     _shadow_meta(shadow={"dtype": "float64"}))
