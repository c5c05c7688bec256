"""A seeded synthetic multi-behavior dataset that needs no files.

Users and items get planted latent factors ``p_u, q_i ~ N(0, I_f)`` and items a power-law
popularity ``b_i = -a log(rank_i)``. A user's affinity is ``s(u, i) = p_u . q_i / sqrt(f) + b_i``.
Views are drawn without replacement from ``softmax(s(u, .))`` (Gumbel top-k); deeper
behaviors form a funnel over the views, each kept with probability ``sigmoid(s - c_k)``:
view >> cart, fav >> buy. Every user buys at least three items; the latest buy is the test
item. Timestamps grow along the funnel.

``size`` is a name of :data:`SIZES` or a count of training interactions such as ``500k`` or
``2M`` (all behaviors together, about that many after the test and validation splits): the ``tmall``
profile (60 views per user on average) with ``U = count / 85`` users and
``I = 12000 sqrt(U / 15000)`` items, so that a larger log has more users and more items, with
the same funnel and the same popularity law.
"""

from __future__ import annotations

import numpy as np

from cml_cli.data.dataset import Interactions
from cml_cli.data.readers.base import RawData
from cml_cli.errors import InputError

SIZES = {
    "tiny": (300, 400, 30),
    "small": (2000, 3000, 30),
    "medium": (8000, 8000, 40),
    "tmall": (15000, 12000, 60),
}
BEHAVIORS = ["view", "fav", "cart", "buy"]
_OFFSETS = {"fav": 2.0, "cart": 1.2, "buy": 2.2}
# Training interactions per user of the ``tmall`` profile (all behaviors, after the test and
# validation splits).
PER_USER = 85.0
MIN_COUNT, MAX_COUNT = 10_000, 50_000_000
_SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000}


def shape(size: str) -> tuple[int, int, int]:
    """``(users, items, mean views per user)`` of a named size or of a training-interaction
    count (``"2M"``, ``"500k"``, ``"1200000"``)."""
    if size in SIZES:
        return SIZES[size]
    text = size.strip().replace("_", "").lower()
    unit = text[-1:] if text[-1:] in ("k", "m") else ""
    try:
        count = float(text[:len(text) - len(unit)]) * _SUFFIXES[unit]
    except ValueError:
        raise InputError(f"--size: unknown size '{size}' (choose from {', '.join(SIZES)}, or a count of "
                         "training interactions such as 500k or 2M)") from None
    if not MIN_COUNT <= count <= MAX_COUNT:
        raise InputError(f"--size: {size} training interactions is outside {MIN_COUNT:,}..{MAX_COUNT:,}")
    base_users, base_items, mean_views = SIZES["tmall"]
    users = round(count / PER_USER)
    return users, round(base_items * np.sqrt(users / base_users)), mean_views


def read(size: str = "tiny", seed: int = 0, factors: int = 8, zipf: float = 0.8) -> RawData:
    """Generate a dataset of ``size``: a name of ``SIZES`` or a training-interaction count."""
    n_users, n_items, mean_views = shape(size)
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n_users, factors))
    q = rng.normal(size=(n_items, factors))
    pop = -zipf * np.log(rng.permutation(n_items) + 1.0)
    n_views = np.clip(rng.lognormal(np.log(mean_views), 0.5, size=n_users).astype(np.int64), 8, n_items // 4)

    users, items, scores = [], [], []
    chunk = max(1, (1 << 22) // n_items)
    kmax = int(n_views.max())
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        s = 2.0 * p[lo:hi] @ q.T / np.sqrt(factors) + pop
        g = s + rng.gumbel(size=s.shape)
        top = np.argpartition(-g, kmax - 1, axis=1)[:, :kmax]
        keep = np.arange(kmax)[None, :] < n_views[lo:hi, None]
        order = np.argsort(-np.take_along_axis(g, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        u = np.broadcast_to(np.arange(lo, hi)[:, None], top.shape)
        users.append(u[keep])
        items.append(top[keep])
        scores.append(np.take_along_axis(s, top, axis=1)[keep])
    user = np.concatenate(users).astype(np.int64)
    item = np.concatenate(items).astype(np.int64)
    score = np.concatenate(scores)
    time = rng.integers(0, 1_000_000, size=user.shape[0])

    def funnel(offset: float) -> np.ndarray:
        return rng.random(user.shape[0]) < 1.0 / (1.0 + np.exp(-(score - offset)))

    fav = funnel(_OFFSETS["fav"])
    cart = funnel(_OFFSETS["cart"])
    buy = funnel(_OFFSETS["buy"] + 1.0) | (cart & funnel(_OFFSETS["buy"] - 0.6))
    buy = _at_least(buy, user, score, 3)

    train = {
        "view": Interactions(user, item, time),
        "fav": Interactions(user[fav], item[fav], time[fav] + 1000),
        "cart": Interactions(user[cart], item[cart], time[cart] + 2000),
    }
    bu, bi, bt = user[buy], item[buy], time[buy] + 3000
    order = np.lexsort((bt, bu))
    bu, bi, bt = bu[order], bi[order], bt[order]
    last = np.r_[bu[1:] != bu[:-1], True]
    train["buy"] = Interactions(bu[~last], bi[~last], bt[~last])
    test_user, test_item = bu[last], bi[last]
    for b in ("view", "fav", "cart"):
        inter = train[b]
        held = np.isin(inter.user * n_items + inter.item, test_user * n_items + test_item)
        train[b] = inter.select(~held)
    return RawData(BEHAVIORS, n_users, n_items, train, test_user, test_item, None,
                   info={"size": size, "generator_seed": seed})


def _at_least(mask: np.ndarray, user: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Also mark each user's ``k`` highest-scoring rows, so every user has ``k`` positives."""
    order = np.lexsort((-score, user))
    u = user[order]
    start = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
    rank = np.arange(len(u)) - np.repeat(start, np.diff(np.r_[start, len(u)]))
    out = mask.copy()
    out[order[rank < k]] = True
    return out
