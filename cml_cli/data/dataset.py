"""The one in-memory multi-behavior dataset type, and how raw splits become one."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cml_cli.errors import InputError

N_NEGATIVES = 99


@dataclass
class Interactions:
    """Training interactions of one behavior: parallel arrays of shape ``[n]``.

    ``time`` is ``None`` when the source has no timestamps.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def select(self, keep: np.ndarray) -> Interactions:
        return Interactions(
            self.user[keep], self.item[keep], None if self.time is None else self.time[keep]
        )


@dataclass
class RawData:
    """What every reader returns: behaviors in order (target last), per-behavior training
    interactions, and the leave-one-out test split as parallel arrays ``test_user`` /
    ``test_item`` (before the validation hold-out and the candidates of :func:`build_dataset`)."""

    behaviors: list[str]
    n_users: int
    n_items: int
    train: dict[str, Interactions]
    test_user: np.ndarray
    test_item: np.ndarray
    meta_users: np.ndarray | None = None
    info: dict = field(default_factory=dict)


@dataclass
class Split:
    """One held-out item per user, with its fixed negatives ``neg`` of shape ``[n, 99]``."""

    user: np.ndarray
    item: np.ndarray
    neg: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def candidates(self) -> np.ndarray:
        """``[n, 100]`` item ids, the held-out item in column 0."""
        return np.concatenate([self.item[:, None], self.neg], axis=1)


@dataclass
class MultiBehaviorDataset:
    """Users, items and per-behavior training interactions, with the target behavior last.

    ``raw_counts`` holds each behavior's interaction count before the validation hold-out.
    """

    name: str
    behaviors: list[str]
    n_users: int
    n_items: int
    train: dict[str, Interactions]
    test: Split
    valid: Split
    meta_users: np.ndarray
    seed: int = 0
    preset: str = ""
    source: str = ""
    raw_counts: dict[str, int] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.behaviors[-1]

    @property
    def auxiliary(self) -> list[str]:
        return self.behaviors[:-1]

    def item_interactions(self) -> np.ndarray:
        """``[n_items]``: each item's number of training interactions over all behaviors (an
        interaction under two behaviors counts twice): the popularity that ARP@K averages."""
        counts = np.zeros(self.n_items, dtype=np.float64)
        for b in self.behaviors:
            counts += np.bincount(self.train[b].item, minlength=self.n_items)
        return counts

    def with_behaviors(self, behaviors: list[str]) -> MultiBehaviorDataset:
        """A view keeping only ``behaviors`` (the target is always kept, and stays last)."""
        unknown = sorted(set(behaviors) - set(self.behaviors))
        if unknown:
            raise InputError(f"unknown behavior(s) {unknown}; dataset has {self.behaviors}")
        keep = [b for b in self.auxiliary if b in behaviors] + [self.target]
        return MultiBehaviorDataset(
            self.name, keep, self.n_users, self.n_items, {b: self.train[b] for b in keep},
            self.test, self.valid, self.meta_users, self.seed, self.preset, self.source,
            {b: self.raw_counts.get(b, len(self.train[b])) for b in keep},
        )

    def stats(self) -> dict:
        """Counts that ``cml preprocess --json`` and ``cml datasets`` report."""
        return {
            "name": self.name,
            "preset": self.preset,
            "behaviors": list(self.behaviors),
            "target": self.target,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "interactions": {b: int(self.raw_counts.get(b, len(self.train[b]))) for b in self.behaviors},
            "train_interactions": {b: len(self.train[b]) for b in self.behaviors},
            "n_test_users": len(self.test),
            "n_valid_users": len(self.valid),
            "n_meta_users": int(self.meta_users.shape[0]),
            "seed": self.seed,
            "source": self.source,
        }

    def to_hetero_data(self):
        """A ``torch_geometric.data.HeteroData`` with node types ``user``/``item`` and one
        edge type ``(user, behavior, item)`` per behavior (``edge_time`` where known)."""
        import torch
        from torch_geometric.data import HeteroData

        data = HeteroData()
        data["user"].num_nodes = self.n_users
        data["item"].num_nodes = self.n_items
        for b in self.behaviors:
            inter = self.train[b]
            store = data["user", b, "item"]
            store.edge_index = torch.from_numpy(np.stack([inter.user, inter.item]).astype(np.int64))
            if inter.time is not None:
                store.edge_time = torch.from_numpy(inter.time.astype(np.int64))
        for split in ("test", "valid"):
            s = getattr(self, split)
            data[f"{split}_user"] = torch.from_numpy(s.user)
            data[f"{split}_item"] = torch.from_numpy(s.item)
            data[f"{split}_neg"] = torch.from_numpy(s.neg)
        return data


