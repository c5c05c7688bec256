"""CRGCN: Yan et al., "Cascading Residual Graph Convolutional Network for Multi-Behavior
Recommendation", ACM TOIS 2023."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cml_cli.model.propagation import BehaviorGraph


class CRGCN(nn.Module):
    r"""A cascade of residual LightGCN blocks, one per behavior in funnel order (target last).
    Block :math:`k` propagates its input :math:`e^{(k-1)}` :math:`L_k` times over behavior
    :math:`k`'s symmetric-normalised graph and adds the (L2-normalised) result to it:

    .. math::
        e^{(k)} = e^{(k-1)} + \mathrm{norm}\big(\hat A_k^{\,L_k} e^{(k-1)}\big), \qquad e^{(0)} = E

    so each behavior refines what the previous ones learned. Every behavior has its own BPR
    loss on :math:`\hat x^k(u, i) = e^{(k)}_u \cdot e^{(k)}_i` (the multi-task objective, equal
    weights); recommendations use the target's :math:`e^{(K)}`. Xavier-uniform initialisation,
    as in the authors' code.

    ``graphs`` are one-block graphs (``norm='symmetric'``), ``layers`` one count per block.
    """

    def __init__(self, graphs: list[BehaviorGraph], dim: int, layers: list[int]):
        super().__init__()
        self.graphs, self.layers = graphs, layers
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(graphs[0].n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(graphs[0].n_items, dim)))

    def forward(self) -> list[tuple[Tensor, Tensor]]:
        """``[(users [|U|, d], items [|I|, d])]``, one pair per behavior (target last)."""
        e_u, e_i = self.user_emb, self.item_emb
        out = []
        for graph, layers in zip(self.graphs, self.layers):
            h_u, h_i = e_u, e_i
            for _ in range(layers):
                h_u, h_i = graph.to_users(h_i)[0], graph.to_items(h_u)[0]
            e_u, e_i = e_u + F.normalize(h_u, dim=-1), e_i + F.normalize(h_i, dim=-1)
            out.append((e_u, e_i))
        return out
