"""``cml tune``: an Optuna study whose objective is one strict-protocol run.

A trial draws its parameters with TPE seeded by the study's seed plus the trial's number
(the same draws whatever the number of workers or invocations), trains an ordinary run directory
``<tune-dir>/trial-<n>`` (``evaluate_test=False``: test metrics are never computed for a
trial) and returns the validation NDCG@10 of the selected epoch; the median pruner stops a
trial whose per-epoch validation NDCG@10 falls below the median of earlier trials at the
same epoch, and a draw that breaks a rule between keys (``cr_alpha + cr_beta <= 1``) is pruned
without a run. The study lives in a storage: by default a journal file ``<tune-dir>/study.journal``
(several local processes share it), or any Optuna RDB URL (``--storage``), which several
machines can share. An invocation runs ``trials`` more trials, so running the same command
again continues the study; a trial whose process died (``kill -9``) is marked failed by the
next invocation on the same machine, or, on an RDB storage, by Optuna's heartbeat.

At the end the model's default configuration (what ``cml train`` runs without the study: the
preset, the model's settings and ``--set``) is trained like a trial in ``<tune-dir>/default``
(validation only; reused while its configuration is unchanged), so that the result can say
when the best trial scores below it. The best parameters go to ``<tune-dir>/best.toml`` (a
``[train]`` table usable as ``cml train --config`` and ``cml ablate --config``) and that
configuration is trained once more in ``<tune-dir>/best`` with its test split evaluated once
(a second invocation on the same study waits for these runs and reuses them).

A tune directory is marked by ``tune.json``; ``cml tune`` writes only into a new or empty
directory or one of its own. A trial that fails is one line in the study (its ``error``
attribute) and the study goes on; a journal whose last record was cut off half-way is repaired
(the torn record set aside) before the study is opened.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cml_cli import registry
from cml_cli.config import (
    SEED_MAX,
    RunConfig,
    apply_overrides,
    check_cutoffs,
    compose,
    config_changes,
    config_to_toml,
    dataset_preset_name,
    load_toml,
)
from cml_cli.data.store import (
    ARRAYS,
    check_name,
    check_writable_dir,
    load_dataset,
    process_alive,
    read_manifest,
    resolve_dataset_dir,
    write_json_atomic,
    write_text_atomic,
)
from cml_cli.errors import InputError, Interrupted, RunError, did_you_mean, redact
from cml_cli.layout import BEST_CONFIG, BEST_RUN, DEFAULT_RUN, JOURNAL, TUNE_FILE, trial_dir_name, worker_log_name
from cml_cli.lifeline import child_env, die_with_parent
from cml_cli.tracking import Tracker, Tracking
from cml_cli.train.rundir import RunDir
from cml_cli.tune.space import Param, load_space

METRIC = "ndcg@10"
STUDY = "cml-tune"
MAX_JOBS = 256


class TrialFailed(RunError):
    """A trial's run failed; its one-line error is the trial's ``error`` attribute."""


def _optuna():
    """Optuna, quiet: failed trials are reported by ``cml tune`` itself, one line each, never
    with Optuna's traceback."""
    try:
        import optuna
    except ImportError:
        raise InputError("cml tune needs Optuna: pip install 'cml-cli[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


@dataclass
class TuneSpec:
    """Everything a worker process needs to run trials of a study."""

    dataset: str
    dataset_dir: str
    model: str
    preset: str
    fixed: dict[str, Any]
    params: list[dict[str, Any]]
    seed: int
    tune_dir: str
    storage: str
    pruner: bool = True
    threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    track: dict[str, Any] | None = None

    def tracker(self, run_name: str) -> Tracker | None:
        """The ``--track`` tracker of the run ``run_name`` (a trial, ``default`` or ``best``), or None."""
        return Tracking(**self.track).named(run_name=run_name).tracker() if self.track else None

    def space(self) -> list[Param]:
        return [Param(**{**p, "choices": tuple(p.get("choices", ()))}) for p in self.params]

    def config(self, params: dict[str, Any]) -> RunConfig:
        """The run configuration of a trial: preset, model settings, ``--set``, then the draw."""
        cfg = compose(self.preset, [{"model": self.model}, self.fixed, params])
        cfg.seed, cfg.protocol = self.seed, "strict"
        return cfg.validate()


def open_storage(url: str):
    """An Optuna storage: a journal file path or an RDB URL (with heartbeats); exit 2 if it
    cannot be opened."""
    optuna = _optuna()
    try:
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            repair_journal(Path(url))
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's terms
            warnings.simplefilter("ignore")
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    except Exception as e:  # driver missing, host unreachable, bad URL, unwritable file ...
        raise InputError(redact(f"--storage {url}: cannot open the study storage ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:200]})")) from None


def repair_journal(path: Path) -> Path | None:
    """Set aside a last record that a write stopped half-way (``kill -9``, a full disk) left
    at the end of a journal file, so that the next record starts on a line of its own; the
    torn bytes go to ``<journal>.torn-<time>`` (returned; None when nothing was torn). Done
    under Optuna's own journal lock, so a record being written right now is never touched."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(end - 1)
            if f.read(1) == b"\n":
                return None
            cut = _after_last_newline(f, end)
            f.seek(cut)
            aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            aside.write_bytes(f.read())
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    sys.stderr.write(f"warning: {path}: its last record was cut off half-way (a write that never finished); set "
                     f"aside in {aside.name}, the study continues\n")
    return aside


def _after_last_newline(f, end: int) -> int:
    """The offset just after the last newline before ``end`` in the binary file ``f`` (0: none)."""
    while end > 0:
        start = max(end - 65536, 0)
        f.seek(start)
        i = f.read(end - start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


def load_study(spec: TuneSpec, storage=None):
    optuna = _optuna()
    storage = storage or open_storage(spec.storage)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2) if spec.pruner else \
        optuna.pruners.NopPruner()
    from cml_cli.tune.sampler import TrialSeededTPESampler

    try:
        return optuna.create_study(storage=storage, study_name=STUDY, direction="maximize", load_if_exists=True,
                                   sampler=TrialSeededTPESampler(spec.seed), pruner=pruner)
    except Exception as e:
        raise InputError(redact(f"--storage {spec.storage}: cannot create or load the study ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:200]})")) from None


def _signature(spec: TuneSpec, checksum: str) -> dict[str, Any]:
    return {"dataset": spec.dataset, "dataset_checksum": checksum, "model": spec.model, "preset": spec.preset,
            "fixed": {k: str(v) for k, v in spec.fixed.items()}, "space": spec.params, "seed": spec.seed}


def _check_same_study(study, signature: dict[str, Any], where: str) -> None:
    """The study must have been started with the same dataset, model, settings and space."""
    known = study.user_attrs.get("signature")
    if known is None:
        study.set_user_attr("signature", signature)
    elif known != signature:
        diff = sorted(k for k in signature if known.get(k) != signature[k])
        raise InputError(f"{redact(where)}: holds a study of other settings ({', '.join(diff)} differ); use another "
                         "--name or --storage to start a new one")


def _mark_dead_trials(study) -> list[int]:
    """Running trials of this machine whose process is gone (killed) become failed trials."""
    from optuna.trial import TrialState

    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if host == platform.node() and isinstance(pid, int) and not process_alive(pid):
            study.tell(t.number, state=TrialState.FAIL)
            dead.append(t.number)
    return dead


class TrialProgress:
    """Reports each epoch's validation NDCG@10 to the trial (pruning) and to an observer."""

    def __init__(self, trial, on_epoch: Callable[[int, int, float], None] | None = None):
        self.trial, self.on_epoch = trial, on_epoch

    def start(self, epochs: int, done: int) -> None: ...

    def start_epoch(self, epoch: int, batches: int) -> None: ...

    def advance(self, loss: float) -> None: ...

    def end_epoch(self, row: dict) -> None:
        value = float((row.get("valid") or {}).get(METRIC, 0.0))
        self.trial.set_user_attr("epoch", row["epoch"])
        if self.on_epoch is not None:
            self.on_epoch(self.trial.number, row["epoch"], value)
        self.trial.report(value, row["epoch"])
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"validation {METRIC} {value:.4f} at epoch {row['epoch']}")

    def stop(self) -> None: ...


