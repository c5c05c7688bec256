"""The ``cml`` command: a thin Typer layer over the Python API.

Commands: preprocess, datasets, train, evaluate, ablate, report, tune (and ``help``).

Contract: results go to stdout (a rich table on a terminal, aligned plain text in a pipe:
:mod:`cml_cli.listing`; ``--json`` prints exactly one JSON object there and nothing else);
progress, notes and errors go to stderr (one plain line per epoch or event when stderr is not
a terminal, also with ``--json``). Exit codes: 0 success, 1 failure while running, 2 bad input
or usage (one ``error:`` line on stderr naming the file or option). Help text is plain
(``rich_markup_mode=None``), so nothing in square brackets is ever read as markup.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Optional, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from cml_cli import registry
from cml_cli.config import DEFAULT_KS, RunConfig
from cml_cli.errors import CMLError, InputError, Interrupted, InterruptExit, did_you_mean, redact
from cml_cli.listing import Listing, render

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})
# Messages: one line each, never wrapped; user text such as "cuda:-1:" is never turned into an
# emoji (emoji=False) nor read as markup (escaped).
err = Console(stderr=True, soft_wrap=True, emoji=False)

DataDir = typer.Option(None, "--data-dir", envvar="CML_DATA_DIR", metavar="DIR",
                       help="Processed datasets live here [default: $CML_DATA_DIR or ./data].")
RunsDir = typer.Option(Path("runs"), "--runs-dir", metavar="DIR", help="Run directories live here.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else there.")
KEYS = ", ".join(f.name for f in dataclasses.fields(RunConfig))
SetOpt = typer.Option([], "--set", metavar="KEY=VALUE", help=f"Override an option (repeatable). Keys: {KEYS}.")
TrackOpt = typer.Option(None, "--track", metavar="BACKEND", help="Also log to tensorboard (event files in each run "
                        "directory) or mlflow ($MLFLOW_TRACKING_URI, default ./mlruns).")
DatasetOpt = typer.Option(..., "--dataset", "-d", metavar="NAME", help="Processed dataset name (or path).")
ShortHelp = {
    "preprocess": "Turn files, an event log or synthetic data into a dataset.",
    "datasets": "List processed datasets with their statistics.",
    "train": "Train CML or a baseline: preset, checkpoints, progress.",
    "evaluate": "Evaluate a run: sampled (1 + 99) or full ranking.",
    "ablate": "Run variants x seeds and write the comparison table.",
    "report": "Tables, figures and report.md of an ablation.",
    "tune": "Search hyperparameters on validation (Optuna).",
}


class PlainCommand(TyperCommand):
    """Typer's command with its arguments shown by name alone (``RUN_DIR``), where recent
    Typer writes ``{RUN_DIR}`` in the usage line and ``RUN_DIR <path>`` in the argument list."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [p[1:-1] if p[:1] == "{" and p[-1:] == "}" else p for p in super().collect_usage_pieces(ctx)]

    def format_options(self, ctx, formatter) -> None:
        params = self.get_params(ctx)
        arguments = [(p.metavar or p.name.upper(), getattr(p, "help", None) or "") for p in params
                     if p.param_type_name == "argument"]
        options = [r for p in params if p.param_type_name == "option" and (r := p.get_help_record(ctx)) is not None]
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _version(value: bool) -> None:
    if value:
        from cml_cli import __version__
        from cml_cli.train.rundir import git_revision

        sys.stdout.write(f"cml {__version__} (git revision {git_revision()})\n")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print the version and git revision, then exit.")) -> None:
    """Contrastive meta learning for multi-behavior recommendation: preprocess, train, evaluate,
    ablate, report and tune. `cml COMMAND -h` shows a command's options."""


