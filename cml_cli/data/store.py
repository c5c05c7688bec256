"""Processed on-disk format: ``arrays.npz`` (no pickle) plus ``manifest.json``.

    <data-dir>/<name>/manifest.json   schema version, behaviors (in order), counts, source, seed, sha256
    <data-dir>/<name>/arrays.npz      train.<i>.user / .item / .time for the i-th behavior,
                                      test.*, valid.*, meta_users

Behaviors are stored by position (schema version 2), so no behavior name, ``test`` or
``valid`` included, can collide with a split's arrays; version-1 datasets (arrays keyed by
behavior name) are still read. Writes go to a temporary directory beside the target that is
renamed into place at the end, so a crash never leaves a half-written dataset, and only a
processed dataset is ever replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from cml_cli.data.dataset import N_NEGATIVES, Interactions, MultiBehaviorDataset, Split
from cml_cli.errors import InputError, close_names, did_you_mean, write_error

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"
MANIFEST_CHECKSUM = "manifest_sha256"
_REQUIRED = {"name": str, "behaviors": list, "n_users": int, "n_items": int}
DATASET_FILES = frozenset({MANIFEST, ARRAYS})
MAX_NAME_BYTES = 200


def _umask() -> int:
    """The process's umask (Python reads it only by setting it: set, then restored)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Modes of what the tool writes: what open() and mkdir() give under the process's umask
# (0644 / 0755 under the usual 022), also for files and directories made through tempfile,
# which creates them private (0600 / 0700). Nothing the tool writes is secret.
_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def check_name(name: str, option: str) -> str:
    """A name a user or a file gives (a dataset, a run, a grid) must be one path component:
    not empty, no ``/``, not starting with ``.`` (``.`` and ``..``, and the tool's own
    temporaries ``.<name>.<pid>.<random>.tmp``), no control characters or surrounding spaces,
    at most :data:`MAX_NAME_BYTES` bytes; otherwise an :class:`InputError`."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or name != name.strip() \
            or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        shown = repr(name) if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]!r}..."
        raise InputError(f"{option}: {shown} is not a valid name (one path component: no '/', not starting with "
                         f"'.', no control characters or surrounding spaces, at most {MAX_NAME_BYTES} bytes)")
    return name


def default_data_dir() -> Path:
    return Path(os.environ.get("CML_DATA_DIR", "data"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a fsynced temporary file beside it and a rename. A write
    that fails (read-only place, disk full) leaves nothing and raises one clear error
    (:func:`cml_cli.errors.write_error`)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json_object(path: Path) -> dict | None:
    """A JSON object from a file, or None when it is missing, unreadable or not an object."""
    try:
        obj = json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def check_writable_dir(path: Path, what: str, *, parent_must_exist: bool = False) -> None:
    """Fail early, with a clear message, when ``path`` cannot be created or written.

    The nearest existing ancestor of ``path`` must be a directory in which a file can be
    created (tried for real with a temporary file, so read-only mounts, ``/proc`` and the
    like are caught even when running as root, where permission bits are not enforced).
    With ``parent_must_exist``, ``path`` itself may be missing but not its parent.
    """
    path = Path(path)
    probe = path
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{what} {path}: {probe} is not a directory")
    if parent_must_exist and probe != path and probe != path.parent:
        raise InputError(f"{what} {path}: parent directory {path.parent} does not exist (create it first)")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".cml-write-test-")
    except OSError as e:
        raise InputError(f"{what} {path}: {probe} is not writable ({e.strerror or e})") from None
    os.close(fd)
    Path(tmp).unlink(missing_ok=True)


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.(?:tmp|old)$")


def process_alive(pid: int) -> bool:
    """Is process ``pid`` running (on this machine)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(data_dir: Path) -> list[Path]:
    """Delete the temporary directories (``.<name>.<pid>.<random>.tmp`` / ``.old``) that a
    preprocess killed before its final rename left in ``data_dir``, when their process is gone."""
    removed = []
    if not Path(data_dir).is_dir():
        return removed
    for child in Path(data_dir).iterdir():
        m = _TEMPORARY.match(child.name)
        if m and child.is_dir() and not child.is_symlink() and not process_alive(int(m.group("pid"))):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def check_dataset_target(final: Path, source: Path | str | None = None) -> None:
    """May a processed dataset be written to ``final``? Yes when nothing is there, when it is
    an empty directory, or when it is a processed dataset (a dataset manifest, and no file
    but ``manifest.json`` and ``arrays.npz``). Anything else there (a symbolic link, a plain
    file, a folder of other files, a run) is an :class:`InputError` and stays untouched; so is
    a ``source`` inside ``final`` (or ``final`` itself), which the replacement would delete."""
    final = Path(final)
    if source is not None:
        src, target = Path(source).resolve(), final.resolve()
        if src == target or target in src.parents:
            raise InputError(f"--source {source}: lies inside {final}, where the processed dataset goes and which "
                             "preprocess replaces; move the source elsewhere or use another --name or --data-dir")
    if final.is_symlink():
        raise InputError(f"{final}: is a symbolic link; preprocess never replaces one, so nothing was changed "
                         "(use another --name or --data-dir)")
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        return
    manifest = read_json_object(final / MANIFEST) if final.is_dir() else None
    if manifest is None or "schema_version" not in manifest or not isinstance(manifest.get("files"), dict):
        raise InputError(f"{final}: exists and is not a processed dataset (no dataset manifest); preprocess only "
                         "replaces processed datasets, so nothing was changed (use another --name or --data-dir)")
    other = sorted(p.name for p in final.iterdir() if p.name not in DATASET_FILES)
    if other:
        raise InputError(f"{final}: holds files that are not part of a processed dataset ({', '.join(other[:5])}); "
                         "preprocess replaces the whole directory, so nothing was changed (move them away first)")


