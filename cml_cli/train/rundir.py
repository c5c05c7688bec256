"""A run directory: resolved config, manifest, per-epoch log, checkpoints, final metrics.

    <runs-dir>/<name>/config.toml      the resolved configuration
    <runs-dir>/<name>/manifest.json    git revision, dataset checksum, seed, machine, command
    <runs-dir>/<name>/metrics.jsonl    one line per epoch
    <runs-dir>/<name>/checkpoints/     last.ckpt (every epoch), best.ckpt
    <runs-dir>/<name>/metrics.json     final metrics (written last: its presence means done)
    <runs-dir>/<name>/.lock            held by the process training in it
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from cml_cli import __version__
from cml_cli.config import RunConfig, apply_overrides, config_to_toml, load_toml
from cml_cli.data.store import check_writable_dir, write_json_atomic
from cml_cli.errors import InputError


def git_revision() -> str:
    """The git revision of the code that runs (``+dirty`` with uncommitted changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


class RunDir:
    """Paths and files of one run; ``lock()`` makes a second process on it fail clearly."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_file = None

    config = property(lambda self: self.path / "config.toml")
    manifest = property(lambda self: self.path / "manifest.json")
    log = property(lambda self: self.path / "metrics.jsonl")
    final = property(lambda self: self.path / "metrics.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.path / "checkpoints" / "last.ckpt")
    previous = property(lambda self: self.path / "checkpoints" / "previous.ckpt")
    best = property(lambda self: self.path / "checkpoints" / "best.ckpt")

    def create(self) -> None:
        check_writable_dir(self.path, "run directory")
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def lock(self) -> None:
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise InputError(f"{self.path}: another cml process is using this run directory") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def write_config(self, cfg: RunConfig) -> None:
        tmp = self.config.with_suffix(".toml.tmp")
        tmp.write_text(config_to_toml(cfg))
        os.replace(tmp, self.config)

    def read_config(self) -> RunConfig:
        if not self.config.is_file():
            raise InputError(f"{self.config}: missing (not a run directory?)")
        return apply_overrides(RunConfig(), load_toml(self.config)).validate()

    def write_manifest(self, dataset: str, dataset_checksum: str, cfg: RunConfig, device: str) -> None:
        write_json_atomic(self.manifest, {
            "cml_version": __version__,
            "git_revision": git_revision(),
            "dataset": dataset,
            "dataset_checksum": dataset_checksum,
            "model": cfg.model,
            "seed": cfg.seed,
            "protocol": cfg.protocol,
            "device": device,
            "machine": machine(),
            "command": " ".join(["cml", *sys.argv[1:]]) if sys.argv and "cml" in Path(sys.argv[0]).name else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    def read_manifest(self) -> dict:
        try:
            return json.loads(self.manifest.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{self.manifest}: unreadable ({e})") from None

    def write_log(self, history: list[dict]) -> None:
        """Rewrite ``metrics.jsonl`` from the checkpointed history (atomically)."""
        tmp = self.log.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for row in history:
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.log)

    def append_log(self, row: dict) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_final(self) -> dict | None:
        if not self.final.is_file():
            return None
        try:
            return json.loads(self.final.read_text())
        except (OSError, json.JSONDecodeError):
            return None
