"""Fixtures of the reliability tests: the tiny synthetic dataset, a forkserver whose children
run ``cml`` (with optional fault hooks, see ``reliability_workers``), the metrics of an
uninterrupted reference run, and an in-process ``cml`` runner for commands that fail
before any training."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

#: A small, fast CML configuration: 4 epochs of 4 batches on the tiny synthetic dataset.
SETTINGS = ["--set", "epochs=4", "--set", "batch=256", "--set", "eval_batch=512", "--device", "cpu"]
TIMING_KEYS = ("seconds", "train_seconds", "seconds_per_epoch", "run_dir")


def strip_timing(obj):
    """``obj`` without wall-clock fields (and the run directory), for exact comparisons."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def read_log(run: Path) -> list[dict]:
    return [strip_timing(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


@dataclass
class Child:
    exitcode: int | None
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


class Children:
    """Start ``cml`` commands in forked children; ``run`` waits, ``start`` returns the process."""

    def __init__(self, ctx, root: Path):
        self.ctx, self.root, self.n = ctx, root, 0

    def start(self, argv: list[str], hooks: dict | None = None):
        from reliability_workers import cli_child

        self.n += 1
        out = self.root / f"child{self.n}"
        p = self.ctx.Process(target=cli_child, args=([str(a) for a in argv], str(out), hooks or {}))
        p.start()
        p.out = out
        return p

    def wait(self, p, timeout: float = 240) -> Child:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
            pytest.fail(f"child {p.out} did not finish in {timeout}s")
        read = lambda name: (p.out / name).read_text() if (p.out / name).exists() else ""  # noqa: E731
        return Child(p.exitcode, read("stdout"), read("stderr"))

    def run(self, argv: list[str], hooks: dict | None = None, timeout: float = 240) -> Child:
        return self.wait(self.start(argv, hooks), timeout)


@pytest.fixture(scope="session")
def children(tmp_path_factory) -> Children:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch_geometric", "cml_cli.cli", "cml_cli.train.loop",
                                "cml_cli.train.cml_trainer", "reliability_workers"])
    return Children(ctx, tmp_path_factory.mktemp("children"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """``<tmp>/data/synthetic``: the tiny synthetic dataset, processed once per session."""
    from cml_cli.data.preprocess import ReadOptions, preprocess

    root = tmp_path_factory.mktemp("reliability-data") / "data"
    preprocess("synthetic", None, ReadOptions(size="tiny"), data_dir=root)
    return root


@pytest.fixture
def fresh_data_dir(data_dir, tmp_path) -> Path:
    """A private copy of the dataset, for tests that damage it."""
    dst = tmp_path / "data"
    shutil.copytree(data_dir, dst)
    return dst


def train_argv(data_dir: Path, runs_dir: Path, name: str, *extra: str) -> list[str]:
    return ["train", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", runs_dir, "--name", name,
            *SETTINGS, "--json", "-q", *extra]


def resume_argv(data_dir: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--resume", run, "--data-dir", data_dir, "--json", "-q", *extra]


@pytest.fixture(scope="session")
def reference(children, data_dir, tmp_path_factory) -> dict:
    """An uninterrupted run: its final metrics (``result``) and per-epoch log (``log``)."""
    runs = tmp_path_factory.mktemp("reference-runs")
    child = children.run(train_argv(data_dir, runs, "ref"))
    assert child.exitcode == 0, child.stderr
    result = child.json()
    assert result["epochs_run"] == 4
    raw = [json.loads(line) for line in (runs / "ref" / "metrics.jsonl").read_text().splitlines()]
    return {"result": strip_timing(result), "log": read_log(runs / "ref"), "run": runs / "ref",
            "epoch_seconds": sum(r["seconds"] for r in raw[1:]) / max(len(raw) - 1, 1)}


def _installed_command() -> tuple[list[str], dict[str, str]]:
    """The installed ``cml`` entry point (the script beside this Python, else ``-m cml_cli``)
    and the environment to run it in."""
    script = Path(sys.executable).with_name("cml")
    command = [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "cml_cli"]
    env = {k: v for k, v in os.environ.items() if k != "CML_DATA_DIR"}
    env["PYTHONWARNINGS"] = "ignore"
    return command, env


def installed(*argv, cwd: Path | None = None, timeout: float = 180):
    """Run the installed ``cml`` entry point (the script beside this Python, else ``-m cml_cli``)."""
    import subprocess

    command, env = _installed_command()
    return subprocess.run([*command, *map(str, argv)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env)


def start_installed(*argv, cwd: Path | None = None):
    """Start the installed ``cml`` entry point with SIGINT at its default (a test run in the
    background may have inherited it ignored), stdout and stderr piped."""
    import signal
    import subprocess

    command, env = _installed_command()
    return subprocess.Popen([*command, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cml(capsys, monkeypatch):
    """Run ``cml ARGS`` in this process (for commands that fail before training)."""
    from cml_cli.cli import main

    def run(*argv) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["cml", *map(str, argv)])
        capsys.readouterr()
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


def assert_clean_error(res: CliResult, code: int, *needles: str) -> None:
    """Exit ``code``, one clear error on stderr mentioning each needle, no traceback."""
    assert res.code == code, (res.code, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    assert "error:" in res.stderr
    flat = " ".join(res.stderr.split())
    for needle in needles:
        assert str(needle) in flat or str(needle) in res.stderr.replace("\n", ""), (needle, res.stderr)


def one_line(res: CliResult) -> None:
    """Exactly one non-empty line on stderr."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (never following a symbolic link): file contents, link
    targets, directories; for "nothing was changed" comparisons."""
    out: dict[str, object] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(folder) / name
            key = str(p.relative_to(root))
            if p.is_symlink():
                out[key] = ("link", os.readlink(p))
            elif p.is_dir():
                out[key] = "dir"
            else:
                out[key] = p.read_bytes()
    return out


def read_only_under(monkeypatch, root: Path) -> None:
    """Writes under ``root`` fail as on a read-only mount (the tests run as root, where
    permission bits stop nothing): every temporary file there raises ``EROFS``."""
    import errno
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        where = Path(kwargs.get("dir") or (args[2] if len(args) > 2 else tempfile.gettempdir())).resolve()
        if where == root.resolve() or root.resolve() in where.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(where))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def all_checkpoints_complete(run: Path) -> list[str]:
    """Every ``*.ckpt`` under its final name loads; returns their names."""
    from cml_cli.train.checkpoint import load_checkpoint

    names = []
    for p in sorted((run / "checkpoints").glob("*.ckpt")):
        load_checkpoint(p)
        names.append(p.name)
    return names


def no_temporaries(run: Path) -> bool:
    return not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="session")
def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
