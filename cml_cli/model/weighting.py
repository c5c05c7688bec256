"""CML's meta weight network: turns each individual loss into a weight."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MetaWeightNet(nn.Module):
    r"""The weight network of CML's meta contrastive encoding, from `"Contrastive Meta Learning
    with Behavior Multiplicity for Recommendation" <https://arxiv.org/abs/2202.08523>`_ (Wei
    et al., WSDM 2022): it weighs every individual loss :math:`\ell` (one example's BPR loss,
    one user's contrastive loss) from the loss itself and the user's embeddings. With
    :math:`z_1 = [\ell \mathbf{1}_d \,\|\, x \,\|\, y] \in \mathbb R^{3d}` and
    :math:`z_2 = \ell \cdot z`:

    .. math::
        w_1 = \sigma\big(\mathrm{BN}(\sqrt{3d}\,\mathrm{Drop}(W_2\,\mathrm{Drop}(\mathrm{PReLU}(W_1 z_1))))\big),
        \qquad w_2 = \sigma\big(\mathrm{BN}(\mathrm{Drop}(\mathrm{PReLU}(W_3 z_2)))\big)

    with :math:`W_1 \in \mathbb R^{3d/2 \times 3d}`, :math:`W_2 \in \mathbb R^{1 \times 3d/2}`
    and :math:`W_3` of one output; then :math:`w_{cl} = (w_1 + w_2)/2` with
    :math:`(x, y, z) = (e_u^k, e_u, [e_u^k \| e_u])` (:meth:`contrastive`) and
    :math:`w_{bpr} = w_1 + w_2` with :math:`(x, y, z) = (e_u, e_u^k, e_u)` (:meth:`bpr`), each
    kind with its own linear layers. The paper leaves the network's shapes, the "copy" of
    :math:`\ell` into :math:`d` dimensions and the scale open; they follow the authors'
    reference code, including its one PReLU and one ``BatchNorm1d(1)`` shared by all
    branches. The weights are not detached from :math:`\ell` (gradients flow through it).
    Batch normalisation of a single example uses the running statistics (training-mode batch
    statistics are undefined for one value).

    Args:
        dim (int): the embedding size :math:`d` (default: 16).
        dropout (float): the dropout probability of every ``Drop`` (default: 0.8, the reference's).
    """

    def __init__(self, dim: int = 16, dropout: float = 0.8):
        super().__init__()
        hidden = 3 * dim // 2
        self.dim = dim
        self.cl1, self.cl2, self.cl3 = nn.Linear(3 * dim, hidden), nn.Linear(hidden, 1), nn.Linear(2 * dim, 1)
        self.bpr1, self.bpr2, self.bpr3 = nn.Linear(3 * dim, hidden), nn.Linear(hidden, 1), nn.Linear(dim, 1)
        self.prelu = nn.PReLU()
        self.bn = nn.BatchNorm1d(1)
        self.rate = dropout

    def dropout(self, x: Tensor) -> Tensor:
        """Dropout at rate ``rate`` in training mode: ``x * m / (1 - rate)``, ``m ~ Bernoulli(1 - rate)``,
        the mask drawn with ``torch.rand`` (about three times faster on CPU than ``F.dropout``'s
        ``bernoulli_``)."""
        if not self.training or self.rate == 0:
            return x
        keep = torch.rand_like(x).ge_(self.rate)
        return x * keep.mul_(1.0 / (1.0 - self.rate))

    def _norm(self, x: Tensor) -> Tensor:
        if x.shape[0] > 1 or not self.training:
            return self.bn(x)
        return F.batch_norm(x, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, False)

    def _first(self, loss: Tensor, x: Tensor, y: Tensor, index: Tensor | None, lin1: nn.Linear,
               lin2: nn.Linear) -> Tensor:
        """:math:`w_1` of ``z_1 = [loss 1_d || x[index] || y[index]]``: ``lin1`` applied block-wise, the
        loss block as a rank-one term and the ``x``, ``y`` blocks once per row of ``x``, ``y``."""
        d, weight = self.dim, lin1.weight
        rows = F.linear(x, weight[:, d:2 * d]) + F.linear(y, weight[:, 2 * d:], lin1.bias)
        hidden = torch.addcmul(rows if index is None else rows[index], loss[:, None], weight[:, :d].sum(1))
        a = self.dropout(self.prelu(hidden))
        a = math.sqrt(3 * self.dim) * self.dropout(lin2(a))
        return torch.sigmoid(self._norm(a))

    def _second(self, loss: Tensor, z: Tensor, index: Tensor | None, lin3: nn.Linear) -> Tensor:
        """:math:`w_2` of ``z_2 = loss * z[index]``: ``lin3(l z) = l (W z) + b``, ``W z`` once per row of ``z``."""
        rows = F.linear(z, lin3.weight)
        a = torch.addcmul(lin3.bias, loss[:, None], rows if index is None else rows[index])
        return torch.sigmoid(self._norm(self.dropout(self.prelu(a))))

    def contrastive(self, loss: Tensor, e_uk: Tensor, e_u: Tensor) -> Tensor:
        r""":math:`w_{cl}` of contrastive losses.

        Args:
            loss (Tensor): :math:`\ell^k_{cl}(u)`, shape ``[n]``.
            e_uk (Tensor): the users' behavior-:math:`k` embeddings :math:`e_u^k`, shape ``[n, d]``.
            e_u (Tensor): the users' aggregated embeddings :math:`e_u`, shape ``[n, d]``.

        Returns:
            Tensor: the weights, shape ``[n]``, in :math:`(0, 1)`.
        """
        w1 = self._first(loss, e_uk, e_u, None, self.cl1, self.cl2)
        w2 = self._second(loss, torch.cat([e_uk, e_u], dim=1), None, self.cl3)
        return ((w1 + w2) / 2).squeeze(1)

    def bpr(self, loss: Tensor, e_u: Tensor, e_uk: Tensor, index: Tensor | None = None) -> Tensor:
        r""":math:`w_{bpr}` of BPR losses.

        Args:
            loss (Tensor): :math:`\ell_{bpr}` of each example, shape ``[n]``.
            e_u (Tensor): users' aggregated embeddings :math:`e_u`, shape ``[m, d]``.
            e_uk (Tensor): their behavior-:math:`k` embeddings :math:`e_u^k`, shape ``[m, d]``.
            index (Tensor, optional): the row of ``e_u`` and ``e_uk`` of each example's user, shape
                ``[n]`` (default: row :math:`j` for example :math:`j`, :math:`m = n`). The first layers
                then run once per user rather than once per example.

        Returns:
            Tensor: the weights, shape ``[n]``, in :math:`(0, 2)`.
        """
        w1 = self._first(loss, e_u, e_uk, index, self.bpr1, self.bpr2)
        w2 = self._second(loss, e_u, index, self.bpr3)
        return (w1 + w2).squeeze(1)
