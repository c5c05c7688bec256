"""Shared fixtures: the real datasets beside the repository, and writers of small source files."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see cml_cli.threads)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP
    threads waiting on each other slow the tests down many times over."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` relative to the repository root; the test is skipped without it."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"{SHARED_DATASETS} not present")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny synthetic dataset, processed once per session: ``(data_dir, dataset)``. Read it,
    never change it (tests that write datasets make their own)."""
    from cml_cli.data.preprocess import ReadOptions, preprocess

    data_dir = tmp_path_factory.mktemp("tiny") / "data"
    _, ds = preprocess("synthetic", None, ReadOptions(size="tiny"), data_dir=data_dir)
    return data_dir, ds


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """The tiny synthetic :class:`MultiBehaviorDataset` of :func:`tiny_dir`."""
    return tiny_dir[1]


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    """A processed-data directory that does not exist yet."""
    return tmp_path / "data"


def write_cml(
    path: Path,
    n_users: int = 30,
    n_items: int = 150,
    behaviors: tuple[str, ...] = ("view", "cart", "buy"),
    seed: int = 0,
    per_user: int = 6,
    test_users: int | None = None,
) -> dict:
    """A small CML-format directory: ``trn_<b>`` CSR pickles (timestamps as values), ``tst_int``
    and the meta user list. Every user has ``per_user`` training items per behavior, and test
    users (the first ``test_users``, default all) a test item in no training matrix."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    test_users = n_users if test_users is None else test_users
    tst: list = [None] * n_users
    test_item = {}
    for u in range(test_users):
        test_item[u] = int(rng.integers(n_items))
        tst[u] = test_item[u]
    mats = {}
    for b in behaviors:
        rows, cols = [], []
        for u in range(n_users):
            pool = np.setdiff1d(np.arange(n_items), [test_item.get(u, -1)])
            items = rng.choice(pool, size=per_user, replace=False)
            rows += [u] * per_user
            cols += items.tolist()
        vals = rng.integers(1_500_000_000, 1_500_100_000, size=len(rows)).astype(np.int64)
        mat = sp.csr_matrix((vals, (rows, cols)), shape=(n_users, n_items), dtype=np.int64)
        mat.sort_indices()
        mats[b] = mat
        with open(path / f"trn_{b}", "wb") as f:
            pickle.dump(mat, f)
    with open(path / "tst_int", "wb") as f:
        pickle.dump(tst, f)
    meta = rng.permutation(n_users)[: n_users // 2].astype(np.int64)
    with open(path / "meta_multi_single_beh_user_index_shuffle", "wb") as f:
        pickle.dump(meta, f)
    return {"mats": mats, "tst": tst, "meta": meta, "n_users": n_users, "n_items": n_items}


def write_mbcgcn(
    path: Path,
    n_users: int = 20,
    n_items: int = 150,
    seed: int = 0,
    view_as_npz: bool = True,
    per_user: int = 5,
) -> dict:
    """A small MB-CGCN text directory: ``view``/``cart``/``buy`` folders; ``view`` as an
    ``s_adj_mat.npz`` (or ``train.txt``). Returns the pairs written, per file."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    out: dict = {"n_users": n_users, "n_items": n_items}
    for b in ("view", "cart", "buy"):
        d = path / b
        d.mkdir(exist_ok=True)
        train = {u: sorted(rng.choice(n_items, size=per_user, replace=False).tolist()) for u in range(n_users)}
        test = {u: int(rng.choice(np.setdiff1d(np.arange(n_items), train[u]))) for u in range(n_users)}
        out[b] = {"train": train, "test": test}
        if b == "view" and view_as_npz:
            rows = [u for u in range(n_users) for _ in train[u]]
            cols = [i for u in range(n_users) for i in train[u]]
            r = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
            adj = sp.bmat([[None, r], [r.T, None]], format="csr").astype(np.float32)
            sp.save_npz(d / "s_adj_mat.npz", adj)
        else:
            (d / "train.txt").write_text("\n".join("\t".join(map(str, [u, *train[u]])) for u in range(n_users)))
        (d / "test.txt").write_text("\n".join(f"{u}\t{test[u]}" for u in range(n_users)) + "\n")
    return out


@pytest.fixture
def make_cml():
    return write_cml


@pytest.fixture
def make_mbcgcn():
    return write_mbcgcn


def cml_command() -> list[str]:
    script = Path(sys.executable).with_name("cml")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "cml_cli"]


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run ``cml ARGS...`` in a subprocess (cwd: a fresh directory); returns CompletedProcess."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "CML_DATA_DIR"}
        env["PYTHONWARNINGS"] = "ignore"
        return subprocess.run(
            [*cml_command(), *map(str, args)], capture_output=True, text=True, timeout=timeout,
            cwd=tmp_path, env=env,
        )

    return run


class Evil:
    """Unpickling this runs ``touch <target>``."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.fixture
def evil_pickle():
    """Write a pickle that would create ``target`` when loaded by plain ``pickle.load``."""

    def write(path: Path, target: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(Evil(target), f)
        return path

    return write
