"""Experiment tracking (``--track tensorboard|mlflow``): a run's configuration, per-epoch
curves and final metrics, sent to TensorBoard or MLflow as the run trains.

The epoch loop feeds a :class:`Tracker` through :func:`tracked`: the resolved configuration
when the run starts, each epoch's row of ``metrics.jsonl`` (losses, validation metrics,
seconds) and, at the end, the final metrics with ``config.toml`` and ``metrics.json``. A
tracker writes nothing before the first epoch is complete, so a run that fails earlier
leaves nothing behind, as the loop guarantees for its own files. Tracking is a run option,
not a hyperparameter: it changes no configuration, so it never affects which runs a grid or a
study reuses.

Metric names are the row's keys with ``@`` written ``_at_`` (MLflow refuses ``@``):
``train/loss``, ``train/bpr`` ..., ``time/seconds``, ``valid/ndcg_at_10`` at step = epoch;
``final/test/hr_at_10``, ``final/test/full/coverage_at_10``, ``final/valid/ndcg_at_10``,
``final/best_epoch`` ... at step = the selected epoch.

* TensorBoard: event files in the run directory itself, so ``tensorboard --logdir runs/``
  shows every run (a grid's and a study's runs under their directory's name).
* MLflow: ``$MLFLOW_TRACKING_URI``, else a local file store ``./mlruns`` (no server). Single
  runs go to the experiment ``cml``, a grid to one experiment named after the grid with a run
  per (variant, seed), a study to one named after the study with a run per trial. The MLflow
  run's id is kept in ``<run>/mlflow.json``, so a resumed run continues its MLflow run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

from cml_cli.data.store import read_json_object, write_json_atomic
from cml_cli.errors import InputError, redact

BACKENDS = ("tensorboard", "mlflow")
EXTRAS = {"tensorboard": ("tensorboard", "TensorBoard"), "mlflow": ("mlflow", "MLflow")}
MLFLOW_RUN = "mlflow.json"


class Tracker(Protocol):
    """What the epoch loop feeds (through :func:`tracked`)."""

    def open(self, run_dir: Path, config: dict[str, Any]) -> None:
        """A run starts (or resumes) in ``run_dir`` with the resolved ``config``."""
        ...

    def epoch(self, row: dict[str, Any]) -> None:
        """An epoch ended: its row of ``metrics.jsonl``."""
        ...

    def finish(self, result: dict[str, Any], files: list[Path]) -> None:
        """The run's final metrics (``metrics.json``) and the files to keep with them."""
        ...

    def close(self, error: BaseException | None) -> None:
        """The run ended, successfully when ``error`` is None."""
        ...


