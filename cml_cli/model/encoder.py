"""CML's behavior-aware graph encoders: the paper's (Wei et al., WSDM 2022, Section 3.1,
https://arxiv.org/abs/2202.08523) and a LightGCN backbone.

Both return the aggregated embeddings ``e_u``, ``e_i`` and the users' behavior-specific
``e_u^k`` that the contrastive loss and the meta network read; both propagate through
:class:`~cml_cli.model.propagation.BehaviorGraph`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cml_cli.model.propagation import BehaviorGraph


class BehaviorEncoder(nn.Module):
    r"""The encoder of `"Contrastive Meta Learning with Behavior Multiplicity for
    Recommendation" <https://arxiv.org/abs/2202.08523>`_ (Wei et al., WSDM 2022), Eq. 1-2.
    Per layer :math:`l` and behavior :math:`k`, with the adjacency :math:`A_k` of ``graph``
    (normalised as the graph's ``norm`` says; the paper's equations use plain sums, ``'none'``):

    .. math::
        S_U^{k,l+1} = \sigma(A_k H_I^l W_U^l), \qquad
        H_U^{l+1} = \sigma\big(\tfrac{1}{K} \textstyle\sum_k A_k H_I^l \, W_U^l\big)

    (items alike with :math:`A_k^\top`, :math:`W_I^l`), then
    :math:`e_u = [H_U^1 \| \dots \| H_U^L] P_U` and :math:`e_u^k = [S_U^{k,1} \| \dots \| S_U^{k,L}] P_U`.
    Only the users' behavior-specific embeddings are returned: nothing downstream uses the items'.

    ``act='sigmoid'`` is the paper's :math:`\sigma`; ``act='tanh'`` replaces it with the
    zero-centred :math:`\tanh` (see the README's "Strong CML" note).

    ``ego=True`` also feeds the layer-0 tables into the projection (``P`` gets :math:`(L+1)d` rows):
    :math:`e_u = [E_U \| H_U^1 \| \dots \| H_U^L] P_U` and
    :math:`e_u^k = [E_U \| S_U^{k,1} \| \dots \| S_U^{k,L}] P_U` (items alike), so the score
    :math:`e_u \cdot e_i` contains item-to-item terms :math:`H_U^1 \cdot E_I` between the items a
    user touched and the candidate, as in LightGCN/NGCF, which also keep the ego embedding.

    Deviations: the projection :math:`P` and the mean over behaviors follow the authors' code
    (the paper writes a sum); :math:`A_k H W` is computed as :math:`A_k (H W)`, the same value.

    Args:
        n_users (int): Number of users :math:`|U|`.
        n_items (int): Number of items :math:`|I|`.
        dim (int): Embedding size :math:`d`.
        layers (int): Layers :math:`L`.
        act (str): ``'sigmoid'`` (the paper's) or ``'tanh'``.
        ego (bool): Feed the layer-0 tables into the projection.

    Shapes:
        - **output:** ``e_u [|U|, d]``, ``e_i [|I|, d]``, ``e_u^k [K, |U|, d]``
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 16, layers: int = 3, act: str = "sigmoid",
                 ego: bool = False):
        super().__init__()
        self.ego = ego
        width = (layers + int(ego)) * dim
        self.act = torch.sigmoid if act == "sigmoid" else torch.tanh
        self.user_emb = nn.Parameter(torch.empty(n_users, dim))
        self.item_emb = nn.Parameter(torch.empty(n_items, dim))
        self.w_user = nn.Parameter(torch.empty(layers, dim, dim))
        self.w_item = nn.Parameter(torch.empty(layers, dim, dim))
        self.p_user = nn.Parameter(torch.empty(width, dim))
        self.p_item = nn.Parameter(torch.empty(width, dim))
        self.layers = layers
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.user_emb, self.item_emb, self.p_user, self.p_item):
            nn.init.xavier_uniform_(p)
        for w in (self.w_user, self.w_item):
            for layer in w:
                nn.init.xavier_uniform_(layer)

    def layer_outputs(self, graph: BehaviorGraph) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The blocks the projection concatenates: ``H_U^l [|U|, d]``, ``H_I^l [|I|, d]`` and
        ``S_U^{k,l} [K, |U|, d]`` for every layer (the layer-0 tables first with ``ego``)."""
        h_u, h_i = self.user_emb, self.item_emb
        agg_u, agg_i, spec_u = ([h_u], [h_i], [h_u.expand(graph.n_behaviors, -1, -1)]) if self.ego else ([], [], [])
        for layer in range(self.layers):
            # A_k H W = A_k (H W): the weights first, then one product for all K (users) and the
            # merged mean (items: only their mean over the behaviors is kept)
            m_u = graph.stacked_to_users(h_i @ self.w_user[layer])
            x_u = h_u @ self.w_item[layer]
            m_i = graph.to_items(x_u).mean(0) if graph.norm == "mean" else graph.merged_to_items(x_u)
            spec_u.append(self.act(m_u))
            h_u = self.act(m_u.mean(0))
            h_i = self.act(m_i)
            agg_u.append(h_u)
            agg_i.append(h_i)
        return agg_u, agg_i, spec_u

    def forward(self, graph: BehaviorGraph, users: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``e_u [|U|, d]``, ``e_i [|I|, d]`` and ``e_u^k [K, |U|, d]`` (``[K, m, d]`` for the
        sorted distinct ``users [m]`` only, when given)."""
        agg_u, agg_i, spec_u = self.layer_outputs(graph)
        e_u = torch.cat(agg_u, dim=-1) @ self.p_user
        e_i = torch.cat(agg_i, dim=-1) @ self.p_item
        spec = torch.cat(spec_u, dim=-1)
        e_uk = (spec if users is None else spec[:, users]) @ self.p_user
        return e_u, e_i, e_uk