def _dataset_arrays(ds: MultiBehaviorDataset) -> dict[str, np.ndarray]:
    """The members of ``arrays.npz`` (schema version 2: behaviors by position)."""
    arrays: dict[str, np.ndarray] = {}
    for i, b in enumerate(ds.behaviors):
        inter = ds.train[b]
        arrays[f"train.{i}.user"] = inter.user.astype(np.int64)
        arrays[f"train.{i}.item"] = inter.item.astype(np.int64)
        if inter.time is not None:
            arrays[f"train.{i}.time"] = inter.time.astype(np.int64)
    for split in ("test", "valid"):
        s: Split = getattr(ds, split)
        arrays[f"{split}.user"] = s.user
        arrays[f"{split}.item"] = s.item
        arrays[f"{split}.neg"] = s.neg
    arrays["meta_users"] = ds.meta_users
    return arrays


def _write_dataset(tmp: Path, ds: MultiBehaviorDataset, extra: dict | None) -> None:
    """``arrays.npz`` and ``manifest.json`` of ``ds`` into the directory ``tmp``, fsynced."""
    with open(tmp / ARRAYS, "wb") as f:
        np.savez_compressed(f, **_dataset_arrays(ds))
        f.flush()
        os.fsync(f.fileno())
    manifest = {
        "schema_version": SCHEMA_VERSION,
        **ds.stats(),
        **(extra or {}),
        "files": {ARRAYS: sha256(tmp / ARRAYS)},
        "sizes": {ARRAYS: (tmp / ARRAYS).stat().st_size},
    }
    manifest = json.loads(json.dumps(manifest))  # the checksum is of what a reader will see
    manifest[MANIFEST_CHECKSUM] = manifest_checksum(manifest)
    write_json_atomic(tmp / MANIFEST, manifest)
    fsync_dir(tmp)


