r"""The losses every trained model is built from, written once: the per-example BPR and
InfoNCE losses (kept as vectors, so that CML's meta network can weight each example), the
L2 penalty, and :class:`BPRModel`, the objective of the models trained with BPR alone.

Every trained model owns its loss (:meth:`BPRModel.loss`, :meth:`cml_cli.model.cml.CML.objective`);
trainers only sample batches, step optimizers and schedule learning rates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Triple = tuple[Tensor, Tensor, Tensor]
Embeddings = tuple[Tensor, Tensor]


def bpr_loss(pos_score: Tensor, neg_score: Tensor) -> Tensor:
    r"""The Bayesian Personalized Ranking loss of each example, from `"BPR: Bayesian
    Personalized Ranking from Implicit Feedback" <https://arxiv.org/abs/1205.2618>`_
    (Rendle et al., UAI 2009):

    .. math::
        \ell = -\log \sigma(\hat x_{u,i^+} - \hat x_{u,i^-})

    Args:
        pos_score (Tensor): :math:`\hat x_{u,i^+}`, shape ``[B]``.
        neg_score (Tensor): :math:`\hat x_{u,i^-}`, shape ``[B]``.

    Returns:
        Tensor: one loss per example, shape ``[B]`` (no reduction).
    """
    return -F.logsigmoid(pos_score - neg_score)


def info_nce(anchor: Tensor, other: Tensor, tau: float) -> Tensor:
    r"""The InfoNCE loss of `"Representation Learning with Contrastive Predictive Coding"
    <https://arxiv.org/abs/1807.03748>`_ between two views of the same users, as CML uses
    it across behaviors (the target-behavior embedding against the behavior-:math:`k` one):

    .. math::
        \ell(u) = -\log \frac{\exp(a_u \cdot o_u / \tau)}{\sum_{v \ne u} \exp(a_u \cdot o_v / \tau)}

    The similarity is the plain dot product (no L2 normalisation) and, as in CML's
    reference code, the positive pair is left out of the denominator: one ``S x S`` score
    matrix with its diagonal masked.

    Args:
        anchor (Tensor): :math:`a`, shape ``[..., S, d]``.
        other (Tensor): :math:`o`, shape ``[..., S, d]`` (row :math:`u` is the same user).
        tau (float): the temperature :math:`\tau` (CML: :math:`d`).

    Returns:
        Tensor: one loss per user, shape ``[..., S]``.
    """
    scores = anchor @ other.transpose(-1, -2) / tau
    size = scores.shape[-1]
    pos = scores.diagonal(dim1=-2, dim2=-1)
    eye = torch.eye(size, dtype=torch.bool, device=scores.device)
    neg = torch.logsumexp(scores.masked_fill(eye, float("-inf")), dim=-1)
    return neg - pos


def l2_reg(*embeddings: Tensor) -> Tensor:
    r""":math:`\sum \|e\|^2` over all rows of all given embedding matrices (a scalar)."""
    return sum(e.pow(2).sum() for e in embeddings)


class BPRModel(nn.Module):
    r"""Base class of the models trained with BPR alone (:class:`~cml_cli.model.baselines.MF`,
    :class:`~cml_cli.model.baselines.LightGCN`, :class:`~cml_cli.model.peers.mbcgcn.MBCGCN`,
    :class:`~cml_cli.model.peers.crgcn.CRGCN`); it owns their objective.

    A subclass holds the layer-0 tables ``user_emb`` :math:`E_U` and ``item_emb`` :math:`E_I`,
    and its ``forward()`` returns one pair of final embeddings :math:`(e^k_U, e^k_I)` per
    trained behavior :math:`k = 1, \dots, K`, the target's last (the scoring embeddings).
    For a batch with the triples :math:`B_k` of each trained behavior:

    .. math::
        L = \sum_{k=1}^{K} \frac{1}{|B_k|} \sum_{(u, i^+, i^-) \in B_k}
            -\log \sigma\big(e^k_u \cdot e^k_{i^+} - e^k_u \cdot e^k_{i^-}\big)
            + \frac{\lambda}{|B_K|} \sum_{(u, i^+, i^-) \in B_K}
            \big(\|E_{U,u}\|^2 + \|E_{I,i^+}\|^2 + \|E_{I,i^-}\|^2\big)

    with every behavior weighted 1 and the L2 penalty on the layer-0 rows of the target's
    triples, as LightGCN's paper regularises (a behavior with no triple in the batch adds
    nothing).

    Args:
        reg (float): the L2 coefficient :math:`\lambda` (default: 0).
    """

    user_emb: nn.Parameter
    item_emb: nn.Parameter

    def __init__(self, reg: float = 0.0):
        super().__init__()
        self.reg = reg

    def loss(self, triples: list[Triple], outputs: list[Embeddings] | None = None) -> tuple[Tensor, dict[str, float]]:
        r"""The objective :math:`L` of one batch, and its parts as floats (for logging).

        Args:
            triples (list[tuple[Tensor, Tensor, Tensor]]): ``(user, pos, neg)`` of each trained
                behavior in ``forward()``'s order (target last), each of shape ``[B_k]``.
            outputs (list[tuple[Tensor, Tensor]], optional): the embeddings to score, one
                ``(users [|U|, d], items [|I|, d])`` pair per entry of ``triples``
                (default: ``self()``; MB-CGCN's pre-training passes its first block's).

        Returns:
            ``(loss, {"loss", "bpr", "reg"})``: the scalar to minimise, and its value, the
            BPR sum and the unscaled L2 term :math:`\frac{1}{|B_K|}\sum \|\cdot\|^2`.
        """
        outputs = self() if outputs is None else outputs
        bpr = outputs[0][0].new_zeros(())
        for (e_u, e_i), (user, pos, neg) in zip(outputs, triples):
            if user.numel():
                eu = e_u[user]
                bpr = bpr + bpr_loss((eu * e_i[pos]).sum(-1), (eu * e_i[neg]).sum(-1)).mean()
        user, pos, neg = triples[-1]
        reg = l2_reg(self.user_emb[user], self.item_emb[pos], self.item_emb[neg]) / max(user.numel(), 1)
        total = bpr + self.reg * reg
        return total, {"loss": float(total.detach()), "bpr": float(bpr.detach()), "reg": float(reg.detach())}
