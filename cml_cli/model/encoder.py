"""CML's behavior-aware graph encoders: the paper's (spec §2) and a LightGCN backbone.

Both return the aggregated embeddings ``e_u``, ``e_i`` and the users' behavior-specific
``e_u^k`` that the contrastive loss and the meta network read; both propagate through
:class:`~cml_cli.model.propagation.BehaviorGraph`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cml_cli.model.propagation import BehaviorGraph


class BehaviorEncoder(nn.Module):
    r"""Per layer :math:`l` and behavior :math:`k`:

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
            m_u = graph.to_users(h_i) @ self.w_user[layer]
            m_i = graph.to_items(h_u) @ self.w_item[layer]
            spec_u.append(self.act(m_u))
            h_u = self.act(m_u.mean(0))
            h_i = self.act(m_i.mean(0))
            agg_u.append(h_u)
            agg_i.append(h_i)
        return agg_u, agg_i, spec_u

    def forward(self, graph: BehaviorGraph) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``e_u [|U|, d]``, ``e_i [|I|, d]`` and ``e_u^k [K, |U|, d]``."""
        agg_u, agg_i, spec_u = self.layer_outputs(graph)
        e_u = torch.cat(agg_u, dim=-1) @ self.p_user
        e_i = torch.cat(agg_i, dim=-1) @ self.p_item
        e_uk = torch.cat(spec_u, dim=-1) @ self.p_user
        return e_u, e_i, e_uk


class LightGCNBehaviorEncoder(nn.Module):
    r"""CML's encoder with LightGCN's linear layers (``encoder=lightgcn``): no weights, no
    activation, symmetrically normalised adjacencies :math:`\hat A_k = D_U^{-1/2} A_k D_I^{-1/2}`.
    Per layer :math:`l` and behavior :math:`k`:

    .. math::
        S_U^{k,l+1} = \hat A_k H_I^l, \qquad H_U^{l+1} = \tfrac{1}{K} \textstyle\sum_k \hat A_k H_I^l

    (items alike with :math:`\hat A_k^\top`), from :math:`H^0 = S^{k,0} = E`, and the mean over
    layers including layer 0: :math:`e_u = \frac{1}{L+1}\sum_{l=0}^{L} H_U^l`,
    :math:`e_u^k = \frac{1}{L+1}\sum_{l=0}^{L} S_U^{k,l}`, :math:`e_i = \frac{1}{L+1}\sum_l H_I^l`.
    The graph must be built with ``norm='symmetric'``.
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
        """``H_U^l [|U|, d]``, ``H_I^l [|I|, d]`` and ``S_U^{k,l} [K, |U|, d]`` for l = 0..L."""
        h_u, h_i = self.user_emb, self.item_emb
        agg_u, agg_i, spec_u = [h_u], [h_i], [h_u.expand(graph.n_behaviors, -1, -1)]
        for _ in range(self.layers):
            m_u, m_i = graph.to_users(h_i), graph.to_items(h_u)
            h_u, h_i = m_u.mean(0), m_i.mean(0)
            agg_u.append(h_u)
            agg_i.append(h_i)
            spec_u.append(m_u)
        return agg_u, agg_i, spec_u

    def forward(self, graph: BehaviorGraph) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``e_u [|U|, d]``, ``e_i [|I|, d]`` and ``e_u^k [K, |U|, d]``."""
        agg_u, agg_i, spec_u = self.layer_outputs(graph)
        return (torch.stack(agg_u).mean(0), torch.stack(agg_i).mean(0), torch.stack(spec_u).mean(0))
