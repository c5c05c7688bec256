"""A run directory: resolved config, manifest, per-epoch log, checkpoints, final metrics.

    <runs-dir>/<name>/config.toml      the resolved configuration
    <runs-dir>/<name>/manifest.json    git revision, dataset checksum, seed, machine, command
    <runs-dir>/<name>/metrics.jsonl    one line per epoch
    <runs-dir>/<name>/checkpoints/     last.ckpt (every epoch), previous.ckpt (the one before), best.ckpt
    <runs-dir>/<name>/metrics.json     final metrics (written last: its presence means done)
    <runs-dir>/<name>/.lock            held by the process training in it (removed when it ends)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cml_cli import __version__
from cml_cli.config import PLACEMENT_KEYS, RunConfig, apply_overrides, config_to_toml, load_toml
from cml_cli.data.store import (
    ARRAYS,
    MANIFEST,
    check_name,
    check_writable_dir,
    read_manifest,
    resolve_dataset_dir,
    write_json_atomic,
    write_text_atomic,
)
from cml_cli.errors import InputError, redact, write_error

# Keys a run may change without becoming another run: where it computes, and how long it
# trains (``--resume --epochs`` extends a run).
IDENTITY_IGNORES = (*PLACEMENT_KEYS, "epochs")


def run_identity(cfg: RunConfig, dataset_checksum: str) -> dict[str, str]:
    """What ties a checkpoint to its run: the model, a hash of the resolved configuration
    (without :data:`IDENTITY_IGNORES`) and the dataset's checksum."""
    body = {k: v for k, v in cfg.to_dict().items() if k not in IDENTITY_IGNORES}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return {"model": cfg.model, "config": digest, "dataset": dataset_checksum[:16]}


def describe_identity(identity: dict) -> str:
    return f"model {identity.get('model')}, config {identity.get('config')}, dataset {identity.get('dataset')}"


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


def command_line(argv: list[str], root: Path | None = None) -> str:
    """``argv`` as one shell line, every absolute path in it (an argument, or the value of
    ``--opt=PATH`` / ``NAME=PATH``) written relative to ``root`` (default: the working
    directory), so that a recorded command names no directory of the machine that ran it,
    and every URL without its credentials."""
    base = Path(root) if root is not None else Path.cwd()

    def portable(arg: str) -> str:
        head, sep, tail = arg.rpartition("=") if not arg.startswith("/") else ("", "", arg)
        return head + sep + os.path.relpath(tail, base) if tail.startswith("/") else arg

    return redact(shlex.join(portable(a) for a in argv))


