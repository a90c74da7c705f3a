"""Reference exporter: writes the tensors a Rust reimplementation is checked
against as bundles (docs/bundle-format.md).

`write_bundle` / `read_bundle` need only numpy; `capture` needs torch, and
without torch it raises an ImportError when called, so the rest still works.
"""

from .bundle import (
    FORMAT_VERSION,
    NAMESPACES,
    BundleError,
    RawTensor,
    float32_to_bf16_bits,
    read_bundle,
    validate,
    write_bundle,
)

__all__ = [
    "FORMAT_VERSION",
    "NAMESPACES",
    "BundleError",
    "RawTensor",
    "capture",
    "float32_to_bf16_bits",
    "read_bundle",
    "validate",
    "write_bundle",
]


try:
    from .capture import capture
except ModuleNotFoundError as exc:
    if exc.name != "torch":
        raise

    def capture(*args, **kwargs):
        """Stand-in used when torch is not installed."""
        raise ImportError("replica_ref.capture needs torch: pip install 'replica-ref[torch]'")
