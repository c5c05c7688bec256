"""CML as one module: encoder + meta weight network + the weighted objective (spec §3-4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from cml_cli.model.encoder import BehaviorEncoder, LightGCNBehaviorEncoder
from cml_cli.model.losses import bpr_loss, info_nce, l2_reg
from cml_cli.model.propagation import BehaviorGraph
from cml_cli.model.weighting import MetaWeightNet


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

    def encode(self, graph: BehaviorGraph, params: dict[str, Tensor] | None = None):
        """``e_u [|U|, d]``, ``e_i [|I|, d]``, ``e_u^k [K, |U|, d]``, optionally with other encoder params."""
        if params is None:
            return self.encoder(graph)
        return functional_call(self.encoder, params, (graph,))

    def objective(self, graph: BehaviorGraph, batch: Batch, params: dict[str, Tensor] | None = None,
                  weighting: str = "meta") -> tuple[Tensor, dict[str, float]]:
        """The weighted loss and its parts (as floats, for logging). The batch's ``held_out``
        edges, if any, are removed from ``graph`` first."""
        if batch.held_out is not None:
            graph = graph.without(*batch.held_out)
        e_u, e_i, e_uk = self.encode(graph, params)
        k_count = self.n_behaviors
        bpr_total = e_u.new_zeros(())
        for k, t in enumerate(batch.triples):
            if t.user.numel() == 0:
                continue
            eu = e_u[t.user]
            loss = bpr_loss((eu * e_i[t.pos]).sum(-1), (eu * e_i[t.neg]).sum(-1))
            w = self._weights("bpr", weighting, loss, eu, e_uk[k][t.user])
            bpr_total = bpr_total + (w * loss).sum()
        bpr_total = bpr_total / k_count

        tgt = batch.triples[-1]
        reg_total = l2_reg(e_u[tgt.user], e_i[tgt.pos], e_i[tgt.neg])

        cl_total = e_u.new_zeros(())
        users = batch.ssl_users
        if self.contrastive and self.beta != 0 and users.numel() >= 2:
            spec = e_uk[:, users]
            losses = info_nce(spec[-1].expand_as(spec), spec, tau=float(self.dim))
            for k in range(k_count):
                w = self._weights("cl", weighting, losses[k], spec[k], e_u[users])
                cl_total = cl_total + (w * losses[k]).sum()
            cl_total = cl_total / k_count

        total = (bpr_total + self.reg * reg_total + self.beta * cl_total) / max(batch.size, 1)
        parts = {k: float(v.detach()) for k, v in
                 (("loss", total), ("bpr", bpr_total), ("reg", reg_total), ("cl", cl_total))}
        return total, parts

    def _weights(self, kind: str, weighting: str, loss: Tensor, a: Tensor, b: Tensor) -> Tensor:
        if weighting == "none":
            return torch.ones_like(loss)
        fn = self.weigher.bpr if kind == "bpr" else self.weigher.contrastive
        if weighting == "frozen":
            with torch.no_grad():
                return fn(loss, a, b)
        return fn(loss, a, b)

    @torch.no_grad()
    def embeddings(self, graph: BehaviorGraph) -> tuple[Tensor, Tensor]:
        """Aggregated user and item embeddings for scoring: ``x(u, i) = e_u . e_i``."""
        e_u, e_i, _ = self.encoder(graph)
        return e_u, e_i
