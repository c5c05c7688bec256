"""The loss becomes NaN or infinite: training stops with a clear message naming the epoch and
batch, the last good checkpoint is kept, the exit code is 1."""

from __future__ import annotations

import math

from conftest import all_checkpoints_complete, no_temporaries, read_log, train_argv

from cml_cli.train.checkpoint import load_checkpoint


def test_nan_in_epoch_3_keeps_the_epoch_2_checkpoint(children, data_dir, reference, tmp_path):
    runs = tmp_path / "runs"
    run = runs / "nan"
    child = children.run(train_argv(data_dir, runs, "nan"), {"nan": {"epoch": 3, "batch": 2}})
    assert child.exitcode == 1, child.stderr
    assert child.stdout == ""  # --json: no result object for a failed run
    msg = " ".join(child.stderr.split())
    assert "error:" in msg and "Traceback" not in child.stderr
    assert "epoch 3, batch 2" in msg and "nan" in msg.lower()
    assert f"{run / 'checkpoints' / 'last.ckpt'} (epoch 2)" in msg
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["loop"]["epoch"] == 2
    assert all(math.isfinite(float(v.abs().max())) for v in last["trainer"]["model"].values())
    assert sorted(all_checkpoints_complete(run)) == ["best.ckpt", "last.ckpt", "previous.ckpt"]
    assert read_log(run) == reference["log"][:2]
    assert not (run / "metrics.json").exists()
    assert no_temporaries(run)


def test_diverging_learning_rate(children, data_dir, tmp_path):
    """``--set lr=1e30``: the real loss overflows; stopped in the first epoch, nothing left behind
    (a run that never completed an epoch is removed, so the same command can simply be rerun)."""
    runs = tmp_path / "runs"
    child = children.run(train_argv(data_dir, runs, "lr", "--set", "lr=1e30", "--set", "max_lr=1e30"))
    assert child.exitcode == 1, child.stderr
    msg = " ".join(child.stderr.split())
    assert "Traceback" not in child.stderr
    assert "epoch 1, batch" in msg and ("nan" in msg or "inf" in msg), msg
    assert "No epoch completed, so nothing was kept" in msg
    assert not (runs / "lr").exists()
