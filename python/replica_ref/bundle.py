"""Read and write reference bundles (see docs/bundle-format.md).

A bundle is a safetensors file. The format is written by hand here, with numpy
only, so that bfloat16 tensors (which numpy cannot hold) can be stored from
their raw bits and so that producing a bundle never needs torch.
"""

from __future__ import annotations

import json
import math
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT_VERSION = 1

# Order matters only for error messages; "grad/" alone is not a namespace.
NAMESPACES = (
    "param/",
    "input/",
    "output/",
    "act/",
    "grad/output/",
    "grad/param/",
    "grad/input/",
)
# The float64 shadow of what the reference computed: each key names the
# reference tensor it shadows, e.g. `shadow/act/h.0.mlp` shadows `act/h.0.mlp`.
SHADOW = "shadow/"
SHADOWED = ("output/", "act/", "grad/param/", "grad/input/")
SHADOW_NAMESPACES = tuple(SHADOW + ns for ns in SHADOWED)

METADATA_KEY = "replica"
REQUIRED_FIELDS = ("format_version", "component", "config", "producer", "dtype", "seed")
NAME_LIST_FIELDS = ("activations", "inputs", "outputs")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16", "float64")

# safetensors dtype tag -> numpy dtype (little-endian). BF16 has no numpy
# dtype: it is carried as uint16 bits inside a RawTensor.
_NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ITEMSIZE = {tag: dt.itemsize for tag, dt in _NUMPY_DTYPES.items()}
_ITEMSIZE["BF16"] = 2
_TAG_OF_KIND = {(dt.kind, dt.itemsize): tag for tag, dt in _NUMPY_DTYPES.items()}


class BundleError(ValueError):
    """A bundle (or what was about to become one) breaks the format."""


