"""MB-CGCN: Cheng et al., "Multi-Behavior Recommendation with Cascading Graph Convolution
Networks", WWW 2023 (https://arxiv.org/abs/2303.15720)."""

from __future__ import annotations

import torch
from torch import nn

from cml_cli.model.losses import BPRModel, Embeddings
from cml_cli.model.propagation import BehaviorGraph, lightgcn


class MBCGCN(BPRModel):
    r"""The MB-CGCN model from `"Multi-Behavior Recommendation with Cascading Graph
    Convolution Networks" <https://arxiv.org/abs/2303.15720>`_ (Cheng et al., WWW 2023):
    one LightGCN block per behavior in funnel order :math:`b_1, \dots, b_K` (target last),
    each block's output transformed into the next block's input. Block :math:`k` runs
    :math:`L_k` LightGCN layers over behavior :math:`k`'s symmetric-normalised graph
    :math:`\hat A_k`:

    .. math::
        e^{(k)} = \frac{1}{L_k+1} \sum_{l=0}^{L_k} \hat A_k^{\,l}\, x^{(k)}, \qquad
        x^{(1)} = E, \qquad x^{(k+1)} = e^{(k)} W_k, \qquad
        e = \sum_{k=1}^{K} e^{(k)}

    (users with :math:`W^U_k`, items with :math:`W^I_k`, both :math:`d \times d`), scored by
    :math:`\hat x(u, i) = e_u \cdot e_i` and trained with
    :meth:`~cml_cli.model.losses.BPRModel.loss` on the target behavior only. Parameters start
    from :math:`\mathcal N(0, 0.01^2)`, as in the authors' code.

    Deviations from the paper and the authors' code: the authors initialise the first block
    from a LightGCN pre-trained on the first behavior for up to 1000 epochs; here the
    trainer pre-trains the first block (:meth:`first_block`) for ``pretrain_epochs`` epochs
    (3 by default). The L2 penalty covers the layer-0 embeddings only, not the
    transformations :math:`W_k`, which the authors' code also penalises.

    Args:
        graphs (list[BehaviorGraph]): one one-block graph per behavior (``norm='symmetric'``),
            in funnel order.
        dim (int): the embedding size :math:`d`.
        layers (list[int]): :math:`L_k`, one count per block.
        reg (float, optional): the L2 coefficient of the loss (default: 0).

    Shapes:
        - **output:** ``[(users [|U|, d], items [|I|, d])]``: the combined embeddings :math:`e`
    """

    def __init__(self, graphs: list[BehaviorGraph], dim: int, layers: list[int], reg: float = 0.0):
        super().__init__(reg)
        self.graphs, self.layers = graphs, layers
        n_users, n_items, k = graphs[0].n_users, graphs[0].n_items, len(graphs)
        self.user_emb = nn.Parameter(torch.randn(n_users, dim) * 0.01)
        self.item_emb = nn.Parameter(torch.randn(n_items, dim) * 0.01)
        self.w_user = nn.Parameter(torch.randn(max(k - 1, 0), dim, dim) * 0.01)
        self.w_item = nn.Parameter(torch.randn(max(k - 1, 0), dim, dim) * 0.01)

    def first_block(self) -> list[Embeddings]:
        """:math:`e^{(1)}` alone, one ``(users, items)`` pair: what pre-training trains."""
        e_u, e_i = lightgcn(self.graphs[0], self.user_emb, self.item_emb, self.layers[0])
        return [(e_u[0], e_i[0])]

    def forward(self) -> list[Embeddings]:
        """The combined embeddings :math:`e`, one pair."""
        x_u, x_i = self.user_emb, self.item_emb
        sum_u, sum_i = 0, 0
        for k, (graph, layers) in enumerate(zip(self.graphs, self.layers)):
            e_u, e_i = (t[0] for t in lightgcn(graph, x_u, x_i, layers))
            sum_u, sum_i = sum_u + e_u, sum_i + e_i
            if k < len(self.graphs) - 1:
                x_u, x_i = e_u @ self.w_user[k], e_i @ self.w_item[k]
        return [(sum_u, sum_i)]
