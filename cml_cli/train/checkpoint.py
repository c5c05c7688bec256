"""Checkpoints without pickle: one ``.npz`` holding every tensor plus a JSON tree.

Nested state (module and optimizer state dicts, RNG states, counters) is flattened: each
tensor or array becomes an npz member ``t/<n>`` and is replaced in the tree by
``{"__tensor__": n}``; the tree itself is stored as UTF-8 bytes in the member ``tree``,
with its SHA-256 in ``tree_sha256``. Files are written to a temporary name, fsynced and
renamed, so a checkpoint on disk is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cml_cli.data.store import FILE_MODE, fsync_dir
from cml_cli.errors import InputError, write_error

_DTYPES = {"bfloat16": torch.bfloat16}


def _flatten(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t/{len(arrays)}"
        t = obj.detach().cpu()
        arrays[key] = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        return {"__tensor__": key, "dtype": str(t.dtype).removeprefix("torch.")}
    if isinstance(obj, np.ndarray):
        key = f"t/{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, arrays), _flatten(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, arrays) for v in obj], "tuple": isinstance(obj, tuple)}
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _unflatten(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            t = torch.from_numpy(np.array(arrays[obj["__tensor__"]]))
            dtype = _DTYPES.get(obj["dtype"], getattr(torch, obj["dtype"]))
            return t.to(dtype)
        if "__array__" in obj:
            return np.array(arrays[obj["__array__"]])
        if "__dict__" in obj:
            return {_unflatten(k, arrays): _unflatten(v, arrays) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, arrays) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
        if "__float__" in obj:
            return float(obj["__float__"])
    return obj


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename); a failing write
    (read-only place, disk full) leaves no temporary and raises one clear error."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    tree = json.dumps(_flatten(state, arrays)).encode()
    arrays["tree"] = np.frombuffer(tree, dtype=np.uint8)
    arrays["tree_sha256"] = np.frombuffer(hashlib.sha256(tree).hexdigest().encode(), dtype=np.uint8)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint, checking the zip CRCs and the tree's SHA-256; any damage is an
    :class:`InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        tree = arrays.pop("tree").tobytes()
        digest = arrays.pop("tree_sha256").tobytes().decode()
    except Exception as e:  # zip, npy header, CRC and decoding errors of every kind
        raise InputError(f"{path}: corrupt checkpoint ({type(e).__name__}: {_one_line(e)})") from None
    if hashlib.sha256(tree).hexdigest() != digest:
        raise InputError(f"{path}: corrupt checkpoint (checksum mismatch)")
    try:
        state = _unflatten(json.loads(tree), arrays)
    except Exception as e:
        raise InputError(f"{path}: corrupt checkpoint ({type(e).__name__}: {_one_line(e)})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: corrupt checkpoint (not a state dictionary)")
    return state


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]