@dataclass(frozen=True)
class RawTensor:
    """A tensor given as safetensors dtype tag, shape and little-endian bytes.

    Used for dtypes numpy lacks (bfloat16); any tag in the format is accepted.
    """

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if self.dtype not in _ITEMSIZE:
            raise BundleError(f"unknown safetensors dtype {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "data", bytes(self.data))
        expected = math.prod(self.shape) * _ITEMSIZE[self.dtype]
        if len(self.data) != expected:
            raise BundleError(
                f"{self.dtype} tensor of shape {list(self.shape)} needs {expected} bytes, "
                f"got {len(self.data)}"
            )

    @classmethod
    def bf16(cls, bits: Any) -> "RawTensor":
        """A bfloat16 tensor from its raw uint16 bit patterns."""
        bits = np.asarray(bits)
        if bits.dtype != np.uint16:
            raise BundleError(f"bfloat16 bits must be uint16, got {bits.dtype}")
        return cls("BF16", bits.shape, np.asarray(bits, dtype="<u2").tobytes())

    def bits(self) -> np.ndarray:
        """The raw 16-bit patterns of a 2-byte tensor (BF16, F16, ...)."""
        if _ITEMSIZE[self.dtype] != 2:
            raise BundleError(f"bits() needs a 2-byte dtype, this tensor is {self.dtype}")
        return np.frombuffer(self.data, dtype="<u2").reshape(self.shape).copy()

    def to_numpy(self) -> np.ndarray:
        """The values as numpy: BF16 is widened exactly to float32."""
        if self.dtype == "BF16":
            return (self.bits().astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(self.data, dtype=_NUMPY_DTYPES[self.dtype]).reshape(self.shape).copy()


def float32_to_bf16_bits(values: Any) -> np.ndarray:
    """Round float32 values to bfloat16 bits (nearest, ties to even), as torch does."""
    x = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((x >> 16) & 1) + np.uint32(0x7FFF)
    bits = ((x + rounding) >> 16).astype(np.uint16)
    # Keep NaN a (quiet) NaN instead of letting the rounding carry it into inf.
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    bits[nan] = ((x[nan] >> 16) | 0x0040).astype(np.uint16)
    return bits


def namespace_of(key: str) -> str | None:
    """The namespace prefix a key belongs to, or None."""
    for prefix in NAMESPACES + SHADOW_NAMESPACES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return prefix
    return None


def _as_raw(key: str, value: Any) -> RawTensor:
    if isinstance(value, RawTensor):
        return value
    try:
        array = np.asarray(value)
    except Exception as exc:  # e.g. a torch bfloat16 tensor
        raise BundleError(f"tensor {key!r}: cannot convert to a numpy array ({exc})") from exc
    tag = _TAG_OF_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if tag is None:
        raise BundleError(
            f"tensor {key!r}: dtype {array.dtype} has no safetensors tag "
            "(pass bfloat16 as RawTensor.bf16(bits))"
        )
    # asarray keeps 0-d scalars 0-d; tobytes() writes C order whatever the strides.
    array = np.asarray(array, dtype=_NUMPY_DTYPES[tag])
    return RawTensor(tag, array.shape, array.tobytes())


def _check_name_list(metadata: Mapping[str, Any], field: str) -> list[str]:
    names = metadata.get(field, [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BundleError(f"metadata field {field!r} must be a list of strings")
    seen = set()
    for name in names:
        if name in seen:
            raise BundleError(f"metadata field {field!r} lists {name!r} more than once")
        seen.add(name)
    return names


def validate(keys: Any, metadata: Any) -> None:
    """Check tensor keys and the `replica` metadata against the format.

    Raises BundleError naming the first offending key or field.
    """
    if not isinstance(metadata, dict):
        raise BundleError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    for field in REQUIRED_FIELDS:
        if field not in metadata:
            raise BundleError(f"missing required metadata field {field!r}")

    version = metadata["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"metadata field 'format_version' must be an integer, got {version!r}")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"unsupported format_version {version} (this code knows {FORMAT_VERSION})"
        )
    if not isinstance(metadata["component"], str) or not metadata["component"]:
        raise BundleError("metadata field 'component' must be a non-empty string")
    producer = metadata["producer"]
    if not isinstance(producer, dict):
        raise BundleError("metadata field 'producer' must be an object")
    for field in ("name", "version"):
        if not isinstance(producer.get(field), str):
            raise BundleError(f"metadata field 'producer.{field}' must be a string")
    if metadata["dtype"] not in COMPUTE_DTYPES:
        raise BundleError(
            f"metadata field 'dtype' must be one of {list(COMPUTE_DTYPES)}, "
            f"got {metadata['dtype']!r}"
        )
    seed = metadata["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BundleError(f"metadata field 'seed' must be an integer or null, got {seed!r}")

    names = {field: _check_name_list(metadata, field) for field in NAME_LIST_FIELDS}

    by_namespace: dict[str, set[str]] = {prefix: set() for prefix in NAMESPACES + SHADOW_NAMESPACES}
    for key in keys:
        prefix = namespace_of(key)
        if prefix is None:
            raise BundleError(
                f"tensor key {key!r} is outside the bundle namespaces "
                f"{list(NAMESPACES + SHADOW_NAMESPACES)}"
            )
        by_namespace[prefix].add(key[len(prefix):])
    _check_shadow(metadata, by_namespace)

    # activations <-> act/ keys, both ways.
    _check_same_names(by_namespace["act/"], "act/", names["activations"], "activations")
    # inputs/outputs, when given, name exactly the stored input/ and output/ tensors.
    for field, prefix in (("inputs", "input/"), ("outputs", "output/")):
        if field in metadata:
            _check_same_names(by_namespace[prefix], prefix, names[field], field)

    # A gradient belongs to a tensor that is in the bundle.
    for grad_prefix, prefix in (
        ("grad/output/", "output/"),
        ("grad/param/", "param/"),
        ("grad/input/", "input/"),
    ):
        orphans = sorted(by_namespace[grad_prefix] - by_namespace[prefix])
        if orphans:
            raise BundleError(
                f"tensor key '{grad_prefix}{orphans[0]}' has no matching '{prefix}{orphans[0]}'"
            )


def _check_shadow(metadata: Mapping[str, Any], by_namespace: Mapping[str, set[str]]) -> None:
    """`shadow`, when present, is {"dtype": "float64"} or {"skipped": why}; every
    shadow tensor shadows a tensor of the bundle, and only a float64 shadow has any."""
    info = metadata.get("shadow")
    shadowed = sorted(SHADOW + ns + n for ns in SHADOWED for n in by_namespace[SHADOW + ns])
    if info is not None:
        if info != {"dtype": "float64"} and not (
            isinstance(info, dict) and list(info) == ["skipped"] and isinstance(info["skipped"], str)
        ):
            raise BundleError(
                "metadata field 'shadow' must be {\"dtype\": \"float64\"} or {\"skipped\": \"<why>\"}, "
                f"got {info!r}"
            )
    if shadowed and info != {"dtype": "float64"}:
        raise BundleError(f"tensor key {shadowed[0]!r} needs metadata shadow = {{\"dtype\": \"float64\"}}")
    for ns in SHADOWED:
        orphans = sorted(by_namespace[SHADOW + ns] - by_namespace[ns])
        if orphans:
            raise BundleError(f"tensor key '{SHADOW}{ns}{orphans[0]}' has no matching '{ns}{orphans[0]}'")


def _check_same_names(stored: set[str], prefix: str, listed: list[str], field: str) -> None:
    unlisted = sorted(stored - set(listed))
    if unlisted:
        raise BundleError(f"tensor key '{prefix}{unlisted[0]}' is not listed in metadata {field!r}")
    for name in listed:
        if name not in stored:
            raise BundleError(f"metadata {field!r} lists {name!r} but there is no '{prefix}{name}'")


def encode_bundle(tensors: Mapping[str, Any], metadata: Mapping[str, Any]) -> bytes:
    """The bytes of a bundle: deterministic for the same tensors and metadata."""
    metadata = dict(metadata)
    validate(tensors.keys(), metadata)
    try:
        meta_json = json.dumps(metadata, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"metadata is not plain JSON: {exc}") from exc

    raws = {key: _as_raw(key, value) for key, value in tensors.items()}
    for key, raw in raws.items():
        if key.startswith(SHADOW) and raw.dtype != "F64":
            raise BundleError(f"tensor {key!r}: a shadow is float64, got {raw.dtype}")
    # Widest dtypes first (then by name), as safetensors does, so that every
    # tensor starts at an offset aligned to its element size.
    order = sorted(raws, key=lambda k: (-_ITEMSIZE[raws[k].dtype], k))
    header: dict[str, Any] = {"__metadata__": {METADATA_KEY: meta_json}}
    offset = 0
    for key in order:
        raw = raws[key]
        header[key] = {
            "dtype": raw.dtype,
            "shape": list(raw.shape),
            "data_offsets": [offset, offset + len(raw.data)],
        }
        offset += len(raw.data)

    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    parts = [struct.pack("<Q", len(header_bytes)), header_bytes]
    parts.extend(raws[key].data for key in order)
    return b"".join(parts)


def write_bundle(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Validate and write a bundle atomically.

    The bytes go to a temporary file in the same directory that is renamed over
    `path` at the end, so an interrupted run never leaves a half-written bundle.
    An existing file is kept unless `overwrite` is true.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    data = encode_bundle(tensors, metadata)

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _place_new(tmp: Path, path: Path) -> None:
    """Move `tmp` to `path` unless `path` exists, without a check-then-rename race.

    A hard link fails if `path` exists, even one another writer created a moment
    ago. Where the file system has no hard links, fall back to check-then-rename.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)") from None
    except OSError:
        if path.exists():
            raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)") from None
        os.replace(tmp, path)


def read_bundle(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read and validate a bundle.

    Returns (tensors, metadata): numpy arrays, except BF16 tensors, which come
    back as RawTensor (use .to_numpy() for float32 values or .bits()).
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise BundleError(f"{path}: truncated file ({len(data)} bytes, no header length)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise BundleError(f"{path}: header length {header_len} runs past the end of the file")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise BundleError(f"{path}: header is not a JSON object")

    file_meta = header.pop("__metadata__", None) or {}
    if not isinstance(file_meta, dict) or METADATA_KEY not in file_meta:
        raise BundleError(f"{path}: missing {METADATA_KEY!r} entry in __metadata__")
    try:
        metadata = json.loads(file_meta[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: metadata {METADATA_KEY!r} is not JSON ({exc})") from exc

    try:
        validate(header.keys(), metadata)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc

    body = memoryview(data)[8 + header_len :]
    tensors: dict[str, Any] = {}
    for key, info in header.items():
        try:
            tag = info["dtype"]
            shape = [int(d) for d in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
        except (TypeError, KeyError, ValueError) as exc:
            raise BundleError(f"{path}: tensor {key!r} has a malformed header entry") from exc
        if tag not in _ITEMSIZE:
            raise BundleError(f"{path}: tensor {key!r} has unknown dtype {tag!r}")
        if not 0 <= start <= end <= len(body):
            raise BundleError(
                f"{path}: tensor {key!r} offsets [{start}, {end}] lie outside the "
                f"{len(body)} data bytes"
            )
        expected = math.prod(shape) * _ITEMSIZE[tag]
        if end - start != expected:
            raise BundleError(
                f"{path}: tensor {key!r} is {tag} {shape} ({expected} bytes) but its "
                f"offsets span {end - start} bytes"
            )
        raw = RawTensor(tag, tuple(shape), body[start:end])
        tensors[key] = raw if tag == "BF16" else raw.to_numpy()
    return tensors, metadata
