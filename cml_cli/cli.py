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
from rich.table import Table

from cml_cli.errors import CMLError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Contrastive meta learning for multi-behavior recommendation.")
err = Console(stderr=True)

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


def main() -> None:
    """Entry point: run the app, turning project errors into one line and an exit code."""
    try:
        app(standalone_mode=False)
    except CMLError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
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