def _rel(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _data_dir(path: Optional[Path]) -> Path:
    return path if path is not None else Path("data")


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _note(text: str) -> None:
    err.print(f"note: {escape(redact(text))}", highlight=False)


def _command() -> str:
    """This invocation as ``cml ...``, paths relative to the working directory (for the records)."""
    from cml_cli.train.rundir import command_line

    return command_line(["cml", *sys.argv[1:]])


def _tracking(track: Optional[str]):
    """``--track`` as a :class:`cml_cli.tracking.Tracking` (the library checks it before any
    work: a missing extra exits 2), or None."""
    if track is None:
        return None
    from cml_cli.tracking import Tracking

    return Tracking(track)


@contextmanager
def _stoppable() -> Iterator[None]:
    """Ctrl-C inside: the API's :class:`Interrupted` (what stopped, what was kept, how to go
    on) becomes one line and exit code 130."""
    try:
        yield
    except Interrupted as e:
        raise InterruptExit(str(e)) from None


def _split_list(value: Optional[str], option: str) -> Optional[list[str]]:
    """``"a, b"`` -> ``["a", "b"]``; ``None`` stays ``None``; a list with no item is an error."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InputError(f"{option}: '{value}' names nothing (expected a comma-separated list)")
    return items


def _cutoffs(text: str) -> list[int]:
    try:
        ks = [int(k) for k in _split_list(text, "--ks")]
    except ValueError:
        raise InputError(f"--ks: expected comma-separated positive integers, got '{text}'") from None
    if any(k <= 0 for k in ks):
        raise InputError(f"--ks: cut-offs must be positive, got '{text}'")
    return ks


def _dataset_listing(rows: list[dict], title: str) -> Listing:
    cells = []
    for r in rows:
        counts = " · ".join(f"{b} {r['train_interactions'][b]:,}" for b in r["behaviors"])
        cells.append((r["name"], f"{r['n_users']:,}", f"{r['n_items']:,}", counts, f"{r['n_test_users']:,}",
                      f"{r['n_valid_users']:,}", r.get("source", "")))
    notes = () if rows else ("none yet: `cml preprocess --dataset synthetic` makes one without any file",)
    return Listing(title, ("dataset", "users", "items", "behaviors (train interactions)", "test", "valid", "source"),
                   tuple(cells), right=frozenset({1, 2, 4, 5}), notes=notes, wrap=frozenset({3, 6}))


@app.command(short_help=ShortHelp["preprocess"])
def preprocess(
    dataset: str = typer.Option(..., "--dataset", "-d", metavar="NAME",
                                help="tmall | ijcai | retailrocket | synthetic | any name."),
    source: Optional[Path] = typer.Option(None, "--source", "-s", metavar="PATH", help="File or directory to read."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", metavar="FORMAT",
                                      help="cml | mbcgcn | events | synthetic [default: detected]."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME",
                                       help="Name of the processed dataset [default: --dataset]."),
    behaviors: Optional[str] = typer.Option(None, "--behaviors", metavar="LIST",
                                            help="Comma-separated behaviors in order, target last."),
    size: str = typer.Option("tiny", "--size", metavar="SIZE", help="Synthetic size: tiny | small | medium | tmall, "
                             "or a count of training interactions such as 500k or 2M."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed for the validation split and evaluation candidates."),
    no_valid: bool = typer.Option(False, "--no-valid", help="Keep training untouched: no validation split."),
    events_preset: Optional[str] = typer.Option(None, "--events-preset", metavar="PRESET",
                                                help="Raw-log preset: taobao | ijcai | retailrocket."),
    user_col: Optional[str] = typer.Option(None, "--user-col", metavar="COLUMN", help="events: user column name."),
    item_col: Optional[str] = typer.Option(None, "--item-col", metavar="COLUMN", help="events: item column name."),
    behavior_col: Optional[str] = typer.Option(None, "--behavior-col", metavar="COLUMN",
                                               help="events: behavior column name."),
    time_col: Optional[str] = typer.Option(None, "--time-col", metavar="COLUMN", help="events: timestamp column name."),
    kcore: int = typer.Option(0, "--kcore", metavar="K", help="events: keep users and items with at least K "
                              "interactions."),
    data_dir: Optional[Path] = DataDir,
    as_json: bool = JsonOpt,
) -> None:
    """Turn published files, an event log or the synthetic generator into a processed dataset."""
    from cml_cli.data.store import check_name, check_writable_dir

    check_name(name if name is not None else dataset, "--name" if name is not None else "--dataset")
    behavior_list = _split_list(behaviors, "--behaviors")
    check_writable_dir(_data_dir(data_dir), "--data-dir", parent_must_exist=True)  # before any work
    from cml_cli.data.preprocess import DATASETS, ReadOptions, dataset_preset
    from cml_cli.data.preprocess import preprocess as run

    if dataset_preset(dataset) is None and did_you_mean(dataset, DATASETS):
        _note(f"'{dataset}' is not a dataset preset{did_you_mean(dataset, DATASETS)}: it gets no preset's "
              "behavior names or training settings")
    events_options = {k: v for k, v in {
        "preset": events_preset, "user_col": user_col, "item_col": item_col,
        "behavior_col": behavior_col, "time_col": time_col, "kcore": kcore or None,
    }.items() if v is not None}
    with _stoppable():
        path, ds = run(dataset, source, ReadOptions(fmt, behavior_list, size, events_options), name=name,
                       data_dir=_data_dir(data_dir), seed=seed, valid=not no_valid)
    stats = {**ds.stats(), "path": str(path)}
    if as_json:
        _print_json(stats)
    else:
        render(_dataset_listing([stats], f"processed dataset written to {_rel(path)}"))


@app.command(short_help=ShortHelp["datasets"])
def datasets(data_dir: Optional[Path] = DataDir, as_json: bool = JsonOpt) -> None:
    """List processed datasets with their statistics."""
    from cml_cli.data.store import list_datasets

    rows = list_datasets(_data_dir(data_dir))
    if as_json:
        _print_json({"datasets": rows})
    else:
        render(_dataset_listing(rows, f"processed datasets in {_rel(_data_dir(data_dir))}"))


def _metric_rows(metrics: dict) -> dict[str, float]:
    """Sampled metrics as they are, full-ranking ones (``metrics["full"]``) prefixed ``full ``."""
    flat = {k.upper(): v for k, v in metrics.items() if not isinstance(v, dict)}
    flat.update({f"full {k.upper()}": v for k, v in (metrics.get("full") or {}).items()})
    return flat


def _metrics_listing(result: dict, title: str) -> Listing:
    rows = [(split, name, f"{value:.2f}" if "ARP@" in name else f"{value:.4f}")
            for split in ("valid", "test") for name, value in _metric_rows(result.get(split) or {}).items()]
    return Listing(title, ("split", "metric", "value"), tuple(rows), right=frozenset({2}))


def _train_progress(quiet: bool):
    """What a training run shows on stderr: a rich bar on a terminal, a line per epoch elsewhere."""
    from cml_cli.train.progress import LineProgress, NullProgress, RichProgress

    if quiet:
        return NullProgress()
    return RichProgress(err) if err.is_terminal else LineProgress(sys.stderr)


OUTPUTS = ("table", "json", "csv")
TRAIN_ONLY = ("--dataset", "--preset", "--config", "--set", "--patience", "--seed", "--device", "--protocol",
              "--name", "--force")


@app.command("train", short_help=ShortHelp["train"])
def train_cmd(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", metavar="NAME",
                                          help="Processed dataset name (or path)."),
    preset: Optional[str] = typer.Option(None, "--preset", metavar="PRESET", help="tmall | ijcai | retailrocket | "
                                         "default, or NAME-paper for the paper's values [default: the dataset's]."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help="TOML file of options (a [train] "
                                          "table or top level)."),
    set_: list[str] = SetOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", metavar="N",
                                         help="Maximum epochs (with --resume: extend the run)."),
    patience: Optional[int] = typer.Option(None, "--patience", metavar="N",
                                           help="Stop after this many epochs without improvement."),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="N", help="Random seed (same seed, same metrics on CPU)."),
    device: Optional[str] = typer.Option(None, "--device", metavar="DEVICE", help="auto | cpu | cuda."),
    protocol: Optional[str] = typer.Option(None, "--protocol", metavar="PROTOCOL",
                                           help="strict (select on validation) | paper (best on test)."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME", help="Run directory name, one path component "
                                       "[default: dataset-model-seed-time]."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                          help="Continue the interrupted run in this directory."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory of the same name (only a run "
                               "directory: one with a run manifest)."),
    runs_dir: Path = RunsDir,
    data_dir: Optional[Path] = DataDir,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
    track: Optional[str] = TrackOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train CML (or a baseline) with a preset, checkpoints and progress (a bar on a terminal,
    a line per epoch elsewhere; also with --json)."""
    from cml_cli.config import config_for_dataset, parse_set
    from cml_cli.train.rundir import RunDir, check_run_target

    # Options are checked before torch is imported: a mistake costs no start-up time.
    if resume is not None:
        given = [opt for opt, value in zip(TRAIN_ONLY, (dataset, preset, config, set_ or None, patience, seed, device,
                                                        protocol, name, force or None)) if value is not None]
        if given:
            raise InputError(f"--resume: cannot be combined with {', '.join(given)} (a run continues with its own "
                             "configuration; --epochs extends it)")
        RunDir(resume).check_is_run()
    elif dataset is None:
        raise InputError("--dataset is required (or --resume RUN_DIR)")
    else:
        check_run_target(runs_dir, name, force, what="--runs-dir", parent_must_exist=True)  # before any work
        overrides = parse_set(set_)
        for key, value in (("epochs", epochs), ("patience", patience), ("seed", seed), ("device", device),
                           ("protocol", protocol)):
            if value is not None:
                overrides[key] = value
        cfg = config_for_dataset(dataset, overrides, data_dir=data_dir, preset=preset, config_file=config)
    tracking = _tracking(track)
    tracker = tracking.check().tracker() if tracking else None
    from cml_cli.train.loop import Watch, train
    from cml_cli.train.loop import resume as resume_run

    progress = _train_progress(quiet)
    with _stoppable():
        if resume is not None:
            result = resume_run(resume, data_dir=data_dir, progress=progress, epochs=epochs, tracker=tracker)
        else:
            result = train(dataset, cfg, data_dir=data_dir, runs_dir=runs_dir, name=name, force=force,
                           watch=Watch(progress, tracker))
    if as_json:
        _print_json(result)
    else:
        label = " (paper protocol: best epoch on test)" if result["protocol"] == "paper" else ""
        render(_metrics_listing(result, f"{_rel(result['run_dir'])}: best epoch {result['best_epoch']}{label}"))


@app.command(cls=PlainCommand, short_help=ShortHelp["evaluate"])
def evaluate(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A run directory."),
    checkpoint: str = typer.Option("best", "--checkpoint", metavar="CHECKPOINT", help="best | last."),
    split: str = typer.Option("test", "--split", metavar="SPLIT", help="test | valid."),
    ranking: str = typer.Option("sampled", "--ranking", metavar="RANKING", help="sampled (1 held-out item + 99 "
                                "negatives) | full (all items; adds coverage, personalization, ARP)."),
    ks: Optional[str] = typer.Option(None, "--ks", metavar="LIST", help="Comma-separated cut-offs [default: the "
                                     f"run's ks: {','.join(map(str, DEFAULT_KS))} unless it was trained with others]."),
    output: str = typer.Option("table", "--output", "-o", metavar="OUTPUT", help="table | json | csv."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (same as --output json)."),
    device: Optional[str] = typer.Option(None, "--device", metavar="DEVICE",
                                         help="auto | cpu | cuda [default: the run's]."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="CML_DATA_DIR", metavar="DIR",
                                            help="Look for the run's dataset here [default: where the run found it]."),
    old_protocol: Optional[str] = typer.Option(None, "--protocol", hidden=True),
    old_format: Optional[str] = typer.Option(None, "--format", hidden=True),
) -> None:
    """HR@N / NDCG@N with the paper's sampled protocol, or full ranking (Recall/NDCG/HR and
    coverage, personalization, ARP)."""
    if old_protocol is not None:
        _note("`cml evaluate --protocol` is deprecated (train's --protocol is strict|paper): use --ranking")
        ranking = old_protocol
    if old_format is not None:
        _note("`cml evaluate --format` is deprecated (preprocess's --format is the input format): use --output or "
              "--json")
        output = old_format
    if output not in OUTPUTS:  # the rendering is the command line's; evaluate_run checks the rest
        raise InputError(f"--output: '{output}' is not one of {', '.join(OUTPUTS)}{did_you_mean(output, OUTPUTS)}")
    output = "json" if as_json else output
    cutoffs = _cutoffs(ks) if ks is not None else None
    from cml_cli.train.evaluate_run import evaluate_run

    result = evaluate_run(run_dir, checkpoint=checkpoint, split=split, protocol=ranking, ks=cutoffs,
                          data_dir=data_dir, device=device)
    if output == "json":
        _print_json(result)
    elif output == "csv":
        metrics = _metric_rows(result[split])
        sys.stdout.write("split,ranking," + ",".join(m.lower().replace(" ", ":") for m in metrics) + "\n")
        sys.stdout.write(f"{split},{ranking}," + ",".join(f"{v:.6f}" for v in metrics.values()) + "\n")
    else:
        render(_metrics_listing(result, f"{_rel(run_dir)} ({checkpoint} checkpoint, {ranking} ranking)"))


class LogFollower:
    """Shows on a stream what the running runs of a grid write to their logs: the newest epoch
    line of each run at most every ``every`` seconds, and a line naming the runs still going
    when nothing was shown for ``quiet`` seconds (a run in a worker process, or a long epoch)."""

    def __init__(self, stream: TextIO, every: float = 2.0, quiet: float = 10.0):
        self.stream, self.every, self.quiet = stream, every, quiet
        self.runs: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.shown = time.monotonic()
        self.thread = threading.Thread(target=self._loop, name="cml-log-follower", daemon=True)

    def __enter__(self) -> LogFollower:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()

    def add(self, label: str, log: str) -> None:
        """Follow ``log`` (from its current end: a log grows over invocations)."""
        path = Path(log)
        offset = path.stat().st_size if path.is_file() else 0
        with self.lock:
            self.runs[label] = {"path": path, "offset": offset, "shown": 0.0, "line": None, "started": None}

    def remove(self, label: str) -> None:
        """Stop following a run that ended, first showing its newest epoch line not shown yet."""
        with self.lock:
            run = self.runs.pop(label, None)
            if run is not None:
                run["shown"] = 0.0
                self._poll(label, run)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = time.monotonic()

    def _loop(self) -> None:
        while not self.stopped.wait(0.5):
            with self.lock:
                for label, run in self.runs.items():
                    self._poll(label, run)
                now = time.monotonic()
                active = [f"{label} ({now - run['started']:.0f} s)" for label, run in self.runs.items()
                          if run["started"] is not None]
                if active and now - self.shown >= self.quiet:
                    self._write("  still running: " + ", ".join(active))

    def _poll(self, label: str, run: dict) -> None:
        try:
            with open(run["path"], "rb") as f:
                f.seek(run["offset"])
                data = f.read()
        except OSError:
            return
        complete = data[:data.rfind(b"\n") + 1]
        run["offset"] += len(complete)
        if data and run["started"] is None:
            run["started"] = time.monotonic()
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith(("epoch ", "training epochs")):
                run["line"] = line
        if run["line"] is not None and time.monotonic() - run["shown"] >= self.every:
            self._write(f"  {label}: {run['line']}")
            run["shown"], run["line"] = time.monotonic(), None


@app.command(short_help=ShortHelp["ablate"])
def ablate(
    dataset: str = DatasetOpt,
    variants: Optional[str] = typer.Option(None, "--variants", metavar="LIST", help="Comma-separated variants, or the "
                                           "groups all, ablations, baselines, peers, sota [default: every variant that "
                                           "applies]."),
    seeds: str = typer.Option("0", "--seeds", metavar="LIST", help="Comma-separated seeds; each variant runs once per "
                              "seed."),
    jobs: int = typer.Option(1, "--jobs", "-j", metavar="N", help="Runs side by side (each with 1/jobs of "
                             "CML_THREADS or of the cores)."),
    executor: str = typer.Option("local", "--executor", metavar="EXECUTOR", help="local | ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", metavar="ADDRESS", help="Ray cluster address "
                                              "[default: start a local one]."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME", help="Grid directory under --runs-dir "
                                       "[default: ablate-DATASET]."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override an option of every run "
                                   "(repeatable; keys as for `cml train --set`)."),
    config: list[str] = typer.Option([], "--config", metavar="[VARIANT=]FILE", help="TOML file of options for every "
                                     "run, or VARIANT=FILE for one variant (repeatable; e.g. a best.toml of `cml "
                                     "tune`)."),
    variants_file: Optional[Path] = typer.Option(None, "--variants-file", metavar="FILE", help="TOML file of "
                                                 "[variants.NAME] tables of overrides."),
    runs_dir: Path = RunsDir,
    data_dir: Optional[Path] = DataDir,
    track: Optional[str] = TrackOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run a grid of variants x seeds (reusing finished runs) and write the comparison table.
    Progress (each run's epochs) goes to stderr, also with --json."""
    from cml_cli.ablate import Execution, GridOptions, parse_seeds, run_grid
    from cml_cli.config import parse_set
    from cml_cli.errors import RunError
    from cml_cli.report import grid_tables, table_listing

    follower = LogFollower(sys.stderr)

    def on_event(event: str, unit, info: dict) -> None:
        label = escape(unit.label())
        if event == "reused":
            err.print(f"reused {label} ({escape(_rel(info['run']))})", highlight=False)
        elif event in ("start", "queued"):
            verb = "training" if event == "start" else "queued"
            err.print(f"\\[{info['index'] + 1 if event == 'start' else '-'}/{info['total']}] {label}: {verb}, log "
                      f"{escape(_rel(info['log']))}", highlight=False)
            follower.add(unit.label(), info["log"])
        elif event == "done":
            follower.remove(unit.label())
            err.print(f"\\[{info['index']}/{info['total']}] {label}: done in {info['seconds']:.1f} s", highlight=False)
        elif event == "failed":
            follower.remove(unit.label())
            err.print(f"\\[{info['index']}/{info['total']}] {label}: [red]failed[/] ({escape(info['error'])}); "
                      f"log {escape(_rel(info['log']))}", highlight=False)

    with _stoppable(), follower:
        options = GridOptions(_split_list(variants, "--variants"), parse_seeds(seeds), parse_set(set_), variants_file,
                              config)
        result = run_grid(dataset, options, name=name, runs_dir=runs_dir, data_dir=data_dir,
                          execution=Execution(jobs, executor, ray_address, _tracking(track)), on_event=on_event,
                          command=_command())
    table = grid_tables(Path(result["grid_dir"]), result["variants"], result["seeds"])
    if as_json:
        _print_json(table.to_dict())
    else:
        render(table_listing(table))
    err.print(f"tables in {escape(_rel(result['grid_dir']))}/table.{{csv,md,json}} ({result['executed']} runs "
              f"trained, {result['reused']} reused, {result['seconds']:.1f} s)", highlight=False)
    if result["failed"]:
        names = ", ".join(f"{Path(f['run']).name} (log {_rel(f['log'])})" for f in result["failed"])
        raise RunError(f"{len(result['failed'])} run(s) failed: {names}")


@app.command(cls=PlainCommand, short_help=ShortHelp["report"])
def report(
    runs: Path = typer.Argument(..., metavar="ABLATE_DIR", help="An ablation directory (runs/NAME written by `cml "
                                "ablate`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="Output directory [default: "
                                       "ABLATE_DIR/report]."),
    variants: Optional[str] = typer.Option(None, "--variants", metavar="LIST", help="Only these variants [default: "
                                           "all in ABLATE_DIR]."),
    seeds: Optional[str] = typer.Option(None, "--seeds", metavar="LIST", help="Only these seeds [default: all]."),
    tables_only: bool = typer.Option(False, "--tables-only", help="Rebuild the tables without drawing."),
    as_json: bool = JsonOpt,
) -> None:
    """Rebuild the tables of an ablation from its run directories; draw figures and report.md."""
    from cml_cli.ablate import parse_seeds
    from cml_cli.report import build_report, table_listing

    result = build_report(runs, out, plots=not tables_only, variants=_split_list(variants, "--variants"),
                          seeds=parse_seeds(seeds) if seeds is not None else None)
    if as_json:
        _print_json({"out": result["out"], "files": result["files"], "table": result["table"].to_dict()})
    else:
        render(table_listing(result["table"]))
    err.print(f"report written to {escape(_rel(result['out']))}/report.md ({len(result['files'])} files)",
              highlight=False)


class TuneDisplay:
    """What ``cml tune`` shows on stderr: a rich progress bar on a terminal; elsewhere one line
    per trial and per event, and a trial's epochs at most every ``every`` seconds."""

    def __init__(self, total: int | None, every: float = 5.0):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=err, transient=False,
                            disable=not err.is_terminal)
        self.task = self.bar.add_task("trials", total=total, info="")
        self.best, self.done, self.every, self.shown = None, 0, every, 0.0

    def __enter__(self) -> TuneDisplay:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def _show(self, text: str, line: bool = True, keep: bool = False) -> None:
        """``text`` as the bar's info on a terminal (with ``keep`` also as a line above the bar),
        elsewhere as a line (without ``line``: at most every ``every`` seconds)."""
        if err.is_terminal:
            self.bar.update(self.task, completed=self.done, info=escape(text))
            if keep:
                err.print(escape(text), highlight=False)
        elif line or time.monotonic() - self.shown >= self.every:
            err.print(escape(text), highlight=False)
            self.shown = time.monotonic()

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "trial":
            self.done += 1
            self.best = info["best_value"] if info["best_value"] is not None else self.best
            if info.get("error"):  # a failed trial: its error, one line that stays
                self._show(f"trial {info['number']} failed: {redact(info['error'])}", keep=True)
                return
            value = "" if info["value"] is None else f" {info['value']:.4f}"
            self._show(f"trial {info['number']} {info['state'].lower()}{value}; best valid NDCG@10 so far "
                       f"{self.best or 0:.4f} ({self.done} trials ended in this invocation)")
        elif kind == "epoch":
            run = f"trial {info['number']}" if isinstance(info["number"], int) else f"{info['number']} run"
            value = "" if info["value"] is None else f" valid NDCG@10 {info['value']:.4f}"
            best = "" if self.best is None else f"; best trial so far {self.best:.4f}"
            self._show(f"{run}: epoch {info['epoch']}{value}{best}", line=False)
        elif kind == "default":
            self._show(f"default configuration: valid NDCG@10 {info['value']:.4f} ({_rel(info['run'])})")
        elif kind == "best":
            self._show(f"best trial {info['number']}: {info['value']:.4f}; training it again with the test split")


@app.command(short_help=ShortHelp["tune"])
def tune(
    dataset: str = typer.Option(..., "--dataset", "-d", metavar="NAME", help="Processed dataset name (or path); needs "
                                "a validation split."),
    model: str = typer.Option(..., "--model", "-m", metavar="MODEL", help="A model of the registry: "
                              f"{', '.join(registry.names())}."),
    trials: Optional[int] = typer.Option(None, "--trials", "-n", metavar="N", help="Trials to run in this invocation "
                                         "[default: 10 without --timeout]."),
    until: Optional[int] = typer.Option(None, "--until", metavar="N", help="Run trials until the study holds this many "
                                        "finished ones (instead of --trials; running it again does nothing more)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Stop starting trials after "
                                            "this many seconds."),
    jobs: int = typer.Option(1, "--jobs", "-j", metavar="N", help="Trials side by side in local processes sharing the "
                             "storage."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME", help="Tune directory under --runs-dir "
                                       "[default: tune-DATASET-MODEL]."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Fix an option of every trial (repeatable; "
                                   "keys as for `cml train --set`)."),
    space: Optional[Path] = typer.Option(None, "--space", metavar="FILE", help="TOML search space [default: the "
                                         "model's, cml_cli/tune/spaces/MODEL.toml = experiments/search/MODEL.toml]."),
    storage: Optional[str] = typer.Option(None, "--storage", metavar="URL", help="Optuna storage: an RDB URL shared by "
                                          "several machines [default: TUNE_DIR/study.journal]."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the sampler and of every trial's run."),
    no_prune: bool = typer.Option(False, "--no-prune", help="Never stop a trial early (median pruner by default)."),
    runs_dir: Path = RunsDir,
    data_dir: Optional[Path] = DataDir,
    track: Optional[str] = TrackOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Search hyperparameters on validation NDCG@10 (Optuna TPE, median pruner), train the
    model's default configuration for comparison, then train the best configuration and
    evaluate its test split once. Progress goes to stderr, also with --json."""
    from cml_cli.config import parse_set
    from cml_cli.tune import TuneOptions, run_tune

    if trials is None and until is None and timeout is None:
        trials = 10
    options = TuneOptions(trials=trials, until=until, timeout=timeout, jobs=jobs, space=space, storage=storage,
                          seed=seed, pruner=not no_prune, overrides=parse_set(set_), tracking=_tracking(track))
    with _stoppable(), TuneDisplay(trials or until) as display:
        result = run_tune(dataset, model, options, name=name, runs_dir=runs_dir, data_dir=data_dir, on_event=display,
                          command=_command())
    for key in ("best_config", "best_run", "default_run", "tune_dir"):
        result[key] = _rel(result[key])
    if "://" not in result["storage"]:
        result["storage"] = _rel(result["storage"])
    if result["best_below_default"]:
        _note(f"the best trial (validation NDCG@10 {result['best_value']:.4f}) scores below the model's default "
              f"configuration ({result['default_value']:.4f}, {result['default_run']}): the search did not improve on "
              "it; more trials or another --space may")
    if as_json:
        _print_json(result)
    else:
        err.print(f"best of {result['trials']} trials: validation NDCG@10 {result['best_value']:.4f} with "
                  f"{escape(json.dumps(result['best_params']))}; config {escape(result['best_config'])}",
                  highlight=False)
        render(_metrics_listing({"test": result["test"]}, f"{result['best_run']} (best configuration, test once)"))


@app.command("help", cls=PlainCommand, short_help="Show the help of a command.")
def help_cmd(ctx: typer.Context,
             command: Optional[str] = typer.Argument(None, metavar="COMMAND", help="A command of cml.")) -> None:
    """Show the help of COMMAND (`cml help train` is `cml train -h`), or of cml."""
    group = ctx.parent
    if command is None:
        sys.stdout.write(group.get_help() + "\n")
        return
    sub = group.command.get_command(group, command)
    if sub is None:
        names = group.command.list_commands(group)
        raise InputError(f"help: no command '{command}'{did_you_mean(command, names)} (commands: {', '.join(names)})")
    sub.make_context(command, ["--help"], parent=group)


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Typer's usage-error base class: ``typer.TyperException`` where Typer vendors Click
    (0.16 and later), else Click's ``ClickException``."""
    base = getattr(typer, "TyperException", None)
    if base is not None:
        return (base,)
    import click

    return (click.exceptions.ClickException,)


STOPPED = "stopped by Ctrl-C; nothing was left half-written: run the same command again"


def _fail(label: str, message: str, code: int) -> NoReturn:
    """One line on stderr (credentials in URLs removed, never read as markup), then exit."""
    err.print(f"[bold red]{label}:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _usage_line(e: BaseException) -> str:
    """A usage error as one line: Click's message and where the help is (the command's own
    help when the command is known)."""
    message = " ".join(str(e.format_message() if hasattr(e, "format_message") else e).split()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "cml"
    if where == "cml" and len(sys.argv) > 1 and sys.argv[1] in ShortHelp:
        where = f"cml {sys.argv[1]}"
    return f"{message} (see `{where} -h`)"


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a job scheduler's stop) stops a command as Ctrl-C does."""
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: run the app, turning project errors and usage errors into one line and an
    exit code. Ctrl-C or SIGTERM exits 130 with one line: the command's own (what stopped, how to
    go on), else :data:`STOPPED` (Typer reports an interruption as the return value 130)."""
    usage = _usage_errors()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from cml_cli.threads import prepare

        prepare()  # before numpy and torch load: their thread pools read it once
        code = app(standalone_mode=False)
    except CMLError as e:
        _fail(e.label, str(e), e.exit_code)
    except usage as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()
            sys.exit(getattr(e, "exit_code", 2))
        _fail("error", _usage_line(e), getattr(e, "exit_code", 2))
    except typer.Abort as e:
        if isinstance(e.__cause__, KeyboardInterrupt):  # Click-based Typer: Ctrl-C is an Abort
            _fail("interrupted", STOPPED, 130)
        err.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        _fail("interrupted", STOPPED, 130)
    except OSError as e:  # a read or write that no check of the project's foresaw
        _fail("error", f"{e.filename}: {e.strerror or e}" if e.filename else str(e), 1)
    if code == 130:
        _fail("interrupted", STOPPED, 130)
    if isinstance(code, int) and code:
        sys.exit(code)
