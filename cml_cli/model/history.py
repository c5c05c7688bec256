"""The history baseline: what the user already did with an item, then how popular it is."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class History:
    r"""Ranks the items of each user's own auxiliary interactions first, the behavior nearest
    the target first, and breaks ties, and orders every other item, by popularity:

    .. math::
        \hat x(u, i) = \sum_{k=1}^{K-1} 2^{k-1}\, [\,(u, i) \in b_k\,] + \frac{\rho(p_i)}{|P|}

    over the auxiliary behaviors :math:`b_1, \dots, b_{K-1}` in funnel order (the target
    :math:`b_K` last), so the scores sort lexicographically: first by whether the user did
    :math:`b_{K-1}` with the item, then :math:`b_{K-2}`, and so on. :math:`\rho(p_i) \in [0, |P|)`
    is the dense rank of the item's popularity :math:`p_i` among the :math:`|P|` distinct
    values, so the popularity term stays in :math:`[0, 1)`, below every behavior's weight (and
    float32 holds each score exactly while :math:`2^{K-1} |P| < 2^{24}`).

    Args:
        auxiliary: binary ``[|U|, |I|]`` matrices of the auxiliary behaviors, funnel order.
        popularity: ``[|I|]`` item popularity (e.g. training interactions of the target).
        n_users: number of users.

    Shapes:
        :meth:`scores`: users ``[B]`` -> ``[B, |I|]`` float32.
    """

    def __init__(self, auxiliary: list[sp.csr_matrix], popularity: np.ndarray, n_users: int):
        self.bonus = sp.csr_matrix((n_users, len(popularity)), dtype=np.float32)
        for k, a in enumerate(auxiliary):
            self.bonus = self.bonus + sp.csr_matrix(a != 0, dtype=np.float32) * np.float32(2 ** k)
        levels, rank = np.unique(popularity, return_inverse=True)
        self.base = (rank / len(levels)).astype(np.float32)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """``[B, |I|]``: :math:`\\hat x(u, \\cdot)` of each of ``users``."""
        rows = self.bonus[users].toarray()
        rows += self.base
        return rows