class EventProgress:
    """Each epoch's validation NDCG@10 of a run outside the study (the default configuration,
    the best one) as an ``"epoch"`` event named ``run``."""

    def __init__(self, run: str, notify: Callable[[str, dict], None]):
        self.run, self.notify = run, notify

    def start(self, epochs: int, done: int) -> None: ...

    def start_epoch(self, epoch: int, batches: int) -> None: ...

    def advance(self, loss: float) -> None: ...

    def end_epoch(self, row: dict) -> None:
        value = (row.get("valid") or {}).get(METRIC)
        self.notify("epoch", {"number": self.run, "epoch": row["epoch"], "value": value})

    def stop(self) -> None: ...


def objective(spec: TuneSpec, on_epoch=None) -> Callable:
    """The function Optuna maximises: one run of the drawn configuration, validation NDCG@10.
    A run that fails makes the trial fail with one line (its ``error`` attribute); the study
    goes on."""
    import optuna

    from cml_cli.train.loop import Watch, train

    space = spec.space()

    def run(trial) -> float:
        trial.set_user_attr("host", platform.node())
        trial.set_user_attr("pid", os.getpid())
        name = trial_dir_name(trial.number)
        trial.set_user_attr("run_dir", str(Path(spec.tune_dir) / name))
        try:
            try:
                cfg = spec.config({p.name: p.suggest(trial) for p in space})
            except InputError as e:  # a draw that breaks a rule between keys (cr_alpha + cr_beta <= 1)
                raise optuna.TrialPruned(f"infeasible draw: {e}") from None
            watch = Watch(TrialProgress(trial, on_epoch), spec.tracker(name), evaluate_test=False)
            result = train(spec.dataset_dir, cfg, runs_dir=Path(spec.tune_dir), name=name, force=True, watch=watch)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # a failing trial is one line in the study, never a traceback
            if _caused_by_interrupt(e):
                raise KeyboardInterrupt from None
            error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            trial.set_user_attr("error", error)
            raise TrialFailed(error) from None
        return float(result["valid"][METRIC])

    return run


