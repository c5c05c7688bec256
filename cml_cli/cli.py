"""The ``cml`` command: a thin Typer layer over the Python API.

Commands: preprocess, datasets, train, evaluate, ablate, report, tune.

Contract: ``--json`` prints exactly one JSON object on stdout; tables and progress go to
stderr. Exit codes: 0 success, 1 failure while running, 2 bad input or usage (one line on
stderr naming the file or option). Help text is plain (``rich_markup_mode=None``), so
nothing in square brackets is ever read as markup.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cml_cli.errors import CMLError, InputError, Interrupted, InterruptExit, redact

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Contrastive meta learning for multi-behavior recommendation.")
# emoji=False: user text such as "cuda:-1:" is never turned into an emoji (markup is escaped).
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160, emoji=False)

DataDir = typer.Option(None, "--data-dir", envvar="CML_DATA_DIR",
                       help="Processed datasets live here [default: $CML_DATA_DIR or ./data].")
RunsDir = typer.Option(Path("runs"), "--runs-dir", help="Run directories live here.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else there.")
SetOpt = typer.Option([], "--set", help="Override an option: key=value (repeatable; keys: cml_cli.config.RunConfig).")
TrackOpt = typer.Option(None, "--track", help="Also log to tensorboard (event files in each run directory) or mlflow "
                        "($MLFLOW_TRACKING_URI, default ./mlruns).")


def _data_dir(path: Optional[Path]) -> Path:
    return path if path is not None else Path("data")


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _note(text: str) -> None:
    err.print(f"note: {escape(text)}", highlight=False)


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


def _dataset_table(rows: list[dict], title: str) -> Table:
    table = Table(title=escape(title))
    for col in ("dataset", "users", "items", "behaviors (train interactions)", "test", "valid", "source"):
        table.add_column(col, overflow="fold")
    for r in rows:
        counts = " · ".join(f"{b} {r['train_interactions'][b]:,}" for b in r["behaviors"])
        table.add_row(escape(r["name"]), f"{r['n_users']:,}", f"{r['n_items']:,}", escape(counts),
                      f"{r['n_test_users']:,}", f"{r['n_valid_users']:,}", escape(r.get("source", "")))
    return table


@app.command()
def preprocess(
    dataset: str = typer.Option(..., "--dataset", "-d", help="tmall | ijcai | retailrocket | synthetic | any name."),
    source: Optional[Path] = typer.Option(None, "--source", "-s", help="File or directory to read."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="cml | mbcgcn | events | synthetic [default: detected]."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the processed dataset [default: --dataset]."),
    behaviors: Optional[str] = typer.Option(None, "--behaviors", help="Comma-separated behaviors in order, target last."),
    size: str = typer.Option("tiny", "--size", help="Synthetic size: tiny | small | medium | tmall."),
    seed: int = typer.Option(0, "--seed", help="Seed for the validation split and evaluation candidates."),
    no_valid: bool = typer.Option(False, "--no-valid", help="Keep training untouched: no validation split."),
    events_preset: Optional[str] = typer.Option(None, "--events-preset", help="Raw-log preset: taobao | ijcai | retailrocket."),
    user_col: Optional[str] = typer.Option(None, "--user-col", help="events: user column name."),
    item_col: Optional[str] = typer.Option(None, "--item-col", help="events: item column name."),
    behavior_col: Optional[str] = typer.Option(None, "--behavior-col", help="events: behavior column name."),
    time_col: Optional[str] = typer.Option(None, "--time-col", help="events: timestamp column name."),
    kcore: int = typer.Option(0, "--kcore", help="events: keep users and items with at least K interactions."),
    data_dir: Optional[Path] = DataDir,
    as_json: bool = JsonOpt,
) -> None:
    """Turn published files, an event log or the synthetic generator into a processed dataset."""
    from cml_cli.data.store import check_name, check_writable_dir

    check_name(name if name is not None else dataset, "--name" if name is not None else "--dataset")
    behavior_list = _split_list(behaviors, "--behaviors")
    check_writable_dir(_data_dir(data_dir), "--data-dir", parent_must_exist=True)  # before any work
    from cml_cli.data.preprocess import preprocess as run

    events_options = {k: v for k, v in {
        "preset": events_preset, "user_col": user_col, "item_col": item_col,
        "behavior_col": behavior_col, "time_col": time_col, "kcore": kcore or None,
    }.items() if v is not None}
    with _stoppable():
        path, ds = run(dataset, source, fmt=fmt, name=name, data_dir=_data_dir(data_dir), seed=seed,
                       valid=not no_valid, behaviors=behavior_list, size=size, events_options=events_options)
    stats = {**ds.stats(), "path": str(path)}
    if as_json:
        _print_json(stats)
    else:
        err.print(_dataset_table([stats], f"processed dataset written to {path}"))


@app.command()
def datasets(data_dir: Optional[Path] = DataDir, as_json: bool = JsonOpt) -> None:
    """List processed datasets with their statistics."""
    from cml_cli.data.store import list_datasets

    rows = list_datasets(_data_dir(data_dir))
    if as_json:
        _print_json({"datasets": rows})
    else:
        err.print(_dataset_table(rows, f"processed datasets in {_data_dir(data_dir)}"))


def _metric_rows(metrics: dict) -> dict[str, float]:
    """Sampled metrics as they are, full-ranking ones (``metrics["full"]``) prefixed ``full ``."""
    flat = {k.upper(): v for k, v in metrics.items() if not isinstance(v, dict)}
    flat.update({f"full {k.upper()}": v for k, v in (metrics.get("full") or {}).items()})
    return flat


def _metrics_table(result: dict, title: str) -> Table:
    table = Table(title=escape(title))
    table.add_column("split")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for split in ("valid", "test"):
        for name, value in _metric_rows(result.get(split) or {}).items():
            table.add_row(split, name, f"{value:.2f}" if "ARP@" in name else f"{value:.4f}")
    return table


OUTPUTS = ("table", "json", "csv")
TRAIN_ONLY = ("--dataset", "--preset", "--config", "--set", "--patience", "--seed", "--device", "--protocol",
              "--name", "--force")


@app.command("train")
def train_cmd(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Processed dataset name (or path)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="tmall | ijcai | retailrocket | default, or NAME-paper "
                                         "for the paper's values [default: the dataset's]."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of options (a [train] table or top level)."),
    set_: list[str] = SetOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum epochs (with --resume: extend the run)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many epochs without improvement."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (same seed, same metrics on CPU)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="strict (select on validation) | paper (best on test)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run directory name, one path component "
                                       "[default: dataset-model-seed-time]."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the interrupted run in this directory."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory of the same name (only a run "
                               "directory: one with a run manifest)."),
    runs_dir: Path = RunsDir,
    data_dir: Optional[Path] = DataDir,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    track: Optional[str] = TrackOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train CML (or a baseline) with a preset, checkpoints and progress."""
    from cml_cli.config import dataset_preset_name, parse_set, resolve_config
    from cml_cli.data.store import check_name, check_writable_dir, read_manifest, resolve_dataset_dir
    from cml_cli.train.rundir import RunDir

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
        if name is not None:
            RunDir(runs_dir / check_name(name, "--name")).check_replaceable(force)
        check_writable_dir(runs_dir, "--runs-dir", parent_must_exist=True)  # before any work
        manifest = read_manifest(resolve_dataset_dir(dataset, data_dir))
        overrides = parse_set(set_)
        for key, value in (("epochs", epochs), ("patience", patience), ("seed", seed), ("device", device),
                           ("protocol", protocol)):
            if value is not None:
                overrides[key] = value
        cfg = resolve_config(preset or dataset_preset_name(manifest), config, overrides)
    tracking = _tracking(track)
    tracker = tracking.check().tracker() if tracking else None
    from cml_cli.train.loop import resume as resume_run
    from cml_cli.train.loop import train
    from cml_cli.train.progress import NullProgress, RichProgress

    progress = NullProgress() if quiet or as_json else RichProgress(err)
    with _stoppable():
        if resume is not None:
            result = resume_run(resume, data_dir=data_dir, progress=progress, epochs=epochs, tracker=tracker)
        else:
            result = train(dataset, cfg, data_dir=data_dir, runs_dir=runs_dir, name=name, force=force,
                           progress=progress, tracker=tracker)
    if as_json:
        _print_json(result)
    else:
        label = " (paper protocol: best epoch on test)" if result["protocol"] == "paper" else ""
        err.print(_metrics_table(result, f"{result['run_dir']}: best epoch {result['best_epoch']}{label}"))


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last."),
    split: str = typer.Option("test", "--split", help="test | valid."),
    ranking: str = typer.Option("sampled", "--ranking", help="sampled (1 held-out item + 99 negatives) | full (all "
                                "items; adds coverage, personalization, ARP)."),
    ks: str = typer.Option("1,3,5,10,20", "--ks", help="Comma-separated cut-offs."),
    output: str = typer.Option("table", "--output", "-o", help="table | json | csv."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (same as --output json)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda [default: the run's]."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="CML_DATA_DIR",
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
    for option, value, allowed in (("--ranking", ranking, ("sampled", "full")), ("--output", output, OUTPUTS),
                                   ("--checkpoint", checkpoint, ("best", "last")), ("--split", split, ("test", "valid"))):
        if value not in allowed:
            raise InputError(f"{option}: '{value}' is not one of {', '.join(allowed)}")
    output = "json" if as_json else output
    cutoffs = _cutoffs(ks)
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
        err.print(_metrics_table(result, f"{run_dir} ({checkpoint} checkpoint, {ranking} ranking)"))


@app.command()
def ablate(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Processed dataset name (or path)."),
    variants: Optional[str] = typer.Option(None, "--variants", help="Comma-separated variants, or the groups all, "
                                           "ablations, baselines, peers [default: every variant that applies]."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds; each variant runs once per seed."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Runs side by side (each with cores/jobs torch threads)."),
    executor: str = typer.Option("local", "--executor", help="local | ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address [default: start a "
                                              "local one]."),
    name: Optional[str] = typer.Option(None, "--name", help="Grid directory under --runs-dir [default: ablate-DATASET]."),
    set_: list[str] = typer.Option([], "--set", help="Override an option of every run: key=value (repeatable)."),
    config: list[str] = typer.Option([], "--config", help="TOML file of options for every run, or VARIANT=FILE for one "
                                     "variant (repeatable; e.g. a best.toml of `cml tune`)."),
    variants_file: Optional[Path] = typer.Option(None, "--variants-file", help="TOML file of [variants.NAME] tables "
                                                 "of overrides."),
    runs_dir: Path = RunsDir,
    data_dir: Optional[Path] = DataDir,
    track: Optional[str] = TrackOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run a grid of variants x seeds (reusing finished runs) and write the comparison table."""
    from cml_cli.ablate import Execution, parse_seeds, run_grid
    from cml_cli.config import parse_set
    from cml_cli.errors import RunError
    from cml_cli.report import grid_tables, rich_table

    def on_event(event: str, unit, info: dict) -> None:
        label = escape(unit.label())
        if event == "reused":
            err.print(f"reused {label} ({escape(info['run'])})", highlight=False)
        elif event == "start":
            err.print(f"\\[{info['index'] + 1}/{info['total']}] {label}: training, log {escape(info['log'])}",
                      highlight=False)
        elif event == "done":
            err.print(f"\\[{info['index']}/{info['total']}] {label}: done in {info['seconds']:.1f} s", highlight=False)
        elif event == "failed":
            err.print(f"\\[{info['index']}/{info['total']}] {label}: [red]failed[/] ({escape(info['error'])}); "
                      f"log {escape(info['log'])}", highlight=False)

    with _stoppable():
        result = run_grid(dataset, _split_list(variants, "--variants"), parse_seeds(seeds), parse_set(set_),
                          name=name, runs_dir=runs_dir, data_dir=data_dir,
                          execution=Execution(jobs, executor, ray_address, _tracking(track)),
                          variants_file=variants_file, configs=config, on_event=on_event, command=_command())
    table = grid_tables(Path(result["grid_dir"]), result["variants"], result["seeds"])
    if as_json:
        _print_json(table.to_dict())
    else:
        err.print(rich_table(table))
        err.print(f"tables in {escape(result['grid_dir'])}/table.{{csv,md,json}} ({result['executed']} runs trained, "
                  f"{result['reused']} reused, {result['seconds']:.1f} s)", highlight=False)
    if result["failed"]:
        names = ", ".join(f"{Path(f['run']).name} (log {f['log']})" for f in result["failed"])
        raise RunError(f"{len(result['failed'])} run(s) failed: {names}")


@app.command()
def report(
    runs: Path = typer.Argument(..., help="An ablation directory (runs/NAME written by `cml ablate`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory [default: RUNS/report]."),
    variants: Optional[str] = typer.Option(None, "--variants", help="Only these variants [default: all in RUNS]."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Only these seeds [default: all]."),
    tables_only: bool = typer.Option(False, "--tables-only", help="Rebuild the tables without drawing."),
    as_json: bool = JsonOpt,
) -> None:
    """Rebuild the tables of an ablation from its run directories; draw figures and report.md."""
    from cml_cli.ablate import parse_seeds
    from cml_cli.report import build_report, rich_table

    result = build_report(runs, out, plots=not tables_only, variants=_split_list(variants, "--variants"),
                          seeds=parse_seeds(seeds) if seeds is not None else None)
    if as_json:
        _print_json({"out": result["out"], "files": result["files"], "table": result["table"].to_dict()})
    else:
        err.print(rich_table(result["table"]))
        err.print(f"report written to {escape(result['out'])}/report.md ({len(result['files'])} files)",
                  highlight=False)


@app.command()
def tune(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Processed dataset name (or path); needs a validation "
                                "split."),
    model: str = typer.Option(..., "--model", "-m", help="A model of the registry: cml, itemknn-merged, bpr-mf, "
                              "lightgcn-target, lightgcn-merged, mbcgcn, crgcn, ..."),
    trials: Optional[int] = typer.Option(None, "--trials", "-n", help="Trials to run in this invocation [default: 10 "
                                         "without --timeout]."),
    until: Optional[int] = typer.Option(None, "--until", help="Run trials until the study holds this many finished "
                                        "ones (instead of --trials; running it again does nothing more)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop starting trials after this many seconds."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Trials side by side in local processes sharing the storage."),
    name: Optional[str] = typer.Option(None, "--name", help="Tune directory under --runs-dir [default: "
                                       "tune-DATASET-MODEL]."),
    set_: list[str] = typer.Option([], "--set", help="Fix an option of every trial: key=value (repeatable)."),
    space: Optional[Path] = typer.Option(None, "--space", help="TOML search space [default: the model's, "
                                         "cml_cli/tune/spaces/MODEL.toml = experiments/search/MODEL.toml]."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage: an RDB URL shared by several "
                                          "machines [default: TUNE_DIR/study.journal]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler and of every trial's run."),
    no_prune: bool = typer.Option(False, "--no-prune", help="Never stop a trial early (median pruner by default)."),
    runs_dir: Path = RunsDir,
    data_dir: Optional[Path] = DataDir,
    track: Optional[str] = TrackOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Search hyperparameters on validation NDCG@10 (Optuna TPE, median pruner), then train the
    best configuration and evaluate its test split once."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cml_cli.config import parse_set
    from cml_cli.tune import run_tune

    overrides = parse_set(set_)
    tracking = _tracking(track)
    display = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.fields[info]}"), console=err, transient=False, disable=as_json)
    state = {"best": None, "task": None, "done": 0}

    def on_event(kind: str, info: dict) -> None:
        if state["task"] is None:
            state["task"] = display.add_task("trials", total=trials or until, info="")
        if kind == "trial":
            state["done"] += 1
            if info["best_value"] is not None:
                state["best"] = info["best_value"]
            value = "" if info["value"] is None else f" {info['value']:.4f}"
            display.update(state["task"], completed=state["done"], info=f"trial {info['number']} {info['state'].lower()}"
                           f"{value}; best valid NDCG@10 {state['best'] or 0:.4f}")
            if info.get("error"):
                err.print(f"trial {info['number']} failed: {escape(redact(info['error']))}", highlight=False)
        elif kind == "epoch":
            display.update(state["task"], info=f"trial {info['number']}: epoch {info['epoch']}; best valid NDCG@10 "
                           f"{state['best'] or 0:.4f}")
        elif kind == "best":
            display.update(state["task"], info=f"best trial {info['number']}: {info['value']:.4f}; training it again "
                           "with the test split")

    if trials is None and until is None and timeout is None:
        trials = 10
    with _stoppable(), display:
        result = run_tune(dataset, model, trials=trials, until=until, timeout=timeout, jobs=jobs, name=name,
                          overrides=overrides, space=space, storage=storage, seed=seed, pruner=not no_prune,
                          runs_dir=runs_dir, data_dir=data_dir, on_event=on_event,
                          command=_command(), tracking=tracking)
    if as_json:
        _print_json(result)
    else:
        err.print(f"best of {result['trials']} trials: validation NDCG@10 {result['best_value']:.4f} with "
                  f"{escape(json.dumps(result['best_params']))}; config {escape(result['best_config'])}",
                  highlight=False)
        err.print(_metrics_table({"test": result["test"]}, f"{result['best_run']} (best configuration, test once)"))


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


def main() -> None:
    """Entry point: run the app, turning project errors into one line and an exit code. Ctrl-C
    exits 130 with one line: the command's own (what stopped, how to go on), else
    :data:`STOPPED` (Typer reports an interruption as the return value 130)."""
    usage = _usage_errors()
    try:
        code = app(standalone_mode=False)
    except CMLError as e:
        _fail(e.label, str(e), e.exit_code)
    except usage as e:
        e.show()
        sys.exit(e.exit_code)
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
