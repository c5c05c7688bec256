"""Per-example losses (spec §3), kept as vectors so the meta network can weight them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_score: Tensor, neg_score: Tensor) -> Tensor:
    r""":math:`\ell = -\log \sigma(\hat x_{u,i^+} - \hat x_{u,i^-})`, shape ``[B]``."""
    return -F.logsigmoid(pos_score - neg_score)


def info_nce(anchor: Tensor, other: Tensor, tau: float) -> Tensor:
    r"""Contrastive loss between a user's target-behavior embedding and its behavior-k one.

    .. math::
        \ell(u) = -\log \frac{\exp(a_u \cdot o_u / \tau)}{\sum_{v \ne u} \exp(a_u \cdot o_v / \tau)}

    ``anchor`` and ``other`` have shape ``[..., S, d]``; the result ``[..., S]``. The
    positive is left out of the denominator (one ``S x S`` score matrix, diagonal masked).
    """
    scores = anchor @ other.transpose(-1, -2) / tau
    size = scores.shape[-1]
    pos = scores.diagonal(dim1=-2, dim2=-1)
    eye = torch.eye(size, dtype=torch.bool, device=scores.device)
    neg = torch.logsumexp(scores.masked_fill(eye, float("-inf")), dim=-1)
    return neg - pos


def l2_reg(*embeddings: Tensor) -> Tensor:
    r""":math:`\sum \|e\|^2` over all rows of all given embedding matrices."""
    return sum(e.pow(2).sum() for e in embeddings)