def save_dataset(ds: MultiBehaviorDataset, data_dir: Path, extra: dict | None = None, *,
                 source: Path | None = None) -> Path:
    """Write ``ds`` (read from ``source``) to ``<data_dir>/<ds.name>/`` atomically; returns that
    directory. Stale temporaries of killed preprocesses are removed first; an existing
    ``<data_dir>/<name>`` is replaced only if it is a processed dataset and ``source`` is not
    inside it (:func:`check_dataset_target`), and it is put back if anything (Ctrl-C
    included) stops the swap half-way."""
    check_name(ds.name, "--name")
    data_dir = Path(data_dir)
    check_writable_dir(data_dir, "data directory")
    data_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(data_dir)
    final = data_dir / ds.name
    check_dataset_target(final, source)
    tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{ds.name}.{os.getpid()}.", suffix=".tmp"))
    old: Path | None = None
    try:
        tmp.chmod(DIR_MODE)
        _write_dataset(tmp, ds, extra)
        check_dataset_target(final)  # again, just before the swap: nothing else may have appeared there
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{ds.name}.{os.getpid()}.", suffix=".old"))
            os.replace(final, old / "x")
        os.replace(tmp, final)
        fsync_dir(data_dir)
    except BaseException as e:
        if old is not None and (old / "x").is_dir() and not final.exists():
            os.replace(old / "x", final)  # the previous dataset goes back where it was
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if isinstance(e, OSError):
            raise write_error(final, e) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def manifest_checksum(manifest: dict) -> str:
    """SHA-256 of a manifest's content without its own checksum (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_manifest(path: Path) -> dict:
    """A processed dataset's manifest, checked: JSON object, schema version, required keys,
    its own checksum (``manifest_sha256``, where present) and its name (one path component,
    like a name on the command line: runs and grids are named after it)."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise InputError(f"{mpath}: no processed dataset here (run `cml preprocess` first)")
    try:
        manifest = json.loads(mpath.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"{mpath}: corrupt manifest ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise InputError(f"{mpath}: unreadable ({e.strerror or e})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{mpath}: corrupt manifest (not a JSON object)")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise InputError(f"{mpath}: unsupported schema version {version!r}")
    expected = manifest.get(MANIFEST_CHECKSUM)
    if expected is not None and expected != manifest_checksum(manifest):
        raise InputError(f"{mpath}: corrupt manifest (checksum mismatch: file corrupt or modified)")
    problems = [k for k, kind in _REQUIRED.items() if not isinstance(manifest.get(k), kind)]
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(files.get(ARRAYS), str):
        problems.append(f"files.{ARRAYS}")
    if not problems and not all(isinstance(b, str) for b in manifest["behaviors"]):
        problems.append("behaviors")
    if problems:
        raise InputError(f"{mpath}: corrupt manifest (missing or malformed: {', '.join(problems)})")
    check_name(manifest["name"], f"{mpath}: name")
    return manifest


def resolve_dataset_dir(name_or_path: str | Path, data_dir: Path | None = None) -> Path:
    """A dataset directory from a name under ``data_dir`` or a path."""
    p = Path(name_or_path)
    if (p / MANIFEST).is_file():
        return p
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    cand = base / str(name_or_path)
    if not cand.is_dir():
        raise InputError(_not_found(str(name_or_path), base))
    return cand


def _not_found(name: str, base: Path) -> str:
    """Why dataset ``name`` is not in ``base``, with the processed datasets or dataset presets
    whose names are close to it, and what to run."""
    from cml_cli.data.preprocess import DATASETS

    processed = [d.name for d in sorted(base.iterdir()) if (d / MANIFEST).is_file()] if base.is_dir() else []
    text = f"dataset '{name}' not found in {base}"
    if "/" in name:
        return f"{text} (no processed dataset at {name}: it has no {MANIFEST})"
    hint = did_you_mean(name, processed)
    if hint:
        return text + hint
    presets = [name] if name in DATASETS else close_names(name, [d for d in DATASETS if d not in processed], n=1)
    if presets:
        source = "" if presets[0] == "synthetic" else " --source PATH"
        ask = "" if presets[0] == name else f"did you mean '{presets[0]}'? It is "
        return f"{text} ({ask or 'it is '}not processed yet: `cml preprocess --dataset {presets[0]}{source}`)"
    known = f"; processed here: {', '.join(processed)}" if processed else ""
    return f"{text} (run `cml preprocess --dataset {name} ...` first{known})"


def load_dataset(name_or_path: str | Path, data_dir: Path | None = None) -> MultiBehaviorDataset:
    """Read a processed dataset, verifying its manifest and checksums."""
    path = resolve_dataset_dir(name_or_path, data_dir)
    manifest = read_manifest(path)
    apath = path / ARRAYS
    if not apath.is_file():
        raise InputError(f"{apath}: missing")
    expected = manifest["files"][ARRAYS]
    size = apath.stat().st_size
    expected_size = manifest.get("sizes", {}).get(ARRAYS) if isinstance(manifest.get("sizes"), dict) else None
    if expected_size is not None and size != expected_size:
        raise InputError(f"{apath}: checksum mismatch ({size} bytes, the manifest says {expected_size}: "
                         "file truncated, corrupt or modified)")
    if sha256(apath) != expected:
        raise InputError(f"{apath}: checksum mismatch (file corrupt or modified)")
    try:
        with np.load(apath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{apath}: unreadable ({e})") from None
    prefixes = behavior_prefixes(manifest, path / MANIFEST)
    _check_structure(apath, manifest, prefixes, arrays)
    return _dataset(manifest, prefixes, arrays)


def behavior_prefixes(manifest: dict, mpath: Path) -> dict[str, str]:
    """Behavior name -> the prefix of its arrays in ``arrays.npz``: ``train.<i>`` for the i-th
    behavior (schema version 2), the name itself in version 1, where a behavior called
    ``test`` or ``valid`` would share a split's arrays and is refused."""
    behaviors = list(manifest["behaviors"])
    if not behaviors or len(set(behaviors)) != len(behaviors) or not all(behaviors):
        raise InputError(f"{mpath}: behaviors: expected distinct non-empty names, got {behaviors!r} (the dataset "
                         "does not match its manifest; preprocess it again)")
    if manifest["schema_version"] >= 2:
        return {b: f"train.{i}" for i, b in enumerate(behaviors)}
    clash = [b for b in behaviors if b in ("test", "valid")]
    if clash:
        raise InputError(f"{mpath}: behaviors: {clash} share the arrays of the split(s) of the same name in this "
                         "schema-version-1 dataset; preprocess it again (version 2 keeps behaviors apart)")
    return {b: b for b in behaviors}


def _check_structure(apath: Path, manifest: dict, prefixes: dict[str, str], arrays: dict[str, np.ndarray]) -> None:
    """The arrays are what the manifest describes: integer ids of matching lengths inside
    ``[0, n)``, 99 candidates per evaluation row, counts equal to the manifest's, at least one
    behavior (``prefixes``: :func:`behavior_prefixes`). Anything else is an
    :class:`InputError` naming the file and the field."""
    mpath = apath.parent / MANIFEST

    def bad(field: str, why: str, where: Path = apath) -> InputError:
        return InputError(f"{where}: {field}: {why} (the dataset does not match its manifest; preprocess it again)")

    sizes = {}
    for key in ("n_users", "n_items"):
        value = manifest[key]
        if isinstance(value, bool) or value <= 0:
            raise bad(key, f"expected a positive integer, got {value!r}", mpath)
        sizes[key] = int(value)
    if sizes["n_items"] < N_NEGATIVES + 2:
        raise bad("n_items", f"{sizes['n_items']} items are too few for 1+{N_NEGATIVES} evaluation", mpath)

    def ids(key: str, bound: int, ndim: int = 1) -> np.ndarray:
        if key not in arrays:
            raise bad(key, "array missing")
        a = arrays[key]
        if a.ndim != ndim or not np.issubdtype(a.dtype, np.integer):
            raise bad(key, f"expected {ndim}-D integer ids, got {a.ndim}-D {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= bound):
            raise bad(key, f"ids out of range: {int(a.min())}..{int(a.max())}, expected 0..{bound - 1}")
        return a

    def same_length(keys: list[str]) -> int:
        lengths = {k: len(arrays[k]) for k in keys}
        if len(set(lengths.values())) != 1:
            raise bad(", ".join(keys), f"different lengths {lengths}")
        return next(iter(lengths.values()))

    counts = manifest.get("train_interactions")
    for b, key in prefixes.items():
        ids(f"{key}.user", sizes["n_users"])
        ids(f"{key}.item", sizes["n_items"])
        keys = [f"{key}.user", f"{key}.item"]
        if f"{key}.time" in arrays:
            if arrays[f"{key}.time"].ndim != 1 or not np.issubdtype(arrays[f"{key}.time"].dtype, np.integer):
                raise bad(f"{key}.time", "expected 1-D integer timestamps")
            keys.append(f"{key}.time")
        n = same_length(keys)
        if isinstance(counts, dict) and counts.get(b) != n:
            raise bad(f"{b}", f"{n} interactions, the manifest's train_interactions says {counts.get(b)!r}")
    for split in ("test", "valid"):
        ids(f"{split}.user", sizes["n_users"])
        ids(f"{split}.item", sizes["n_items"])
        neg = ids(f"{split}.neg", sizes["n_items"], ndim=2)
        if neg.shape[1] != N_NEGATIVES:
            raise bad(f"{split}.neg", f"{neg.shape[1]} candidates per row, expected {N_NEGATIVES}")
        n = same_length([f"{split}.user", f"{split}.item", f"{split}.neg"])
        if len(np.unique(arrays[f"{split}.user"])) != n:
            raise bad(f"{split}.user", "a user holds more than one held-out item")
        if manifest.get(f"n_{split}_users") not in (None, n):
            raise bad(f"{split}", f"{n} users, the manifest's n_{split}_users says {manifest[f'n_{split}_users']!r}")
    ids("meta_users", sizes["n_users"])


def _dataset(manifest: dict, prefixes: dict[str, str], arrays: dict[str, np.ndarray]) -> MultiBehaviorDataset:
    train = {
        b: Interactions(arrays[f"{key}.user"], arrays[f"{key}.item"], arrays.get(f"{key}.time"))
        for b, key in prefixes.items()
    }
    return MultiBehaviorDataset(
        name=manifest["name"],
        behaviors=list(prefixes),
        n_users=int(manifest["n_users"]),
        n_items=int(manifest["n_items"]),
        train=train,
        test=Split(arrays["test.user"], arrays["test.item"], arrays["test.neg"]),
        valid=Split(arrays["valid.user"], arrays["valid.item"], arrays["valid.neg"]),
        meta_users=arrays["meta_users"],
        seed=int(manifest.get("seed", 0)),
        preset=manifest.get("preset", ""),
        source=manifest.get("source", ""),
        raw_counts={b: int(c) for b, c in manifest.get("interactions", {}).items()},
    )


def list_datasets(data_dir: Path | None = None) -> list[dict]:
    """Manifests of every processed dataset under ``data_dir``."""
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    if not base.is_dir():
        return []
    if os.access(base, os.W_OK):
        remove_stale_temporaries(base)
    out = []
    for d in sorted(base.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).is_file():
            try:
                out.append({**read_manifest(d), "path": str(d)})
            except InputError:
                continue
    return out
