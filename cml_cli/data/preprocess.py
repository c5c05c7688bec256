"""``cml preprocess``: any supported source -> a validated, processed dataset on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cml_cli.data.dataset import BuildOptions, MultiBehaviorDataset, RawData, build_dataset
from cml_cli.data.limits import SEED_MAX
from cml_cli.data.readers import FORMATS
from cml_cli.data.store import check_dataset_target, check_name, save_dataset
from cml_cli.errors import InputError, Interrupted


@dataclass(frozen=True)
class DatasetPreset:
    """What ``--dataset NAME`` implies: behavior names in order (target last), the
    training preset, and the ``events`` reader preset for the public raw log."""

    behaviors: tuple[str, ...]
    train_preset: str
    events_preset: str | None = None
    mbcgcn_behaviors: tuple[str, ...] = field(default=("view", "cart", "buy"))


DATASETS: dict[str, DatasetPreset] = {
    "tmall": DatasetPreset(("pv", "fav", "cart", "buy"), "tmall", "taobao"),
    "taobao": DatasetPreset(("pv", "fav", "cart", "buy"), "tmall", "taobao"),
    "ijcai": DatasetPreset(("click", "fav", "cart", "buy"), "ijcai", "ijcai"),
    "retailrocket": DatasetPreset(("view", "cart", "buy"), "retailrocket", "retailrocket"),
    "synthetic": DatasetPreset(("view", "fav", "cart", "buy"), "default"),
}


def dataset_preset(name: str) -> DatasetPreset | None:
    """The preset for ``name`` or for its family prefix (``tmall-mbcgcn`` -> ``tmall``)."""
    if name in DATASETS:
        return DATASETS[name]
    for key, preset in DATASETS.items():
        if name.startswith(key + "-") or name.startswith(key + "_"):
            return preset
    return None


def _layout(folder: Path) -> str | None:
    """The format of the published files in ``folder`` (``cml`` | ``mbcgcn``), or None."""
    from cml_cli.data.readers import cml as cml_reader

    if cml_reader.looks_like(folder):
        return "cml"
    if any((folder / b / "train.txt").is_file() for b in ("buy", "purchase")):
        return "mbcgcn"
    return None


def detect_format(source: Path) -> str:
    """``events`` for a file, the layout of a directory's files; a directory whose subfolders
    hold known layouts (``retailrocket/`` holding ``cml-format/``) is refused naming them."""
    if source.is_file():
        return "events"
    if not source.is_dir():
        raise InputError(f"{source}: no such file or directory")
    fmt = _layout(source)
    if fmt is not None:
        return fmt
    inside = [f"{d} ({layout} format)" for d in sorted(source.iterdir())
              if d.is_dir() and (layout := _layout(d)) is not None]
    if inside:
        raise InputError(f"{source}: no dataset files here, but its subfolders hold {', '.join(inside)}: pass one "
                         "of them as --source")
    raise InputError(f"{source}: cannot tell its format; pass --format ({', '.join(FORMATS)})")


@dataclass(frozen=True)
class ReadOptions:
    """How ``cml preprocess`` reads its source: the format (``fmt``; detected when None), the
    ``behaviors`` in order (target last; default the dataset preset's or the files'), the
    synthetic ``size``, and the ``events`` reader's options (``preset``, column names,
    ``kcore``: :class:`cml_cli.data.readers.events.EventsOptions`' fields)."""

    fmt: str | None = None
    behaviors: list[str] | None = None
    size: str = "tiny"
    events: dict = field(default_factory=dict)


def read_source(dataset: str, source: Path | None, options: ReadOptions = ReadOptions(),
                seed: int = 0) -> tuple[str, RawData]:
    """Dispatch to a reader; returns the format used and the raw splits."""
    preset = dataset_preset(dataset)
    fmt = _format(dataset, options.fmt, source)
    behaviors = options.behaviors
    if fmt == "synthetic":
        from cml_cli.data.readers import synthetic

        return fmt, synthetic.read(size=options.size, seed=seed)
    if fmt == "cml":
        from cml_cli.data.readers import cml as cml_reader

        names = behaviors or (list(preset.behaviors) if preset else None)
        return fmt, cml_reader.read(Path(source), behaviors=names)
    if fmt == "mbcgcn":
        from cml_cli.data.readers import mbcgcn

        names = behaviors or (list(preset.mbcgcn_behaviors) if preset else None)
        return fmt, mbcgcn.read(Path(source), behaviors=names)
    from cml_cli.data.readers import events

    opts = dict(options.events)
    if preset and preset.events_preset and "preset" not in opts:
        opts["preset"] = preset.events_preset
    if behaviors:
        opts["behaviors"] = behaviors
    return fmt, events.read(Path(source), events.EventsOptions(**opts))


def _format(dataset: str, fmt: str | None, source: Path | None) -> str:
    """The format to read ``source`` with (``fmt``, else detected), checked against ``source``."""
    if fmt is None:
        if source is None:
            if dataset != "synthetic":
                raise InputError(f"--source is required for dataset '{dataset}'")
            fmt = "synthetic"
        else:
            fmt = detect_format(Path(source))
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    if fmt == "synthetic" and source is not None:
        raise InputError(f"--source {source}: the synthetic format reads no file (leave out --source, or pass the "
                         "file's --format)")
    if fmt != "synthetic" and source is None:
        raise InputError(f"--source is required for format '{fmt}'")
    return fmt


def preprocess(
    dataset: str,
    source: Path | None = None,
    options: ReadOptions = ReadOptions(),
    *,
    name: str | None = None,
    data_dir: Path = Path("data"),
    seed: int = 0,
    valid: bool = True,
) -> tuple[Path, MultiBehaviorDataset]:
    """Read ``source`` (how: ``options``), build the dataset (validation split unless not
    ``valid``, candidates; ``seed``) and save it as ``<data_dir>/<name>`` (default
    ``dataset``). That directory may be missing, empty or a processed dataset, which is
    replaced; anything else there, or a ``source`` inside it, is an :class:`InputError`
    before any reading."""
    check_name(name if name is not None else dataset, "--name" if name is not None else "--dataset")
    target = Path(data_dir) / (name or dataset)
    check_dataset_target(target, source)
    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed: must be in [0, {SEED_MAX}], got {seed}")
    try:
        fmt, raw = read_source(dataset, source, options, seed)
        preset = dataset_preset(dataset)
        build = BuildOptions(seed=seed, valid=valid, preset=preset.train_preset if preset else "default",
                             source=str(source) if source is not None else f"synthetic:{options.size}")
        ds = build_dataset(raw, name or dataset, build)
        path = save_dataset(ds, data_dir, extra={"format": fmt, "reader_info": raw.info}, source=source)
    except KeyboardInterrupt:
        raise Interrupted(f"preprocess of {target} stopped; nothing was written and what was there before is "
                          "unchanged: run the same command again") from None
    return path, ds
