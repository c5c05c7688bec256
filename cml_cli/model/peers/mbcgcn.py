"""MB-CGCN: Cheng et al., "Multi-Behavior Recommendation with Cascading Graph Convolution
Networks", WWW 2023."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cml_cli.model.propagation import BehaviorGraph, lightgcn


class MBCGCN(nn.Module):
    r"""Cascading LightGCN blocks, one per behavior in funnel order :math:`b_1, \dots, b_K`
    (target last). Block :math:`k` runs LightGCN on behavior :math:`k`'s symmetric-normalised
    graph :math:`\hat A_k` for :math:`L_k` layers from its input :math:`x^{(k)}`:

    .. math::
        e^{(k)} = \frac{1}{L_k+1} \sum_{l=0}^{L_k} \hat A_k^{\,l}\, x^{(k)}, \qquad
        x^{(1)} = E, \qquad x^{(k+1)} = e^{(k)} W_k

    (users with :math:`W^U_k`, items with :math:`W^I_k`, both :math:`d \times d`: the learned
    transformation that carries one behavior's knowledge into the next), and the final
    embeddings are the linear combination :math:`e = \sum_{k=1}^{K} e^{(k)}`, scored by
    :math:`\hat x(u, i) = e_u \cdot e_i` and trained with BPR on the target behavior only.
    Parameters start from :math:`\mathcal N(0, 0.01^2)`, as in the authors' code; their
    pre-training of the first block (LightGCN with BPR on the first behavior) is the trainer's
    ``pretrain_epochs`` (:meth:`first_block`).

    ``graphs`` are one-block graphs (``norm='symmetric'``), ``layers`` one count per block.
    """

    def __init__(self, graphs: list[BehaviorGraph], dim: int, layers: list[int]):
        super().__init__()
        self.graphs, self.layers = graphs, layers
        n_users, n_items, k = graphs[0].n_users, graphs[0].n_items, len(graphs)
        self.user_emb = nn.Parameter(torch.randn(n_users, dim) * 0.01)
        self.item_emb = nn.Parameter(torch.randn(n_items, dim) * 0.01)
        self.w_user = nn.Parameter(torch.randn(max(k - 1, 0), dim, dim) * 0.01)
        self.w_item = nn.Parameter(torch.randn(max(k - 1, 0), dim, dim) * 0.01)

    def first_block(self) -> list[tuple[Tensor, Tensor]]:
        """``[(users, items)]`` of the first block alone (what pre-training trains)."""
        e_u, e_i = lightgcn(self.graphs[0], self.user_emb, self.item_emb, self.layers[0])
        return [(e_u[0], e_i[0])]

    def forward(self) -> list[tuple[Tensor, Tensor]]:
        """``[(users [|U|, d], items [|I|, d])]``: the combined embeddings."""
        x_u, x_i = self.user_emb, self.item_emb
        sum_u, sum_i = 0, 0
        for k, (graph, layers) in enumerate(zip(self.graphs, self.layers)):
            e_u, e_i = (t[0] for t in lightgcn(graph, x_u, x_i, layers))
            sum_u, sum_i = sum_u + e_u, sum_i + e_i
            if k < len(self.graphs) - 1:
                x_u, x_i = e_u @ self.w_user[k], e_i @ self.w_item[k]
        return [(sum_u, sum_i)]
