"""The ``cml`` command: a thin Typer layer over the Python API.

Contract: ``--json`` prints exactly one JSON object on stdout; tables and progress go to
stderr. Exit codes: 0 success, 1 failure while running, 2 bad input or usage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cml_cli.errors import CMLError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Contrastive meta learning for multi-behavior recommendation.")
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DataDir = typer.Option(None, "--data-dir", envvar="CML_DATA_DIR", help="Processed datasets live here [default: ./data].")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else there.")


def _data_dir(path: Optional[Path]) -> Path:
    return path if path is not None else Path("data")


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _split_list(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _dataset_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("dataset", "users", "items", "behaviors (train interactions)", "test", "valid", "source"):
        table.add_column(col, overflow="fold")
    for r in rows:
        counts = " · ".join(f"{b} {r['train_interactions'][b]:,}" for b in r["behaviors"])
        table.add_row(r["name"], f"{r['n_users']:,}", f"{r['n_items']:,}", counts,
                      f"{r['n_test_users']:,}", f"{r['n_valid_users']:,}", r.get("source", ""))
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
    from cml_cli.data.preprocess import preprocess as run
    from cml_cli.data.store import check_writable_dir

    check_writable_dir(_data_dir(data_dir), "--data-dir", parent_must_exist=True)  # before any work
    events_options = {k: v for k, v in {
        "preset": events_preset, "user_col": user_col, "item_col": item_col,
        "behavior_col": behavior_col, "time_col": time_col, "kcore": kcore or None,
    }.items() if v is not None}
    path, ds = run(dataset, source, fmt=fmt, name=name, data_dir=_data_dir(data_dir), seed=seed,
                   valid=not no_valid, behaviors=_split_list(behaviors), size=size, events_options=events_options)
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


def _metrics_table(result: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("split")
    splits = [s for s in ("valid", "test") if result.get(s)]
    names = list(result[splits[0]]) if splits else []
    for name in names:
        table.add_column(name.upper().replace("@", "@"), justify="right")
    for split in splits:
        table.add_row(split, *[f"{result[split][n]:.4f}" for n in names])
    return table


@app.command("train")
def train_cmd(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Processed dataset name (or path)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="tmall | ijcai | retailrocket | default [default: the dataset's]."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of options (a [train] table or top level)."),
    set_: list[str] = typer.Option([], "--set", help="Override an option: key=value (repeatable)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum epochs."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many epochs without improvement."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (same seed, same metrics on CPU)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="strict (select on validation) | paper (best on test)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run directory name [default: dataset-model-seed-time]."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the interrupted run in this directory."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run directory of the same name."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Run directories live here."),
    data_dir: Optional[Path] = DataDir,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = JsonOpt,
) -> None:
    """Train CML (or a baseline) with a preset, checkpoints and progress."""
    from cml_cli.config import parse_set, resolve_config
    from cml_cli.data.preprocess import dataset_preset
    from cml_cli.data.store import read_manifest, resolve_dataset_dir
    from cml_cli.errors import InputError
    from cml_cli.train.loop import resume as resume_run
    from cml_cli.train.loop import train
    from cml_cli.train.progress import NullProgress, RichProgress

    progress = NullProgress() if quiet or as_json else RichProgress(err)
    if resume is not None:
        result = resume_run(resume, data_dir=data_dir, progress=progress, epochs=epochs)
    else:
        if dataset is None:
            raise InputError("--dataset is required (or --resume RUN_DIR)")
        from cml_cli.data.store import check_writable_dir

        check_writable_dir(runs_dir, "--runs-dir", parent_must_exist=True)  # before any work
        manifest = read_manifest(resolve_dataset_dir(dataset, data_dir))
        family = dataset_preset(manifest["name"])
        chosen = preset or manifest.get("preset") or (family.train_preset if family else "default")
        overrides = parse_set(set_)
        for key, value in (("epochs", epochs), ("patience", patience), ("seed", seed), ("device", device),
                           ("protocol", protocol)):
            if value is not None:
                overrides[key] = value
        cfg = resolve_config(chosen, config, overrides)
        result = train(dataset, cfg, data_dir=data_dir, runs_dir=runs_dir, name=name, force=force,
                       progress=progress)
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
    protocol: str = typer.Option("sampled", "--protocol", help="sampled (1+99) | full (all items)."),
    ks: str = typer.Option("1,3,5,10,20", "--ks", help="Comma-separated cut-offs."),
    fmt: str = typer.Option("table", "--format", help="table | json | csv."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda [default: the run's]."),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """HR@N / NDCG@N with the paper's sampled protocol, or full ranking (Recall/NDCG/HR)."""
    from cml_cli.errors import InputError
    from cml_cli.train.evaluation import evaluate_run

    if fmt not in ("table", "json", "csv"):
        raise InputError(f"--format: '{fmt}' is not one of table, json, csv")
    try:
        cutoffs = [int(k) for k in _split_list(ks) or []]
    except ValueError:
        raise InputError(f"--ks: expected comma-separated integers, got '{ks}'") from None
    result = evaluate_run(run_dir, checkpoint=checkpoint, split=split, protocol=protocol, ks=cutoffs,
                          data_dir=data_dir, device=device)
    if fmt == "json":
        _print_json(result)
    elif fmt == "csv":
        metrics = result[split]
        sys.stdout.write("split,protocol," + ",".join(metrics) + "\n")
        sys.stdout.write(f"{split},{protocol}," + ",".join(f"{v:.6f}" for v in metrics.values()) + "\n")
    else:
        err.print(_metrics_table(result, f"{run_dir} ({checkpoint} checkpoint, {protocol} ranking)"))


