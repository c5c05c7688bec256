"""``cml preprocess``: any supported source -> a validated, processed dataset on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cml_cli.config import SEED_MAX
from cml_cli.data.dataset import MultiBehaviorDataset, build_dataset
from cml_cli.data.readers import FORMATS
from cml_cli.data.readers.base import RawData
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


def read_source(
    dataset: str,
    fmt: str | None,
    source: Path | None,
    *,
    behaviors: list[str] | None = None,
    size: str = "tiny",
    seed: int = 0,
    events_options: dict | None = None,
) -> tuple[str, RawData]:
    """Dispatch to a reader; returns the format used and the raw splits."""
    preset = dataset_preset(dataset)
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

    if fmt == "synthetic":
        from cml_cli.data.readers import synthetic

        return fmt, synthetic.read(size=size, seed=seed)
    if fmt == "cml":
        from cml_cli.data.readers import cml as cml_reader

        names = behaviors or (list(preset.behaviors) if preset else None)
        return fmt, cml_reader.read(Path(source), behaviors=names)
    if fmt == "mbcgcn":
        from cml_cli.data.readers import mbcgcn

        names = behaviors or (list(preset.mbcgcn_behaviors) if preset else None)
        return fmt, mbcgcn.read(Path(source), behaviors=names)
    from cml_cli.data.readers import events

    opts = dict(events_options or {})
    if preset and preset.events_preset and "preset" not in opts:
        opts["preset"] = preset.events_preset
    if behaviors:
        opts["behaviors"] = behaviors
    return fmt, events.read(Path(source), **opts)


def preprocess(
    dataset: str,
    source: Path | None = None,
    *,
    fmt: str | None = None,
    name: str | None = None,
    data_dir: Path = Path("data"),
    seed: int = 0,
    valid: bool = True,
    behaviors: list[str] | None = None,
    size: str = "tiny",
    events_options: dict | None = None,
) -> tuple[Path, MultiBehaviorDataset]:
    """Read ``source``, build the dataset (validation split, candidates) and save it.
    ``<data_dir>/<name>`` may be missing, empty or a processed dataset, which is replaced;
    anything else there, or a ``source`` inside it, is an :class:`InputError` before any reading."""
    check_name(name if name is not None else dataset, "--name" if name is not None else "--dataset")
    target = Path(data_dir) / (name or dataset)
    check_dataset_target(target, source)
    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed: must be in [0, {SEED_MAX}], got {seed}")
    try:
        fmt, raw = read_source(
            dataset, fmt, source, behaviors=behaviors, size=size, seed=seed, events_options=events_options
        )
        preset = dataset_preset(dataset)
        ds = build_dataset(
            name=name or dataset,
            behaviors=raw.behaviors,
            n_users=raw.n_users,
            n_items=raw.n_items,
            train=raw.train,
            test_user=raw.test_user,
            test_item=raw.test_item,
            meta_users=raw.meta_users,
            seed=seed,
            valid=valid,
            preset=preset.train_preset if preset else "default",
            source=str(source) if source is not None else f"synthetic:{size}",
        )
        path = save_dataset(ds, data_dir, extra={"format": fmt, "reader_info": raw.info}, source=source)
    except KeyboardInterrupt:
        raise Interrupted(f"preprocess of {target} stopped; nothing was written and what was there before is "
                          "unchanged: run the same command again") from None
    return path, ds
