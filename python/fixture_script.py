"""The command line every block fixture script shares: `--out DIR` (default: the
script's folder under tests/fixtures/), one CPU thread and deterministic
algorithms, so that running a script twice gives byte-identical files, then a
count of what was written."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch


def run(build_all: Callable[[Path], list[Path]], doc: str, default_out: Path) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out, help="output directory")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    written = build_all(args.out)
    total = sum(p.stat().st_size for p in written)
    print(f"{len(written)} bundles, {total} bytes in all")