@app.command()
def ablate(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Processed dataset name (or path)."),
    variants: Optional[str] = typer.Option(None, "--variants", help="Comma-separated variants (or the groups all, "
                                           "ablations, baselines) \\[default: every variant and baseline that "
                                           "applies]."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds; each variant runs once per seed."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Runs side by side (each with cores/jobs torch threads)."),
    executor: str = typer.Option("local", "--executor", help="local | ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address \\[default: start a "
                                              "local one]."),
    name: Optional[str] = typer.Option(None, "--name", help="Grid directory under --runs-dir "
                                       "\\[default: ablate-DATASET]."),
    set_: list[str] = typer.Option([], "--set", help="Override an option of every run: key=value (repeatable)."),
    variants_file: Optional[Path] = typer.Option(None, "--variants-file", help="TOML file of \\[variants.NAME] tables "
                                                 "of overrides."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Run directories live here."),
    data_dir: Optional[Path] = DataDir,
    as_json: bool = JsonOpt,
) -> None:
    """Run a grid of variants x seeds (reusing finished runs) and write the comparison table."""
    from cml_cli.ablate import run_grid
    from cml_cli.config import parse_set
    from cml_cli.errors import RunError
    from cml_cli.report import rich_table

    def on_event(event: str, unit, info: dict) -> None:
        if event == "reused":
            err.print(f"reused {unit.label()} ({info['run']})", highlight=False)
        elif event == "start":
            err.print(f"[{info['index'] + 1}/{info['total']}] {unit.label()}: training, log {info['log']}",
                      highlight=False)
        elif event == "done":
            err.print(f"[{info['index']}/{info['total']}] {unit.label()}: done in {info['seconds']:.1f} s",
                      highlight=False)
        elif event == "failed":
            err.print(f"[{info['index']}/{info['total']}] {unit.label()}: [red]failed[/] ({info['error']}); "
                      f"log {info['log']}", highlight=False)

    result = run_grid(dataset, _split_list(variants), seeds, parse_set(set_), jobs, executor, name, runs_dir,
                      data_dir, variants_file=variants_file, ray_address=ray_address, on_event=on_event,
                      command=" ".join(["cml", *sys.argv[1:]]))
    if result["skipped"]:
        err.print(f"skipped (cml_cli.model.baselines not available): {', '.join(result['skipped'])}")
    if as_json:
        _print_json(result["table"])
    else:
        err.print(rich_table(result["table"]))
        err.print(f"tables in {result['grid_dir']}/table.{{csv,md,json}} ({result['executed']} runs trained, "
                  f"{result['reused']} reused, {result['seconds']:.1f} s)", highlight=False)
    if result["failed"]:
        names = ", ".join(f"{Path(f['run']).name} (log {f['log']})" for f in result["failed"])
        raise RunError(f"{len(result['failed'])} run(s) failed: {names}")


@app.command()
def report(
    runs: Path = typer.Argument(..., help="An ablation directory (runs/NAME written by `cml ablate`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory \\[default: RUNS/report]."),
    variants: Optional[str] = typer.Option(None, "--variants", help="Only these variants \\[default: all in RUNS]."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Only these seeds \\[default: all]."),
    tables_only: bool = typer.Option(False, "--tables-only", help="Rebuild the tables without drawing."),
    as_json: bool = JsonOpt,
) -> None:
    """Rebuild the tables of an ablation from its run directories; draw figures and report.md."""
    from cml_cli.ablate import parse_seeds
    from cml_cli.report import build_report, rich_table

    result = build_report(runs, out, plots=not tables_only, variants=_split_list(variants),
                          seeds=parse_seeds(seeds) if seeds is not None else None)
    if as_json:
        _print_json({"out": result["out"], "files": result["files"], "table": result["table"]})
    else:
        err.print(rich_table(result["table"]))
        err.print(f"report written to {result['out']}/report.md ({len(result['files'])} files)", highlight=False)


def main() -> None:
    """Entry point: run the app, turning project errors into one line and an exit code."""
    try:
        app(standalone_mode=False)
    except CMLError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
