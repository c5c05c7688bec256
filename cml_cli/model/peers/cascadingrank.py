"""CascadingRank: Ko, Jeon and Jung, "Personalized Ranking on Cascading Behavior Graphs for
Accurate Multi-Behavior Recommendation", arXiv 2502.11335 (2025). Training-free."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

BLOCK = 128  # users whose rankings are iterated together: [|U| + |I|, BLOCK] float32 blocks stay cache-friendly


def symmetric_normalised(a: sp.csr_matrix) -> sp.csr_matrix:
    r""":math:`\tilde A = D_U^{-1/2} A D_I^{-1/2}` of a binary ``[|U|, |I|]`` matrix (rows and columns
    without interactions stay empty), float32 CSR."""
    deg_u, deg_i = np.asarray(a.sum(1)).ravel(), np.asarray(a.sum(0)).ravel()
    inv_u = np.divide(1.0, np.sqrt(deg_u), out=np.zeros_like(deg_u, dtype=np.float64), where=deg_u > 0)
    inv_i = np.divide(1.0, np.sqrt(deg_i), out=np.zeros_like(deg_i, dtype=np.float64), where=deg_i > 0)
    return sp.csr_matrix(sp.diags(inv_u) @ a @ sp.diags(inv_i), dtype=np.float32)


class CascadingRank:
    r"""CascadingRank (`Ko et al., 2025 <https://arxiv.org/abs/2502.11335>`_): a personalised
    ranking of every user and item by random walks with restart over each behavior's graph, the
    behaviors visited in funnel order :math:`b_1, \dots, b_K` (target last), each one pulled
    toward the ranking the previous behavior converged to.

    For a query user :math:`u`, behavior :math:`k` has the queries :math:`q_U = e_u` and
    :math:`q^k_I = A_k^\top e_u / |N_k(u)|` (the user's own items of :math:`b_k`) and the
    symmetric-normalised graph :math:`\tilde A_k = D_U^{-1/2} A_k D_I^{-1/2}`. Starting from
    :math:`r^{(0)} = (q_U, q^k_I)`, the power iteration

    .. math::
        r^{(t+1)}_U &= \gamma\, \tilde A_k\, r^{(t)}_I + \alpha\, q_U + \beta\, c^k_U \\
        r^{(t+1)}_I &= \gamma\, \tilde A_k^\top r^{(t)}_U + \alpha\, q^k_I + \beta\, c^k_I,
        \qquad \gamma = 1 - \alpha - \beta

    (query fitting :math:`\alpha`, cascading alignment :math:`\beta`, smoothing :math:`\gamma`)
    stops at the first :math:`t` with :math:`\|r^{(t+1)} - r^{(t)}\|_1 \le \epsilon`, or after
    ``iters`` steps, and gives :math:`r^{k,*}`. The alignment target is the previous behavior's
    result, :math:`c^k = r^{k-1,*}`, and the first behavior's own query,
    :math:`c^1 = (q_U, q^1_I)`. The user's scores are the target's item ranking
    :math:`r^{K,*}_I`.

    As in the authors' code, users are ranked in blocks (one column per user), with dense
    ``[|U|, B]`` and ``[|I|, B]`` blocks and one sparse product per side and step. The residual
    is each user's own (the authors' code averages it over a block of 1,024 users), so a user's
    scores do not depend on which users share its block.

    Args:
        matrices: binary ``[|U|, |I|]`` interaction matrices, one per behavior, funnel order,
            target last.
        alpha: strength of query fitting :math:`\alpha \ge 0`.
        beta: strength of cascading alignment :math:`\beta \ge 0`, with :math:`\alpha + \beta \le 1`.
        tol: residual tolerance :math:`\epsilon > 0`.
        iters: maximum power iterations per behavior.

    Shapes:
        :meth:`scores`: users ``[B]`` -> ``[B, |I|]`` float32.
    """

    def __init__(self, matrices: list[sp.csr_matrix], alpha: float, beta: float, tol: float, iters: int):
        self.alpha, self.beta, self.gamma = alpha, beta, 1.0 - alpha - beta
        self.tol, self.iters = tol, iters
        self.interactions = [sp.csr_matrix(a, dtype=np.float32) for a in matrices]
        self.degree = [np.asarray(a.sum(1)).ravel() for a in self.interactions]
        self.adj = [symmetric_normalised(a) * np.float32(self.gamma) for a in self.interactions]  # gamma * A~
        self.adj_t = [a.T.tocsr() for a in self.adj]
        self.n_users, self.n_items = self.interactions[0].shape

    def queries(self, k: int, users: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Behavior ``k``'s queries of ``users``, one column per user: :math:`q_U` ``[|U|, B]``
        (one-hot) and :math:`q^k_I` ``[|I|, B]`` (the user's items of ``k`` over their number)."""
        cols = np.arange(len(users))
        q_u = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, cols)), shape=(self.n_users, len(users)))
        deg = self.degree[k][users]
        scale = sp.diags(np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0).astype(np.float32))
        return q_u, sp.csr_matrix((scale @ self.interactions[k][users]).T, dtype=np.float32)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """``[B, |I|]``: the target behavior's converged item ranking of each of ``users``."""
        users = np.asarray(users, dtype=np.int64)
        c_u = c_i = None
        for k in range(len(self.adj)):
            q_u, q_i = self.queries(k, users)
            if k == 0:
                c_u, c_i = q_u.toarray(), q_i.toarray()
            c_u, c_i = self.power(k, (q_u, q_i), (self.alpha * q_u.toarray() + self.beta * c_u,
                                                   self.alpha * q_i.toarray() + self.beta * c_i))
        return np.ascontiguousarray(c_i.T)

    def power(self, k: int, query: tuple[sp.csr_matrix, sp.csr_matrix],
              constant: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        r"""Behavior ``k``'s power iteration from its ``query`` :math:`(q_U, q_I)` with the constant
        terms :math:`(\alpha q_U + \beta c_U, \alpha q_I + \beta c_I)` (``[|U|, B]``, ``[|I|, B]``);
        returns the converged :math:`(r_U, r_I)`. A user (column) whose residual has fallen to
        ``tol`` keeps that iterate while the others go on. The first products start from the
        sparse query, the later ones from dense iterates."""
        (q_u, q_i), (c_u, c_i) = query, constant
        r_u, r_i = q_u.toarray(), q_i.toarray()
        n_u, n_i = (self.adj[k] @ q_i).toarray(), (self.adj_t[k] @ q_u).toarray()
        gap_u, gap_i = np.empty_like(r_u), np.empty_like(r_i)
        done = np.zeros(r_u.shape[1], dtype=bool)
        for step in range(self.iters):
            if step:
                n_u, n_i = self.adj[k] @ r_i, self.adj_t[k] @ r_u
            n_u += c_u
            n_i += c_i
            if done.any():
                np.copyto(n_u, r_u, where=done)
                np.copyto(n_i, r_i, where=done)
            done |= _l1(n_u, r_u, gap_u) + _l1(n_i, r_i, gap_i) <= self.tol
            r_u, r_i = n_u, n_i
            if done.all():
                break
        return r_u, r_i


def _l1(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Column sums of :math:`|a - b|` (``out`` holds the differences)."""
    np.subtract(a, b, out=out)
    np.abs(out, out=out)
    return out.sum(axis=0)
