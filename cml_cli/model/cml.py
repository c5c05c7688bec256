"""CML as one module: encoder + meta weight network + the weighted objective (spec §3-4)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from cml_cli.model.encoder import BehaviorEncoder, LightGCNBehaviorEncoder
from cml_cli.model.losses import bpr_loss, info_nce, l2_reg
from cml_cli.model.propagation import BehaviorGraph
from cml_cli.model.weighting import MetaWeightNet

Embeddings = tuple[Tensor, Tensor, Tensor]
"""An encoder's output: ``e_u [|U|, d]``, ``e_i [|I|, d]``, ``e_u^k [K, |U|, d]``."""


@dataclass
class Triples:
    """BPR examples of one behavior: ``user``, ``pos``, ``neg``, each ``[n]``."""

    user: Tensor
    pos: Tensor
    neg: Tensor


@dataclass
class Batch:
    """One mini-batch: BPR triples per behavior (target last), the contrastive users
    ``ssl_users [S]``, the normaliser ``size`` (B, the number of target examples) and
    optionally ``held_out``, the graph edges (block coordinates, see
    :meth:`BehaviorGraph.without`) to leave out of the propagation for this batch."""

    triples: list[Triples]
    ssl_users: Tensor
    size: int
    held_out: tuple[Tensor, Tensor] | None = None


class CML(nn.Module):
    r"""The CML objective for a batch of size :math:`B`:

    .. math::
        L = \frac{1}{B}\Big(\frac{1}{K}\sum_k \sum w_{bpr}\,\ell_{bpr}
            + \mathrm{reg}\, L_{reg} + \beta \frac{1}{K}\sum_k \sum_{u \in S} w_{cl}\,\ell^k_{cl}(u)\Big)

    with weights from :class:`MetaWeightNet` (``weighting='meta'``), the network under
    ``torch.no_grad`` (``'frozen'``), or all weights 1 (``'none'``, the w/o MCE ablation).
    ``encoder='cml'`` is the paper's encoder (:class:`BehaviorEncoder`), ``'lightgcn'`` the
    linear backbone (:class:`LightGCNBehaviorEncoder`); the objective is the same.
    """

    def __init__(self, n_users: int, n_items: int, n_behaviors: int, dim: int = 16, layers: int = 3,
                 dropout: float = 0.8, reg: float = 1e-3, beta: float = 0.005, contrastive: bool = True,
                 act: str = "sigmoid", ego: bool = False, encoder: str = "cml"):
        super().__init__()
        self.encoder = (LightGCNBehaviorEncoder(n_users, n_items, dim, layers) if encoder == "lightgcn"
                        else BehaviorEncoder(n_users, n_items, dim, layers, act, ego))
        self.weigher = MetaWeightNet(dim, dropout)
        self.n_behaviors, self.dim = n_behaviors, dim
        self.reg, self.beta, self.contrastive = reg, beta, contrastive

    def encode(self, graph: BehaviorGraph, params: dict[str, Tensor] | None = None,
               held_out: tuple[Tensor, Tensor] | None = None) -> Embeddings:
        """``e_u [|U|, d]``, ``e_i [|I|, d]``, ``e_u^k [K, |U|, d]``, optionally with other encoder
        params and with the ``held_out`` edges (block coordinates) left out of ``graph``."""
        if held_out is not None:
            graph = graph.without(*held_out)
        if params is None:
            return self.encoder(graph)
        return functional_call(self.encoder, params, (graph,))

    def objective(self, graph: BehaviorGraph, batch: Batch, params: dict[str, Tensor] | None = None,
                  weighting: str = "meta") -> tuple[Tensor, dict[str, float]]:
        """The weighted loss and its parts (as floats, for logging): :meth:`encode` (the batch's
        ``held_out`` edges removed from ``graph``), then :meth:`loss`."""
        return self.loss(self.encode(graph, params, batch.held_out), batch, weighting)

    def loss(self, embeddings: Embeddings, batch: Batch,
             weighting: str = "meta") -> tuple[Tensor, dict[str, float]]:
        """The weighted loss of ``batch`` on the encoder's output ``embeddings`` (see the class)."""
        e_u, e_i, e_uk = embeddings
        k_count = self.n_behaviors
        lengths = [t.user.numel() for t in batch.triples]
        users, slot = torch.unique(torch.cat([t.user for t in batch.triples]), return_inverse=True)
        table_u = e_u[users]  # the batch's users once: the meta network reads them per user
        slots = slot.split(lengths)
        items = e_i[torch.cat([torch.cat([t.pos, t.neg]) for t in batch.triples])]
        rows_i = items.split([2 * n for n in lengths])
        rows_u = [table_u[s] for s in slots]
        bpr_total = e_u.new_zeros(())
        for k, (t, eu, ei, s) in enumerate(zip(batch.triples, rows_u, rows_i, slots)):
            if t.user.numel() == 0:
                continue
            pos, neg = ei.chunk(2)
            loss = bpr_loss((eu * pos).sum(-1), (eu * neg).sum(-1))
            w = self._weights("bpr", weighting, loss, table_u, e_uk[k][users], s)
            bpr_total = bpr_total + (w * loss).sum()
        bpr_total = bpr_total / k_count

        target_pos, target_neg = rows_i[-1].chunk(2)
        reg_total = l2_reg(rows_u[-1], target_pos, target_neg)

        cl_total = e_u.new_zeros(())
        ssl = batch.ssl_users
        if self.contrastive and self.beta != 0 and ssl.numel() >= 2:
            spec = e_uk[:, ssl]
            losses = info_nce(spec[-1].expand_as(spec), spec, tau=float(self.dim))
            for k in range(k_count):
                w = self._weights("cl", weighting, losses[k], spec[k], e_u[ssl])
                cl_total = cl_total + (w * losses[k]).sum()
            cl_total = cl_total / k_count

        total = (bpr_total + self.reg * reg_total + self.beta * cl_total) / max(batch.size, 1)
        parts = {k: float(v.detach()) for k, v in
                 (("loss", total), ("bpr", bpr_total), ("reg", reg_total), ("cl", cl_total))}
        return total, parts

    def _weights(self, kind: str, weighting: str, loss: Tensor, a: Tensor, b: Tensor,
                 index: Tensor | None = None) -> Tensor:
        if weighting == "none":
            return torch.ones_like(loss)
        with torch.no_grad() if weighting == "frozen" else contextlib.nullcontext():
            if kind == "bpr":
                return self.weigher.bpr(loss, a, b, index)
            return self.weigher.contrastive(loss, a, b)

    @torch.no_grad()
    def embeddings(self, graph: BehaviorGraph) -> tuple[Tensor, Tensor]:
        """Aggregated user and item embeddings for scoring: ``x(u, i) = e_u . e_i``."""
        e_u, e_i, _ = self.encoder(graph)
        return e_u, e_i
