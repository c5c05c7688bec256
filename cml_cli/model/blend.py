"""Score blending: a weighted sum of several models' per-user normalised scores."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import rankdata

from cml_cli.evaluate import Scorer
from cml_cli.model.scoring import RowScorer


def normalise(rows: np.ndarray, how: str) -> np.ndarray:
    r"""Each row (one user's scores of all items) normalised: ``rank`` maps a score to its
    average rank among the row's scores, scaled to :math:`[0, 1]` (ties share one value),
    ``zscore`` to :math:`(s - \mu_u) / \sigma_u` (0 where the row is constant). ``[B, |I|]``
    -> ``[B, |I|]`` float32."""
    if how == "rank":
        return ((rankdata(rows, method="average", axis=1) - 1.0) / max(rows.shape[1] - 1, 1)).astype(np.float32)
    mean = rows.mean(axis=1, dtype=np.float64, keepdims=True)
    std = rows.std(axis=1, dtype=np.float64, keepdims=True)
    return np.divide(rows - mean, std, out=np.zeros(rows.shape), where=std > 0).astype(np.float32)


def member_rows(scorer: Scorer, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """``users [B] -> [B, |I|]`` float32 numpy scores of any scorer (a row scorer's rows are
    computed without its cache: the blend keeps its own)."""
    if isinstance(scorer, RowScorer):
        return scorer.compute

    def rows(users: np.ndarray) -> np.ndarray:
        return scorer.score_all(torch.from_numpy(users).to(device)).float().cpu().numpy()

    return rows


class Blend:
    r"""A weighted sum of the members' per-user normalised scores,

    .. math::
        \hat x(u, i) = \sum_m w_m\, N\big(\hat x_m(u, \cdot)\big)_i

    with :math:`N` the normalisation of :func:`normalise` over all of the user's item scores
    (never over the candidates alone), so the blend is the same function of (user, item) under
    sampled and full ranking.

    Args:
        members: each member's row function ``users [B] -> [B, |I|]``.
        weights: one weight :math:`w_m \ge 0` per member.
        norm: ``rank`` or ``zscore``.

    Shapes:
        :meth:`scores`: users ``[B]`` -> ``[B, |I|]`` float32.
    """

    def __init__(self, members: list[Callable[[np.ndarray], np.ndarray]], weights: list[float], norm: str):
        self.members, self.weights, self.norm = members, weights, norm

    def scores(self, users: np.ndarray) -> np.ndarray:
        """``[B, |I|]``: the blended scores of ``users``."""
        out = None
        for member, weight in zip(self.members, self.weights):
            part = normalise(member(users), self.norm) * np.float32(weight)
            out = part if out is None else out + part
        return out