@dataclass(frozen=True)
class Tracking:
    """The ``--track`` option: the ``backend`` (tensorboard | mlflow) and, for MLflow, the
    ``experiment`` a run joins, the tracking ``uri`` (:meth:`check` resolves it) and the run's
    name (default: its directory's). Plain values only, so it travels to worker processes."""

    backend: str
    experiment: str = "cml"
    uri: str | None = None
    run_name: str | None = None

    def check(self) -> Tracking:
        """This option, validated, with the MLflow URI resolved and the experiment created:
        one :class:`InputError` line (exit 2) for an unknown backend, a missing extra or an
        MLflow store that cannot be used. Call it before any work."""
        if self.backend not in BACKENDS:
            raise InputError(f"--track: '{self.backend}' is not one of {', '.join(BACKENDS)}")
        module, label = EXTRAS[self.backend]
        if find_spec(module) is None:
            raise InputError(f"--track {self.backend} needs {label}: pip install 'cml-cli[{self.backend}]'")
        if self.backend == "tensorboard":
            return self
        uri = mlflow_uri(self.uri)
        try:
            _experiment_id(_mlflow_client(uri), self.experiment)
        except Exception as e:  # unreachable server, unwritable directory, bad URI ...
            raise InputError(f"--track mlflow: cannot use the MLflow tracking store {uri} ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]})") from None
        return replace(self, uri=uri)

    def named(self, experiment: str | None = None, run_name: str | None = None) -> Tracking:
        """The same option for another experiment and/or run name."""
        return replace(self, experiment=experiment or self.experiment, run_name=run_name or self.run_name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tracker(self) -> Tracker:
        """A fresh tracker for one run."""
        return TensorBoardTracker() if self.backend == "tensorboard" else MLflowTracker(self)


def metrics(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(name, value)`` of every number in ``values`` (nested dictionaries as ``outer/inner``),
    ``@`` written ``_at_``; non-numbers and the bookkeeping keys ``epoch`` and ``seed`` are left out."""
    for key, value in values.items():
        name = f"{prefix}{key}".replace("@", "_at_")
        if isinstance(value, dict):
            yield from metrics(value, name + "/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and key not in ("epoch", "seed"):
            yield name, float(value)


def epoch_metrics(row: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """An epoch's row: losses as ``train/<key>``, times as ``time/<key>``, splits as ``<split>/<metric>``."""
    for name, value in metrics(row):
        yield (name if "/" in name else f"{'time' if name.endswith('seconds') else 'train'}/{name}"), value


def final_metrics(result: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The final result's numbers under ``final/``."""
    return metrics(result, "final/")


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {redact(message)}\n")
    sys.stderr.flush()


class TrackedProgress:
    """A progress display that also hands each epoch's row to a tracker (first, so that an
    observer stopping the run, such as a tuning pruner, does not lose it). A failing tracker
    costs a warning, never the run: tracking stops and training goes on."""

    def __init__(self, progress, tracker: Tracker):
        self.progress, self.tracker = progress, tracker

    def start(self, epochs: int, done: int) -> None:
        self.progress.start(epochs, done)

    def start_epoch(self, epoch: int, batches: int) -> None:
        self.progress.start_epoch(epoch, batches)

    def advance(self, loss: float) -> None:
        self.progress.advance(loss)

    def end_epoch(self, row: dict) -> None:
        self.call("epoch", row)
        self.progress.end_epoch(row)

    def stop(self) -> None:
        self.progress.stop()

    def call(self, method: str, *args) -> None:
        if self.tracker is None:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as e:
            _warn(f"tracking stopped ({type(e).__name__}: {' '.join(str(e).split())[:200]}); training goes on")
            self.tracker = None


def tracked(tracker: Tracker | None, run_dir: Path, config: dict[str, Any], files: list[Path], progress,
            fit: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """``fit(progress)`` (one run's epochs and final evaluation), with ``tracker`` fed the run's
    ``config``, each epoch's row and the final result with ``files``; without a tracker, just
    ``fit(progress)``."""
    if tracker is None:
        return fit(progress)
    tracker.open(run_dir, config)
    watched = TrackedProgress(progress, tracker)
    try:
        result = fit(watched)
        watched.call("finish", result, files)
    except BaseException as e:
        watched.call("close", e)
        raise
    watched.call("close", None)
    return result


# --------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker:
    """Event files in the run directory (``torch.utils.tensorboard``): each epoch's metrics at
    step = epoch, the final ones at the selected epoch, the configuration as text."""

    def __init__(self):
        self.run_dir: Path | None = None
        self.config: dict[str, Any] = {}
        self.writer = None

    def open(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.run_dir, self.config = Path(run_dir), config

    def _writer(self, step: int, purge: bool):
        """The writer, opened on first use; ``purge``: drop earlier events from ``step`` on
        (a resumed run trains again the epochs after its last checkpoint)."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=step if purge else None)
            self.writer.add_text("config", "\n".join(f"    {k} = {v!r}" for k, v in self.config.items()), step)
        return self.writer

    def epoch(self, row: dict[str, Any]) -> None:
        writer = self._writer(row["epoch"], purge=True)
        for name, value in epoch_metrics(row):
            writer.add_scalar(name, value, row["epoch"])
        writer.flush()

    def finish(self, result: dict[str, Any], files: list[Path]) -> None:
        step = int(result.get("best_epoch") or 0)
        writer = self._writer(step, purge=False)
        for name, value in final_metrics(result):
            writer.add_scalar(name, value, step)
        writer.flush()

    def close(self, error: BaseException | None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------- MLflow


def mlflow_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the file store ``./mlruns`` (as an absolute
    ``file:`` URI, so that worker processes elsewhere write to the same store)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()


def _mlflow_client(uri: str):
    """An ``MlflowClient`` on ``uri``. MLflow 3 keeps the file store (the default ``./mlruns``)
    only for those who opt in (``MLFLOW_ALLOW_FILE_STORE``): a local path opts in."""
    from mlflow.tracking import MlflowClient

    if "://" not in uri or uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str) -> str:
    """The id of the experiment ``name``, created if needed (by whichever process comes first)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:
        found = client.get_experiment_by_name(name)  # another worker created it meanwhile
        if found is None:
            raise
        return found.experiment_id


class MLflowTracker:
    """One MLflow run per run directory: the configuration as parameters, per-epoch and final
    metrics, ``config.toml`` / ``metrics.json`` as artifacts, status FINISHED, FAILED or
    KILLED (interrupted, or a tuning trial stopped by the pruner)."""

    def __init__(self, tracking: Tracking):
        self.tracking = tracking
        self.run_dir: Path | None = None
        self.config: dict[str, Any] = {}
        self.client = self.run_id = None

    def open(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.run_dir, self.config = Path(run_dir), config

    def _run(self) -> str:
        """The MLflow run, started on first use: the one ``mlflow.json`` names (a resumed run),
        else a new one with the configuration as parameters."""
        if self.run_id is not None:
            return self.run_id
        uri = mlflow_uri(self.tracking.uri)
        self.client = _mlflow_client(uri)
        known = read_json_object(self.run_dir / MLFLOW_RUN) or {}
        if known.get("uri") == uri and known.get("run_id") and self._reopen(known["run_id"]):
            self.run_id = known["run_id"]
            return self.run_id
        from mlflow.entities import Param

        run = self.client.create_run(_experiment_id(self.client, self.tracking.experiment),
                                     run_name=self.tracking.run_name or self.run_dir.name,
                                     tags={"cml.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in self.config.items()])
        write_json_atomic(self.run_dir / MLFLOW_RUN, {"uri": uri, "run_id": self.run_id})
        return self.run_id

    def _reopen(self, run_id: str) -> bool:
        try:
            self.client.update_run(run_id, status="RUNNING")
        except Exception:  # deleted, or another store: start a new MLflow run
            return False
        return True

    def _log(self, values: Iterator[tuple[str, float]], step: int) -> None:
        from mlflow.entities import Metric

        run_id, now = self._run(), int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values])

    def epoch(self, row: dict[str, Any]) -> None:
        self._log(epoch_metrics(row), row["epoch"])

    def finish(self, result: dict[str, Any], files: list[Path]) -> None:
        self._log(final_metrics(result), int(result.get("best_epoch") or 0))
        for path in files:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, error: BaseException | None) -> None:
        if self.run_id is None:
            return
        pruned = type(error).__name__ == "TrialPruned"
        status = "FINISHED" if error is None else ("FAILED" if isinstance(error, Exception) and not pruned else "KILLED")
        self.client.set_terminated(self.run_id, status)