def _caused_by_interrupt(error: BaseException) -> bool:
    """Did Ctrl-C cause ``error``? An interrupt inside a library's cleanup (Optuna's journal lock
    removing a file it never created) surfaces as another exception whose context is the
    ``KeyboardInterrupt``; the study must stop then, not record a failed trial."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def worker_main(argv: list[str]) -> int:
    """``python -m cml_cli.tune SPEC_JSON N``: run N trials of the study (none: until the
    timeout); the worker ends if its parent (``cml tune``) does."""
    die_with_parent()
    spec = TuneSpec(**json.loads(argv[0]))
    quota = int(argv[1]) or None
    if spec.threads:
        from cml_cli.threads import apply_torch

        apply_torch(spec.threads)
    load_study(spec).optimize(objective(spec), n_trials=quota, timeout=spec.extra.get("timeout"), catch=(RunError,))
    return 0


def _finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


@dataclass(frozen=True)
class TuneOptions:
    """What a study searches and how long (``cml tune``'s options): ``trials`` more trials, or
    ``until`` the study holds that many finished ones, or for ``timeout`` seconds; ``jobs``
    worker processes; the search ``space`` file (default: the model's), the Optuna ``storage``
    URL (default: a journal in the tune directory), the sampler's and every run's ``seed``,
    the median ``pruner``, the ``overrides`` fixed for every trial (``--set``) and
    ``tracking`` (``--track``: every trial, the default and the best run logged)."""

    trials: int | None = 10
    until: int | None = None
    timeout: float | None = None
    jobs: int = 1
    space: Path | None = None
    storage: str | None = None
    seed: int = 0
    pruner: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    tracking: Tracking | None = None


def run_tune(
    dataset: str | Path,
    model: str,
    options: TuneOptions = TuneOptions(),
    *,
    name: str | None = None,
    runs_dir: Path = Path("runs"),
    data_dir: Path | None = None,
    on_event: Callable[[str, dict], None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the trials ``options`` ask for, train the model's default configuration for
    comparison, write ``best.toml``, train the best configuration and evaluate its test split
    once. Everything (options, space, the whole dataset, the directory) is checked first.

    Returns ``{"trials", "best_value", "best_params", "best_config", "test", "tune_dir",
    "storage", "best_run", "default_value", "default_run", "best_below_default", "pruned",
    "failed", "seconds"}`` (``trials``: finished trials so far; ``storage`` without credentials;
    ``default_value``: the validation NDCG@10 of the model's default configuration, and
    ``best_below_default`` whether the best trial scored below it). ``on_event(kind, info)``
    reports ``"trial"`` (``error`` for a failed one), ``"epoch"`` (of a trial in this process,
    or of the ``"default"`` or ``"best"`` run), ``"default"`` and ``"best"``. Ctrl-C raises
    :class:`cml_cli.errors.Interrupted`."""
    _optuna()  # a missing extra is one line before anything else
    started = time.perf_counter()
    _check_budget(model, options)
    spec, manifest, space_file = _prepare(dataset, data_dir, model, options)
    tune_dir = _tune_dir(Path(runs_dir), name, f"tune-{manifest['name']}-{model}")
    spec.tune_dir, spec.storage = str(tune_dir), options.storage or str(tune_dir / JOURNAL)
    spec.track = options.tracking.named(experiment=tune_dir.name).check().to_dict() if options.tracking else None
    study = load_study(spec) if options.storage else None  # an unreachable database: before anything is created
    created = not tune_dir.exists()
    tune_dir.mkdir(parents=True, exist_ok=True)
    try:
        study = _open_study(spec, study, manifest, space_file, command)
        trials = options.trials if options.until is None else max(options.until - len(_finished(study)), 0)
        _search(spec, study, options.jobs, trials, on_event)
        return _conclude(spec, study, on_event, started)
    except KeyboardInterrupt:
        raise Interrupted(f"tune {tune_dir} stopped; its finished trials are kept in {redact(spec.storage)}: run the "
                          "same command again to continue the study") from None
    except BaseException:
        if created and (study is None or not study.get_trials(deepcopy=False)):
            _discard_new_tune_dir(tune_dir)
        raise


def _tune_dir(runs_dir: Path, name: str | None, default: str) -> Path:
    """The study's directory under ``runs_dir`` (``name``, else ``default``), checked to be
    one ``cml tune`` may write into, as an absolute path."""
    tune_dir = runs_dir / (check_name(name, "--name") if name else default)
    check_tune_dir(tune_dir)
    check_writable_dir(tune_dir, "tune directory")
    return tune_dir.resolve()


def _open_study(spec: TuneSpec, study, manifest: dict[str, Any], space_file: Path, command: str | None):
    """The study of ``spec`` (``study`` when already loaded), with the tune directory's marker
    written, checked to be this study's, its records updated and its dead trials marked."""
    tune_dir = Path(spec.tune_dir)
    if not (tune_dir / TUNE_FILE).is_file():
        write_json_atomic(tune_dir / TUNE_FILE, {"dataset": spec.dataset, "model": spec.model,
                                                 "storage": redact(spec.storage)})
    study = study or load_study(spec)
    _check_same_study(study, _signature(spec, manifest["files"][ARRAYS]), spec.storage)
    study.set_user_attr("space_file", str(space_file))
    study.set_user_attr("last_command", redact(command) if command else command)
    _mark_dead_trials(study)
    return study


def _check_budget(model: str, options: TuneOptions) -> None:
    """The options that say what to search and how long, checked (an :class:`InputError`)."""
    trials, until, timeout, jobs, seed = options.trials, options.until, options.timeout, options.jobs, options.seed
    if model not in registry.MODELS:
        raise InputError(f"--model: unknown model '{model}'{did_you_mean(model, registry.names())} (known: "
                         f"{', '.join(registry.names())})")
    if trials is not None and until is not None:
        raise InputError("--trials and --until: give one of them")
    if trials is not None and trials < 1:
        raise InputError(f"--trials: must be at least 1, got {trials}")
    if until is not None and until < 1:
        raise InputError(f"--until: must be at least 1, got {until}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise InputError(f"--timeout: must be a positive number of seconds, got {timeout}")
    if trials is None and until is None and timeout is None:
        raise InputError("--trials, --until or --timeout: say how long to search")
    if not 1 <= jobs <= MAX_JOBS:
        raise InputError(f"--jobs: must be in [1, {MAX_JOBS}], got {jobs}")
    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed: must be in [0, {SEED_MAX}], got {seed}")


def _prepare(dataset: str | Path, data_dir: Path | None, model: str,
             options: TuneOptions) -> tuple[TuneSpec, dict[str, Any], Path]:
    """The study's spec (without its directory and storage), the dataset's manifest and the
    search space's file, all checked; the dataset is read whole (checksums, structure) so that
    no trial fails on it."""
    fixed = dict(options.overrides)
    for key in ("model", "seed", "protocol"):
        if key in fixed:
            raise InputError(f"--set {key}=...: a study sets {key} itself (use --model / --seed)")
    apply_overrides(RunConfig(), fixed)  # unknown keys and bad values -> exit 2 before anything runs
    space_file, params = load_space(options.space, model, fixed)
    ds_dir = resolve_dataset_dir(dataset, data_dir).resolve()
    manifest = read_manifest(ds_dir)
    if not manifest.get("n_valid_users"):
        raise InputError(f"dataset '{manifest['name']}' has no validation split (preprocessed with --no-valid): "
                         "tuning selects on validation only")
    load_dataset(ds_dir)
    spec = TuneSpec(dataset=str(manifest["name"]), dataset_dir=str(ds_dir), model=model,
                    preset=dataset_preset_name(manifest), fixed=fixed,
                    params=[{**p.__dict__, "choices": list(p.choices)} for p in params], seed=options.seed,
                    tune_dir="", storage="", pruner=options.pruner, extra={"timeout": options.timeout})
    first = spec.config({p.name: (p.choices[0] if p.type == "categorical" else p.low) for p in params})
    check_cutoffs(first.ks, manifest["n_items"])  # a valid configuration for this dataset?
    return spec, manifest, space_file


def check_tune_dir(tune_dir: Path) -> None:
    """``cml tune`` writes only into its own kind of directory: a missing or empty one, or one
    holding ``tune.json`` (or the ``study.journal`` of an earlier version); never through a
    symbolic link. Anything else is an :class:`InputError`, and nothing there is touched."""
    tune_dir = Path(tune_dir)
    if tune_dir.is_symlink():
        raise InputError(f"{tune_dir}: is a symbolic link; cml tune never writes through one, so nothing was "
                         "changed (use another --name)")
    if not tune_dir.exists():
        return
    if not tune_dir.is_dir():
        raise InputError(f"{tune_dir}: exists and is not a directory; nothing was changed (use another --name)")
    if any(tune_dir.iterdir()) and not any((tune_dir / f).is_file() for f in (TUNE_FILE, JOURNAL)):
        raise InputError(f"{tune_dir}: exists and is not a tune directory (no {TUNE_FILE}); cml tune writes only "
                         "into its own directories, so nothing was changed (use another --name)")


def _discard_new_tune_dir(tune_dir: Path) -> None:
    """After a failure before any trial ran: remove what this invocation created (the
    directory, its marker and its study journal), so that nothing empty is left behind."""
    for f in (TUNE_FILE, JOURNAL):
        (tune_dir / f).unlink(missing_ok=True)
    try:
        tune_dir.rmdir()
    except OSError:
        pass  # something else is there: leave it


def _search(spec: TuneSpec, study, jobs: int, trials: int | None, on_event) -> None:
    """Run ``trials`` trials (None: until the timeout) in this process or ``jobs`` workers."""
    notify = on_event or (lambda kind, info: None)

    def on_trial(study_, trial) -> None:
        best = _best(study_)
        notify("trial", {"number": trial.number, "state": trial.state.name, "value": trial.value,
                         "error": trial.user_attrs.get("error"), "finished": len(_finished(study_)),
                         "best_value": best.value if best else None})

    if trials == 0:
        return  # the study already has what --until asks for
    if jobs == 1:
        study.optimize(objective(spec, lambda n, e, v: notify("epoch", {"number": n, "epoch": e, "value": v})),
                       n_trials=trials, timeout=spec.extra.get("timeout"), callbacks=[on_trial], catch=(RunError,))
    else:
        _run_workers(spec, jobs, trials, study, notify)


def _conclude(spec: TuneSpec, study, on_event, started: float) -> dict[str, Any]:
    """After the trials: the default configuration trained for comparison, ``best.toml``, the
    best configuration trained once more with its test split, and the result of :func:`run_tune`."""
    from optuna.trial import TrialState

    notify = on_event or (lambda kind, info: None)
    best = _best(study)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if best is None:
        errors = [t.user_attrs["error"] for t in failed if t.user_attrs.get("error")]
        why = f"; the last error: {errors[-1]}" if errors else ""
        raise RunError(redact(f"no trial of the study in {spec.storage} finished ({len(failed)} failed{why})"))
    tune_dir = Path(spec.tune_dir)
    reference = _train_default(spec, tune_dir, notify)
    default_value = float(reference["valid"][METRIC])
    notify("default", {"value": default_value, "best_value": best.value, "run": reference["run_dir"]})
    best_file = write_best(spec, best, tune_dir / BEST_CONFIG, len(_finished(study)), default_value)
    notify("best", {"number": best.number, "value": best.value, "params": best.params})
    final = _train_best(spec, tune_dir, best_file, EventProgress("best", notify))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    return {"trials": len(_finished(study)), "best_value": best.value, "best_params": best.params,
            "best_config": str(best_file), "test": final["test"], "best_run": final["run_dir"],
            "best_trial": best.number, "default_value": default_value, "default_run": reference["run_dir"],
            "best_below_default": best.value < default_value, "pruned": len(pruned), "failed": len(failed),
            "tune_dir": str(tune_dir), "storage": redact(spec.storage), "seconds": time.perf_counter() - started}


def _best(study):
    try:
        return study.best_trial
    except ValueError:
        return None


def write_best(spec: TuneSpec, best, path: Path, finished: int, default_value: float | None = None) -> Path:
    """``best.toml``: the model, the fixed ``--set`` options and the best trial's parameters, as
    a ``[train]`` table (applied after a dataset's preset: ``cml train --config best.toml``);
    its header says when the best trial scored below the default configuration."""
    values = {**apply_overrides(RunConfig(), spec.fixed).to_dict(), "model": spec.model, **best.params}
    keys = ["model", *spec.fixed, *best.params]
    cfg = apply_overrides(RunConfig(), {k: values[k] for k in keys})
    body = config_to_toml(cfg).splitlines()[1:]
    chosen = [line for line in body if line.split(" = ")[0] in keys]
    header = [f"# cml tune: best of {finished} finished trials (trial {best.number}, validation {METRIC} "
              f"{best.value:.6f})", f"# dataset {spec.dataset}, preset {spec.preset}, seed {spec.seed}, storage "
              f"{redact(spec.storage)}"]
    if default_value is not None and best.value < default_value:
        header.append(f"# below the model's default configuration (validation {METRIC} {default_value:.6f}): "
                      "the search did not find a better one")
    header.append("[train]")
    write_text_atomic(path, "\n".join(header + chosen) + "\n")
    return path


def _train_default(spec: TuneSpec, tune_dir: Path, notify: Callable[[str, dict], None]) -> dict[str, Any]:
    """Train the model's default configuration (none of the space's values) like a trial in
    ``<tune-dir>/default``: strict protocol, the study's seed, validation only."""
    return _train_once(spec, spec.config({}), tune_dir / DEFAULT_RUN, "valid", EventProgress("default", notify))


def _train_best(spec: TuneSpec, tune_dir: Path, best_file: Path, progress=None) -> dict[str, Any]:
    """Train ``best.toml`` once in ``<tune-dir>/best`` (test evaluated once)."""
    cfg = compose(spec.preset, [load_toml(best_file)])
    cfg.seed = spec.seed
    return _train_once(spec, cfg.validate(), tune_dir / BEST_RUN, "test", progress)


def _train_once(spec: TuneSpec, cfg: RunConfig, path: Path, split: str, progress) -> dict[str, Any]:
    """Train ``cfg`` in ``path`` (with its test split evaluated when ``split`` is ``"test"``),
    or reuse that run when it already holds exactly this configuration and ``split``'s metrics.
    While another process (a second ``cml tune`` on the same study) trains it, wait for that
    process, then look again."""
    from cml_cli.train.loop import Watch, train

    run = RunDir(path)
    while True:
        while run.holder() is not None:
            time.sleep(0.5)
        stored = run.read_config_dict()
        final = run.read_final() if stored is not None and not config_changes(stored, cfg.to_dict()) else None
        if final is not None and final.get(split):
            return final
        try:
            return train(spec.dataset_dir, cfg, runs_dir=path.parent, name=path.name, force=True,
                         watch=Watch(progress, spec.tracker(path.name), evaluate_test=split == "test"))
        except InputError:
            if run.holder() is None:
                raise
            # another process took the run's lock first: wait for it, then look again


def _run_workers(spec: TuneSpec, jobs: int, trials: int | None, study, notify) -> None:
    """``jobs`` worker processes share the study's storage (``trials`` split between them as
    evenly as possible); this process reports progress."""
    from optuna.trial import TrialState

    from cml_cli.threads import environment, per_worker

    spec.threads = per_worker(jobs)
    env = child_env({**environment(spec.threads), "PYTHONWARNINGS": "ignore"})
    quotas = [0] * jobs if trials is None else [trials // jobs + (j < trials % jobs) for j in range(jobs)]
    procs = []
    for j, quota in enumerate(quotas):
        if trials is not None and quota == 0:
            continue
        log = open(Path(spec.tune_dir) / worker_log_name(j), "a")
        procs.append(subprocess.Popen([sys.executable, "-m", "cml_cli.tune", json.dumps(spec.__dict__), str(quota)],
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env))
        log.close()
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    seen = {t.number for t in study.get_trials(deepcopy=False, states=ended)}  # earlier invocations' trials
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            for t in study.get_trials(deepcopy=False, states=ended):
                if t.number not in seen:
                    seen.add(t.number)
                    best = _best(study)
                    notify("trial", {"number": t.number, "state": t.state.name, "value": t.value,
                                     "error": t.user_attrs.get("error"), "finished": len(_finished(study)),
                                     "best_value": best.value if best else None})
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if "epoch" in t.user_attrs:
                    notify("epoch", {"number": t.number, "epoch": t.user_attrs["epoch"], "value": None})
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    failed = [j for j, p in enumerate(procs) if p.returncode not in (0, None)]
    if failed:
        raise RunError(f"tune worker(s) {failed} failed: see {spec.tune_dir}/worker-<n>.log")
