"""Meta weight network (spec §4): turns each individual loss into a weight."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MetaWeightNet(nn.Module):
    r"""Weights for contrastive and BPR losses from the loss value and the user's embeddings.

    With :math:`z_1 = [\ell \mathbf{1}_d \| x \| y]` and :math:`z_2 = \ell \cdot z`:

    .. math::
        w_1 = \sigma(\mathrm{BN}(\sqrt{3d}\,\mathrm{Drop}(W_2\,\mathrm{Drop}(\mathrm{PReLU}(W_1 z_1))))),\quad
        w_2 = \sigma(\mathrm{BN}(\mathrm{Drop}(\mathrm{PReLU}(W_3 z_2))))

    and :math:`w_{cl} = (w_1 + w_2)/2` with :math:`(x, y, z) = (e_u^k, e_u, [e_u^k \| e_u])`,
    :math:`w_{bpr} = w_1 + w_2` with :math:`(x, y, z) = (e_u, e_u^k, e_u)`. One PReLU and one
    ``BatchNorm1d(1)`` are shared by all branches, as in the reference.
    """

    def __init__(self, dim: int = 16, dropout: float = 0.8):
        super().__init__()
        hidden = 3 * dim // 2
        self.dim = dim
        self.cl1, self.cl2, self.cl3 = nn.Linear(3 * dim, hidden), nn.Linear(hidden, 1), nn.Linear(2 * dim, 1)
        self.bpr1, self.bpr2, self.bpr3 = nn.Linear(3 * dim, hidden), nn.Linear(hidden, 1), nn.Linear(dim, 1)
        self.prelu = nn.PReLU()
        self.bn = nn.BatchNorm1d(1)
        self.dropout = nn.Dropout(dropout)

    def _norm(self, x: Tensor) -> Tensor:
        if x.shape[0] > 1 or not self.training:
            return self.bn(x)
        return F.batch_norm(x, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, False)

    def _first(self, z1: Tensor, lin1: nn.Linear, lin2: nn.Linear) -> Tensor:
        a = self.dropout(self.prelu(lin1(z1)))
        a = math.sqrt(3 * self.dim) * self.dropout(lin2(a))
        return torch.sigmoid(self._norm(a))

    def contrastive(self, loss: Tensor, e_uk: Tensor, e_u: Tensor) -> Tensor:
        """``loss [n]``, ``e_uk [n, d]``, ``e_u [n, d]`` -> weights ``[n]``."""
        ell = loss[:, None]
        w1 = self._first(torch.cat([ell.expand(-1, self.dim), e_uk, e_u], dim=1), self.cl1, self.cl2)
        w2 = torch.sigmoid(self._norm(self.dropout(self.prelu(self.cl3(ell * torch.cat([e_uk, e_u], dim=1))))))
        return ((w1 + w2) / 2).squeeze(1)

    def bpr(self, loss: Tensor, e_u: Tensor, e_uk: Tensor) -> Tensor:
        """``loss [n]``, ``e_u [n, d]``, ``e_uk [n, d]`` -> weights ``[n]``."""
        ell = loss[:, None]
        w1 = self._first(torch.cat([ell.expand(-1, self.dim), e_u, e_uk], dim=1), self.bpr1, self.bpr2)
        w2 = torch.sigmoid(self._norm(self.dropout(self.prelu(self.bpr3(ell * e_u)))))
        return (w1 + w2).squeeze(1)