def _keys(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    return user.astype(np.int64) * n_items + item.astype(np.int64)


def sample_negatives(
    users: np.ndarray, exclude_keys: np.ndarray, n_items: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """For each user, ``n`` distinct items drawn uniformly from the items whose key
    ``user * n_items + item`` is not in the sorted array ``exclude_keys``. Shape ``[len(users), n]``.

    Vectorised rejection sampling: every round redraws only the slots still invalid.
    """
    out = rng.integers(0, n_items, size=(len(users), n), dtype=np.int64)
    for _ in range(1000):
        keys = _keys(users[:, None], out, n_items)
        bad = np.isin(keys, exclude_keys)
        order = np.argsort(out, axis=1, kind="stable")
        srt = np.take_along_axis(out, order, axis=1)
        dup_sorted = np.zeros_like(bad)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = np.zeros_like(bad)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        bad |= dup
        if not bad.any():
            return out
        out[bad] = rng.integers(0, n_items, size=int(bad.sum()), dtype=np.int64)
    raise InputError(f"cannot draw {n} negatives for some users: too few items ({n_items})")


@dataclass(frozen=True)
class BuildOptions:
    """How raw splits become a dataset: the ``seed`` of the validation split and of the
    candidates, whether to hold out a validation split (``valid``), and what the manifest
    records: the training ``preset`` and the ``source``."""

    seed: int = 0
    valid: bool = True
    preset: str = ""
    source: str = ""


def build_dataset(raw: RawData, name: str, options: BuildOptions = BuildOptions()) -> MultiBehaviorDataset:
    """Check raw splits, hold out validation items and draw the fixed evaluation candidates.

    Validation: each test user with at least two training target interactions gives up its
    latest one (by timestamp; random order where there are none). Where the test items never
    occur in the user's auxiliary training data (as in the CML files), the validation pair is
    removed from the auxiliary behaviors as well, so validation mirrors the test split.
    """
    behaviors, n_users, n_items = raw.behaviors, raw.n_users, raw.n_items
    test_user, test_item = _checked_raw(raw)
    target = behaviors[-1]
    train = {b: _dedupe(raw.train[b], n_items) for b in behaviors}
    raw_counts = {b: len(train[b]) for b in behaviors}
    tgt_keys = np.sort(_keys(train[target].user, train[target].item, n_items))
    test_keys = _keys(test_user, test_item, n_items)
    clash = np.isin(test_keys, tgt_keys)
    if clash.any():
        u, i = test_user[clash][0], test_item[clash][0]
        raise InputError(
            f"{int(clash.sum())} test pair(s) also in the '{target}' training data (first: user {u}, item {i})"
        )
    rng = np.random.default_rng(options.seed)
    valid_user = np.empty(0, np.int64)
    valid_item = np.empty(0, np.int64)
    if options.valid:
        train, valid_user, valid_item = _hold_out_validation(train, behaviors, test_user, test_keys, n_items, rng)
    all_target = np.sort(np.concatenate([tgt_keys, test_keys]))
    test_neg = sample_negatives(test_user, all_target, n_items, N_NEGATIVES, rng)
    valid_neg = sample_negatives(valid_user, all_target, n_items, N_NEGATIVES, rng)
    meta_users = raw.meta_users if raw.meta_users is not None else rng.permutation(np.unique(train[target].user))
    meta_users = np.asarray(meta_users, dtype=np.int64)
    _check_ids(meta_users, n_users, "meta user ids")
    return MultiBehaviorDataset(
        name=name, behaviors=list(behaviors), n_users=int(n_users), n_items=int(n_items), train=train,
        test=Split(test_user, test_item, test_neg), valid=Split(valid_user, valid_item, valid_neg),
        meta_users=meta_users, seed=options.seed, preset=options.preset, source=options.source, raw_counts=raw_counts,
    )


def _checked_raw(raw: RawData) -> tuple[np.ndarray, np.ndarray]:
    """Raw splits checked (behaviors, ids in range, one test item per user): the test users and items."""
    behaviors, train = raw.behaviors, raw.train
    if not behaviors:
        raise InputError("no behaviors given")
    missing = [b for b in behaviors if b not in train]
    if missing:
        raise InputError(f"no training interactions for behavior(s) {missing}")
    target = behaviors[-1]
    if len(train[target]) == 0:
        raise InputError(f"target behavior '{target}' has no training interactions")
    if raw.n_items < N_NEGATIVES + 2:
        raise InputError(f"{raw.n_items} items are too few for 1+{N_NEGATIVES} evaluation")
    for b in behaviors:
        _check_ids(train[b].user, raw.n_users, f"user ids of behavior '{b}'")
        _check_ids(train[b].item, raw.n_items, f"item ids of behavior '{b}'")
    test_user = np.asarray(raw.test_user, dtype=np.int64)
    test_item = np.asarray(raw.test_item, dtype=np.int64)
    _check_ids(test_user, raw.n_users, "test user ids")
    _check_ids(test_item, raw.n_items, "test item ids")
    if len(np.unique(test_user)) != len(test_user):
        raise InputError("the test split holds more than one item for some user")
    return test_user, test_item


def _check_ids(ids: np.ndarray, n: int, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise InputError(f"{what} out of range: found {int(ids.min())}..{int(ids.max())}, expected 0..{n - 1}")


def _dedupe(inter: Interactions, n_items: int) -> Interactions:
    """One entry per (user, item), keeping the latest timestamp; sorted by user then item."""
    keys = _keys(inter.user, inter.item, n_items)
    if inter.time is None:
        _, first = np.unique(keys, return_index=True)
        return Interactions(inter.user[first].astype(np.int64), inter.item[first].astype(np.int64))
    order = np.lexsort((inter.time, keys))
    keys_sorted = keys[order]
    last = np.r_[keys_sorted[1:] != keys_sorted[:-1], True]
    keep = order[last]
    return Interactions(
        inter.user[keep].astype(np.int64), inter.item[keep].astype(np.int64), inter.time[keep].astype(np.int64)
    )


def _hold_out_validation(
    train: dict[str, Interactions],
    behaviors: list[str],
    test_user: np.ndarray,
    test_keys: np.ndarray,
    n_items: int,
    rng: np.random.Generator,
) -> tuple[dict[str, Interactions], np.ndarray, np.ndarray]:
    target = behaviors[-1]
    tgt = train[target]
    time = tgt.time if tgt.time is not None else np.zeros(len(tgt), np.int64)
    order = np.lexsort((rng.random(len(tgt)), time, tgt.user))
    users_sorted = tgt.user[order]
    last = np.r_[users_sorted[1:] != users_sorted[:-1], True]
    counts = np.bincount(tgt.user, minlength=int(tgt.user.max()) + 1)
    pick = order[last]
    pick = pick[np.isin(tgt.user[pick], test_user) & (counts[tgt.user[pick]] >= 2)]
    valid_user, valid_item = tgt.user[pick], tgt.item[pick]
    valid_keys = _keys(valid_user, valid_item, n_items)

    drop_from = [target]
    aux_keys = [np.sort(_keys(train[b].user, train[b].item, n_items)) for b in behaviors[:-1]]
    if aux_keys and not any(np.isin(test_keys, k).any() for k in aux_keys):
        drop_from = list(behaviors)
    out = dict(train)
    for b in drop_from:
        inter = train[b]
        out[b] = inter.select(~np.isin(_keys(inter.user, inter.item, n_items), valid_keys))
    order = np.argsort(valid_user)
    return out, valid_user[order], valid_item[order]
