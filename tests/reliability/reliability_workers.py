"""What the reliability tests run in child processes (forked from a forkserver that has
already imported torch and cml_cli, so a child starts in milliseconds).

A child runs the real ``cml`` command line (``cml_cli.cli.main``) with its stdout and stderr
sent to files. Before that it may install *test-only* fault hooks, by monkeypatching inside
its own process (nothing in ``cml_cli`` knows about them):

``kill``  SIGKILL itself at an exact point of checkpointing / logging:
          ``{"target": "last"|"best", "epoch": E, "phase": "before"|"partial"|"before_rename"|"after"}``
          (``before``: when the save is called, for ``last`` after the rotation to
          ``previous.ckpt``; ``partial``: half of the file written to the temporary file;
          ``before_rename``: temporary file complete and fsynced, not renamed);
          ``{"target": "log", "epoch": E, "phase": "partial"|"after"}`` (metrics.jsonl row);
          ``{"target": "final"}`` (metrics.json written to its temporary file, not renamed).
``pause`` wait after checkpoint ``last`` of epoch E until a file appears (``{"epoch", "ready", "go"}``).
``nan``   make the loss of (epoch, batch) NaN: ``{"epoch": E, "batch": B}``.
``kill_preprocess``  SIGKILL itself half-way through writing a processed dataset's arrays.
``fsize`` a disk that fills up: no file may grow beyond this many bytes (``RLIMIT_FSIZE``, with
          SIGXFSZ ignored, so a write past it fails with ``EFBIG`` as a full disk would fail).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(spec: dict) -> None:
    import numpy as np

    import cml_cli.train.loop as loop
    from cml_cli.train.rundir import RunDir

    armed: dict = {}
    target, epoch, phase = spec["target"], spec.get("epoch"), spec.get("phase")

    if target in ("last", "best"):
        real_save = loop.save_checkpoint

        def save(path, state):
            e = state["loop"]["epoch"] if "loop" in state else state["epoch"]
            if Path(path).name == f"{target}.ckpt" and e == epoch:
                if phase == "before":
                    _die()
                armed["phase"] = phase
                armed["name"] = Path(path).name
            real_save(path, state)
            if armed.get("phase") == "after":
                _die()

        loop.save_checkpoint = save

    if target == "final":
        armed.update(phase="before_rename", name="metrics.json")

    real_savez, real_replace = np.savez, os.replace

    def savez(f, *args, **kwargs):
        if armed.get("phase") == "partial":
            buf = io.BytesIO()
            real_savez(buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            _die()
        return real_savez(f, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if armed.get("phase") == "before_rename" and Path(dst).name == armed.get("name"):
            _die()
        return real_replace(src, dst, *args, **kwargs)

    np.savez = savez
    os.replace = replace

    if target == "log":
        real_append = RunDir.append_log

        def append_log(self, row):
            if row["epoch"] == epoch:
                if phase == "partial":
                    with open(self.log, "a") as f:
                        line = json.dumps(row)
                        f.write(line[: len(line) // 2])
                        f.flush()
                        os.fsync(f.fileno())
                    _die()
                real_append(self, row)
                _die()
            real_append(self, row)

        RunDir.append_log = append_log


def _install_pause(spec: dict) -> None:
    import cml_cli.train.loop as loop

    real_save = loop.save_checkpoint

    def save(path, state):
        real_save(path, state)
        if Path(path).name == "last.ckpt" and state["loop"]["epoch"] == spec["epoch"]:
            Path(spec["ready"]).write_text(str(os.getpid()))
            deadline = time.monotonic() + 120
            while not Path(spec["go"]).exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    loop.save_checkpoint = save


def _install_kill_preprocess() -> None:
    import numpy as np

    real = np.savez_compressed

    def savez(f, *args, **kwargs):
        buf = io.BytesIO()
        real(buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        _die()

    np.savez_compressed = savez


def _install_nan(spec: dict) -> None:
    from cml_cli.train.cml_trainer import CMLTrainer

    real_batch, real_end = CMLTrainer.train_batch, CMLTrainer.end_epoch
    count = {"epoch": 1, "batch": 0}

    def train_batch(self, rows, rng):
        count["batch"] += 1
        parts = real_batch(self, rows, rng)
        if (count["epoch"], count["batch"]) == (spec["epoch"], spec["batch"]):
            parts = {**parts, "loss": float("nan")}
        return parts

    def end_epoch(self):
        count["epoch"] += 1
        count["batch"] = 0
        real_end(self)

    CMLTrainer.train_batch, CMLTrainer.end_epoch = train_batch, end_epoch


def cli_child(argv: list[str], out_dir: str, hooks: dict | None = None) -> None:
    """Run ``cml ARGV`` with stdout/stderr in ``out_dir``; exits with the command's code."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        f = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    import torch

    torch.set_num_threads(1)  # the same arithmetic in every child (and fair on a shared machine)
    hooks = hooks or {}
    if hooks.get("kill"):
        _install_kill(hooks["kill"])
    if hooks.get("pause"):
        _install_pause(hooks["pause"])
    if hooks.get("nan"):
        _install_nan(hooks["nan"])
    if hooks.get("kill_preprocess"):
        _install_kill_preprocess()
    if hooks.get("fsize"):
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hooks["fsize"], hooks["fsize"]))
    from cml_cli.cli import main

    sys.argv = ["cml", *map(str, argv)]
    try:
        main()
    except SystemExit as e:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(e.code if isinstance(e.code, int) else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def load_payloads(paths: list[str], out: str, limit_bytes: int) -> None:
    """``safe_load`` each path under an address-space limit; record what happened."""
    import resource

    vm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            vm = int(line.split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + limit_bytes, vm + limit_bytes))
    from cml_cli.data.readers.safepickle import safe_load
    from cml_cli.errors import InputError

    results = {}
    for p in paths:
        t = time.perf_counter()
        try:
            safe_load(p)
            outcome = "loaded"
        except InputError as e:
            outcome = f"InputError: {e}"
        except BaseException as e:  # noqa: BLE001 - recorded, the test fails on it
            outcome = f"CRASH {type(e).__name__}: {e}"
        results[p] = {"outcome": outcome, "seconds": time.perf_counter() - t}
    Path(out).write_text(json.dumps(results))
    os._exit(0)
