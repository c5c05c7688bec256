"""Truncated or corrupted checkpoints, manifests and processed datasets are detected with a
clear error naming the file; resume falls back to ``previous.ckpt`` where it can, rewrites
``metrics.jsonl`` from that checkpoint's history, and still ends with exactly the metrics of
an uninterrupted run."""

from __future__ import annotations

import json
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, no_temporaries, read_log, resume_argv, strip_timing, train_argv

from cml_cli.errors import InputError
from cml_cli.train.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def after_epoch_3(children, data_dir, tmp_path_factory) -> Path:
    """A run killed right after epoch 3 was checkpointed and logged:
    last.ckpt = epoch 3, previous.ckpt = epoch 2, metrics.jsonl has 3 rows."""
    runs = tmp_path_factory.mktemp("killed-runs")
    child = children.run(train_argv(data_dir, runs, "k3"), {"kill": {"target": "log", "epoch": 3, "phase": "after"}})
    assert child.exitcode == -signal.SIGKILL, child.stderr
    run = runs / "k3"
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["loop"]["epoch"] == 3
    assert load_checkpoint(run / "checkpoints" / "previous.ckpt")["loop"]["epoch"] == 2
    assert len(read_log(run)) == 3
    return run


@pytest.fixture
def damaged_run(after_epoch_3, tmp_path) -> Path:
    dst = tmp_path / "runs" / "k3"
    shutil.copytree(after_epoch_3, dst)
    return dst


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "bit flip"])
def test_corrupt_last_checkpoint_falls_back_to_previous(children, data_dir, reference, damaged_run, damage):
    last = damaged_run / "checkpoints" / "last.ckpt"
    if damage == "truncated":
        truncate(last)
    else:
        flip(last, last.stat().st_size // 2)
    # Leftovers of interrupted writes must not confuse resume.
    (damaged_run / "checkpoints" / ".last.ckpt.abc123.tmp").write_bytes(b"PK\x03\x04 half a zip")
    (damaged_run / ".metrics.jsonl.x.tmp").write_text('{"epoch": 9')
    child = children.run(resume_argv(data_dir, damaged_run))
    assert child.exitcode == 0, child.stderr
    warning = " ".join(child.stderr.split())
    assert f"{last}: corrupt checkpoint" in warning and "previous.ckpt (epoch 2)" in warning, child.stderr
    assert strip_timing(child.json()) == reference["result"]
    # metrics.jsonl was rewritten from previous.ckpt's history (2 rows), then grew again.
    assert read_log(damaged_run) == reference["log"]
    assert (damaged_run / "checkpoints" / "last.ckpt.corrupt").is_file()
    assert no_temporaries(damaged_run)


def test_both_checkpoints_corrupt_is_a_clear_error(cml, data_dir, damaged_run):
    truncate(damaged_run / "checkpoints" / "last.ckpt", 0.3)
    (damaged_run / "checkpoints" / "previous.ckpt").write_bytes(bytes(range(256)) * 10)
    res = cml(*resume_argv(data_dir, damaged_run))
    assert_clean_error(res, 2, "last.ckpt: corrupt checkpoint", "previous.ckpt: corrupt checkpoint",
                       "no usable checkpoint")
    assert len(read_log(damaged_run)) == 3  # nothing rewritten


def test_corrupt_best_checkpoint_is_named(cml, data_dir, damaged_run):
    truncate(damaged_run / "checkpoints" / "best.ckpt")
    res = cml(*resume_argv(data_dir, damaged_run))
    assert_clean_error(res, 2, "best.ckpt: corrupt checkpoint")


@pytest.mark.parametrize("name,content", [
    ("config.toml", "[train\nepochs = "),
    ("config.toml", "[train]\nepochs = 'many'\n"),
    ("manifest.json", '{"dataset": "synth'),
    ("manifest.json", "\x00\x01garbage"),
    ("manifest.json", "[]"),
])
def test_corrupt_run_files_are_named(cml, data_dir, damaged_run, name, content):
    (damaged_run / name).write_text(content)
    res = cml(*resume_argv(data_dir, damaged_run))
    assert_clean_error(res, 2, str(damaged_run / name))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)


def test_any_damage_to_a_checkpoint_is_detected(tmp_path):
    """Truncation at any length, or a flipped byte anywhere: an InputError naming the file,
    or (metadata bytes the content does not depend on) exactly the original content."""
    path = tmp_path / "c.ckpt"
    state = {"trainer": {"w": torch.randn(64, 8), "step": torch.tensor(3)}, "numpy_rng": {"s": 2**70 % 97},
             "loop": {"epoch": 2, "best": float("-inf"), "history": [{"epoch": 1, "loss": 0.5}]}}
    save_checkpoint(path, state)
    original = path.read_bytes()
    rng = random.Random(5)
    cuts = [0, 1, 10, len(original) // 3, len(original) - 1] + [rng.randrange(len(original)) for _ in range(10)]
    offsets = [rng.randrange(len(original)) for _ in range(60)]
    for cut in cuts:
        path.write_bytes(original[:cut])
        with pytest.raises(InputError, match=f"{path}: "):
            load_checkpoint(path)
    for off in offsets:
        path.write_bytes(original)
        flip(path, off)
        try:
            back = load_checkpoint(path)
        except InputError as e:
            assert str(path) in str(e)
        else:
            assert _same(back, state), f"undetected change at byte {off}"


# ------------------------------------------------------------------ processed datasets


@pytest.mark.parametrize("damage", ["truncate arrays", "flip arrays", "truncate manifest", "garbage manifest",
                                    "edit manifest", "manifest not an object"])
def test_corrupt_dataset_is_named_and_no_run_is_created(cml, fresh_data_dir, tmp_path, damage):
    ds = fresh_data_dir / "synthetic"
    arrays, manifest = ds / "arrays.npz", ds / "manifest.json"
    if damage == "truncate arrays":
        truncate(arrays)
    elif damage == "flip arrays":
        flip(arrays, arrays.stat().st_size // 2)
    elif damage == "truncate manifest":
        truncate(manifest)
    elif damage == "garbage manifest":
        manifest.write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "edit manifest":  # still valid JSON: only the checksum can tell
        m = json.loads(manifest.read_text())
        m["n_users"] += 1
        manifest.write_text(json.dumps(m))
    else:
        manifest.write_text("[1, 2]")
    runs = tmp_path / "runs"
    res = cml(*train_argv(fresh_data_dir, runs, "x"))
    assert_clean_error(res, 2, str(arrays if "arrays" in damage else manifest))
    assert not (runs / "x").exists()


def test_dataset_damaged_after_the_run_started_is_named_on_resume(cml, fresh_data_dir, damaged_run, tmp_path):
    truncate(fresh_data_dir / "synthetic" / "arrays.npz", 0.9)
    res = cml(*resume_argv(fresh_data_dir, damaged_run))
    assert_clean_error(res, 2, str(fresh_data_dir / "synthetic" / "arrays.npz"))