class LightGCNBehaviorEncoder(nn.Module):
    r"""CML's encoder with LightGCN's linear layers (``encoder=lightgcn``): no weights, no
    activation, symmetrically normalised adjacencies :math:`\hat A_k = D_{U,k}^{-1/2} A_k D_{I,k}^{-1/2}`.
    Per layer :math:`l` and behavior :math:`k`:

    .. math::
        S_U^{k,l+1} = \hat A_k H_I^l, \qquad H_U^{l+1} = \tfrac{1}{K} \textstyle\sum_k \hat A_k H_I^l
        = \bar A H_I^l, \qquad H_I^{l+1} = \bar A^\top H_U^l

    with :math:`\bar A = \frac1K \sum_k \hat A_k`, from :math:`H^0 = S^{k,0} = E`, and the mean over
    layers including layer 0: :math:`e_u = \frac{1}{L+1}\sum_{l=0}^{L} H_U^l`,
    :math:`e_i = \frac{1}{L+1}\sum_l H_I^l` and, the layers being linear,

    .. math::
        e_u^k = \frac{1}{L+1}\sum_{l=0}^{L} S_U^{k,l} = \frac{1}{L+1}\Big(E_U + \hat A_k \sum_{l=0}^{L-1} H_I^l\Big).

    So the aggregated embeddings are LightGCN over the one merged matrix :math:`\bar A`, and the
    behavior-specific ones take one more product with the stacked :math:`[\hat A_1; \dots; \hat A_K]`:
    :math:`2L + 1` sparse products of about the graph's size per forward pass, on ``[|U|, d]`` and
    ``[|I|, d]`` inputs (not ``[K, |I|, d]``). The graph must be built with ``norm='symmetric'``.

    Args:
        n_users (int): Number of users :math:`|U|`.
        n_items (int): Number of items :math:`|I|`.
        dim (int): Embedding size :math:`d`.
        layers (int): Propagation layers :math:`L`.

    Shapes:
        - **output:** ``e_u [|U|, d]``, ``e_i [|I|, d]``, ``e_u^k [K, |U|, d]``
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 16, layers: int = 3):
        super().__init__()
        self.layers = layers
        self.user_emb = nn.Parameter(torch.empty(n_users, dim))
        self.item_emb = nn.Parameter(torch.empty(n_items, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)

    def layer_outputs(self, graph: BehaviorGraph) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``H_U^l [|U|, d]``, ``H_I^l [|I|, d]`` and ``S_U^{k,l} [K, |U|, d]`` for l = 0..L, one by one
        (for diagnostics; :meth:`forward` does not keep them)."""
        h_u, h_i = self.user_emb, self.item_emb
        agg_u, agg_i, spec_u = [h_u], [h_i], [h_u.expand(graph.n_behaviors, -1, -1)]
        for _ in range(self.layers):
            spec_u.append(graph.stacked_to_users(h_i))
            h_u, h_i = graph.merged_to_users(h_i), graph.merged_to_items(h_u)
            agg_u.append(h_u)
            agg_i.append(h_i)
        return agg_u, agg_i, spec_u

    def forward(self, graph: BehaviorGraph, users: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``e_u [|U|, d]``, ``e_i [|I|, d]`` and ``e_u^k [K, |U|, d]`` (``[K, m, d]`` for the
        sorted distinct ``users [m]`` only, when given: a batch needs no more)."""
        h_u, h_i = self.user_emb, self.item_emb
        sum_u, inputs_i = h_u, h_i  # inputs_i: the item layers 0..L-1, the inputs of the user layers
        for layer in range(self.layers):
            h_u, h_i = graph.merged_to_users(h_i), graph.merged_to_items(h_u)
            sum_u = sum_u + h_u
            if layer < self.layers - 1:
                inputs_i = inputs_i + h_i
        scale = 1.0 / (self.layers + 1)
        layer0 = self.user_emb if users is None else self.user_emb[users]
        e_uk = (layer0 + graph.stacked_to_users(inputs_i, users)) * scale
        e_i = (inputs_i + h_i) * scale if self.layers else inputs_i * scale
        return sum_u * scale, e_i, e_uk