def machine() -> dict:
    import torch

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
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.checkpoints, e) from None

    def lock(self) -> None:
        """Take the run directory's lock or fail, changing nothing, if another process holds it.

        ``flock`` locks vanish with their process, so a killed run never leaves a stale lock.
        The holder removes the file when it unlocks; a lock taken on a file that was removed
        meanwhile is not the run's lock, so it is taken again on the new file."""
        while True:
            try:
                f = open(self.path / ".lock", "a+")
            except OSError as e:
                raise InputError(f"{self.path}: cannot create the lock file ({e.strerror or e})") from None
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip()[:20]
                f.close()
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise InputError(f"{self.path}: another cml process{who} is using this run directory; nothing was "
                                 "changed (wait for it to finish, or stop it first)") from None
            if self._is_lock_file(f):
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def holder(self) -> int | None:
        """The pid of another process holding this run's lock, or None (nothing is created;
        a lock this object holds is not another process's)."""
        if self._lock_file is not None:
            return None
        try:
            f = open(self.path / ".lock")
        except OSError:
            return None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = f.read().strip()[:20]
                return int(text) if text.isdigit() else -1
            fcntl.flock(f, fcntl.LOCK_UN)
        return None

    def is_run(self) -> bool:
        """Does the directory hold a run (a readable run manifest)?"""
        try:
            self.read_manifest()
        except InputError:
            return False
        return True

    def check_is_run(self) -> None:
        """An :class:`InputError` unless this is a run directory: a readable run manifest and
        a valid configuration (checked before anything is written into it)."""
        if not self.path.is_dir():
            raise InputError(f"{self.path}: no such run directory")
        if not self.manifest.is_file() or not self.config.is_file():
            raise InputError(f"{self.path}: not a run directory (no manifest.json and config.toml)")
        self.read_manifest()
        self.read_config()

    def check_replaceable(self, force: bool) -> None:
        """May a new run start here? Yes when the directory is missing or empty, or, with
        ``force``, when it is a run directory that no other process is using."""
        if self.path.is_symlink():
            raise InputError(f"{self.path}: is a symbolic link; a run directory is never replaced through one, so "
                             "nothing was changed (use another --name)")
        if self.is_empty():
            return
        pid = self.holder()
        if pid is not None:
            who = f" (pid {pid})" if pid > 0 else ""
            raise InputError(f"{self.path}: another cml process{who} is using this run directory; nothing was "
                             "changed (wait for it to finish, or stop it first)")
        if not force:
            raise InputError(f"{self.path}: run directory exists (use --resume {self.path} to continue, "
                             "--force to start over, or another --name)")
        if not self.is_run():
            raise InputError(f"{self.path}: exists and is not a run directory (no run manifest); --force only "
                             "replaces run directories, so nothing was changed")

    def clear(self) -> None:
        """Remove everything but the lock (call with the lock held, after :meth:`check_replaceable`)."""
        for child in self.path.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def discard(self, remove_dir: bool) -> None:
        """Remove a run that never completed an epoch: the files a run writes and, with
        ``remove_dir``, the directory itself when nothing else is left in it."""
        for path in (self.final, self.log, self.config, self.manifest):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        if remove_dir:
            (self.path / ".lock").unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:
                pass

    def _is_lock_file(self, f, follow: bool = True) -> bool:
        """Is the open file ``f`` the file at ``<run>/.lock`` (same inode; with ``follow``
        false, a symlink there is not)?"""
        try:
            here = os.stat(self.path / ".lock", follow_symlinks=follow)
        except OSError:
            return False
        mine = os.fstat(f.fileno())
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def unlock(self) -> None:
        """Release the lock and remove ``.lock``: the file is deleted only while this process
        still holds it and only if it is the file that was locked."""
        if self._lock_file is not None:
            if self._is_lock_file(self._lock_file, follow=False):
                (self.path / ".lock").unlink(missing_ok=True)
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def is_empty(self) -> bool:
        """Nothing in the directory but the lock file and an empty ``checkpoints/``."""
        if not self.path.is_dir():
            return True
        for child in self.path.iterdir():
            if child.name == ".lock":
                continue
            if child == self.checkpoints and child.is_dir() and not any(child.iterdir()):
                continue
            return False
        return True

    def remove_temporaries(self) -> list[Path]:
        """Delete the ``*.tmp`` files an interrupted write leaves behind (call with the lock held)."""
        removed = []
        for folder in (self.path, self.checkpoints):
            if folder.is_dir():
                for child in folder.iterdir():
                    if child.name.endswith(".tmp") and child.is_file():
                        child.unlink(missing_ok=True)
                        removed.append(child)
        return removed

    def write_config(self, cfg: RunConfig) -> None:
        write_text_atomic(self.config, config_to_toml(cfg))

    def read_config(self) -> RunConfig:
        if not self.config.is_file():
            raise InputError(f"{self.config}: missing (not a run directory, or a run interrupted before it "
                             "started: start it again with `cml train ... --force`)")
        try:
            return apply_overrides(RunConfig(), load_toml(self.config)).validate()
        except InputError as e:
            msg = str(e)
            raise InputError(msg if str(self.config) in msg else f"{self.config}: {msg}") from None

    def write_manifest(self, dataset: str, dataset_dir: Path, dataset_checksum: str, cfg: RunConfig,
                       device: str) -> None:
        write_json_atomic(self.manifest, {
            "cml_version": __version__,
            "git_revision": git_revision(),
            "dataset": dataset,
            "dataset_dir": str(Path(dataset_dir).resolve()),
            "dataset_checksum": dataset_checksum,
            "model": cfg.model,
            "seed": cfg.seed,
            "protocol": cfg.protocol,
            "device": device,
            "machine": machine(),
            "command": command_line(["cml", *sys.argv[1:]]) if sys.argv and "cml" in Path(sys.argv[0]).name else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    def read_manifest(self) -> dict:
        if not self.manifest.is_file():
            raise InputError(f"{self.manifest}: missing (not a run directory, or a run interrupted before it "
                             "started: start it again with `cml train ... --force`)")
        try:
            manifest = json.loads(self.manifest.read_bytes())
        except (OSError, ValueError, RecursionError) as e:
            raise InputError(f"{self.manifest}: corrupt or unreadable ({type(e).__name__}: {e})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("dataset"), str) or \
                not isinstance(manifest.get("dataset_checksum"), str):
            raise InputError(f"{self.manifest}: corrupt (no dataset or dataset_checksum)")
        check_name(manifest["dataset"], f"{self.manifest}: dataset")
        return manifest

    def identity(self, cfg: RunConfig) -> dict[str, str]:
        """The identity (:func:`run_identity`) a checkpoint of this run with ``cfg`` carries."""
        return run_identity(cfg, self.read_manifest()["dataset_checksum"])

    def dataset_dir(self, data_dir: Path | None = None) -> Path:
        """The run's dataset, checked to be the one it was trained on (same checksum): under
        ``data_dir`` when given, else where the run found it (recorded in its manifest), else
        under the default data directory."""
        manifest = self.read_manifest()
        recorded = manifest.get("dataset_dir")
        if data_dir is None and isinstance(recorded, str) and (Path(recorded) / MANIFEST).is_file():
            path = Path(recorded)
        else:
            path = resolve_dataset_dir(manifest["dataset"], data_dir)
        if read_manifest(path)["files"][ARRAYS] != manifest["dataset_checksum"]:
            raise InputError(f"{path}: dataset changed since the run was trained (checksum differs from "
                             f"{self.manifest}); preprocess it again as it was, or train a new run")
        return path

    def read_final(self) -> dict | None:
        """The final metrics (``metrics.json``), or None for a run that has not finished."""
        try:
            final = json.loads(self.final.read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return final if isinstance(final, dict) else None

    def read_config_dict(self) -> dict | None:
        """The run's configuration as a dict, or None when it is missing or invalid."""
        try:
            return self.read_config().to_dict()
        except InputError:
            return None

    def write_log(self, history: list[dict]) -> None:
        """Rewrite ``metrics.jsonl`` from the checkpointed history (atomically)."""
        write_text_atomic(self.log, "".join(json.dumps(row) + "\n" for row in history))

    def append_log(self, row: dict) -> None:
        try:
            with open(self.log, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise write_error(self.log, e) from None



def check_run_target(runs_dir: Path, name: str | None, force: bool, *, what: str = "runs directory",
                     parent_must_exist: bool = False) -> None:
    """May a new run named ``name`` (one path component; None: named later) start under
    ``runs_dir``? Its directory must be replaceable (see :meth:`RunDir.check_replaceable`) and
    ``runs_dir`` writable (``parent_must_exist``: its parent must exist, as ``cml train``
    requires; :func:`cml_cli.train.loop.train` creates missing parents). Imports no torch, so
    the command line checks before the loop is imported."""
    if name is not None:
        RunDir(Path(runs_dir) / check_name(name, "--name")).check_replaceable(force)
    check_writable_dir(Path(runs_dir), what, parent_must_exist=parent_must_exist)
