"""CRGCN: Yan et al., "Cascading Residual Graph Convolutional Network for Multi-Behavior
Recommendation", ACM TOIS 2023 (https://arxiv.org/abs/2205.13128)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cml_cli.model.losses import BPRModel, Embeddings
from cml_cli.model.propagation import BehaviorGraph


class CRGCN(BPRModel):
    r"""The CRGCN model from `"Cascading Residual Graph Convolutional Network for
    Multi-Behavior Recommendation" <https://arxiv.org/abs/2205.13128>`_ (Yan et al., ACM TOIS
    2023): a cascade of residual blocks, one per behavior in funnel order (target last).
    Block :math:`k` propagates its input :math:`L_k` times over behavior :math:`k`'s
    symmetric-normalised graph :math:`\hat A_k` and adds the L2-normalised result to it:

    .. math::
        e^{(k)} = e^{(k-1)} + \mathrm{norm}\big(\hat A_k^{\,L_k} e^{(k-1)}\big), \qquad e^{(0)} = E

    so each behavior refines what the previous ones learned, with no parameter besides
    :math:`E`. Every behavior has its own BPR term on
    :math:`\hat x^k(u, i) = e^{(k)}_u \cdot e^{(k)}_i` (the multi-task objective of
    :meth:`~cml_cli.model.losses.BPRModel.loss`, equal weights); recommendations use the
    target's :math:`e^{(K)}`. Xavier-uniform initialisation, as in the authors' code.

    Deviation from the authors' code: their L2 term is :math:`\lambda (\|E_U\| + \|E_I\|) / |I|`
    (unsquared norms of the whole tables); here it is the squared norm of the batch's
    target-triple rows over the batch size, as for every model trained with BPR here.

    Args:
        graphs (list[BehaviorGraph]): one one-block graph per behavior (``norm='symmetric'``),
            in funnel order.
        dim (int): the embedding size :math:`d`.
        layers (list[int]): :math:`L_k`, one count per block.
        reg (float, optional): the L2 coefficient of the loss (default: 0).

    Shapes:
        - **output:** ``[(users [|U|, d], items [|I|, d])]`` for :math:`k = 1, \dots, K`
    """

    def __init__(self, graphs: list[BehaviorGraph], dim: int, layers: list[int], reg: float = 0.0):
        super().__init__(reg)
        self.graphs, self.layers = graphs, layers
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(graphs[0].n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(graphs[0].n_items, dim)))

    def forward(self) -> list[Embeddings]:
        """:math:`e^{(k)}` of every block, one pair per behavior (target last)."""
        e_u, e_i = self.user_emb, self.item_emb
        out = []
        for graph, layers in zip(self.graphs, self.layers):
            h_u, h_i = e_u, e_i
            for _ in range(layers):
                h_u, h_i = graph.to_users(h_i)[0], graph.to_items(h_u)[0]
            e_u, e_i = e_u + F.normalize(h_u, dim=-1), e_i + F.normalize(h_i, dim=-1)
            out.append((e_u, e_i))
        return out
