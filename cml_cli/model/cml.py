"""CML as one module: a behavior-aware encoder, the meta weight network and the weighted
objective of "Contrastive Meta Learning with Behavior Multiplicity for Recommendation"
(Wei et al., WSDM 2022, https://arxiv.org/abs/2202.08523)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

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
    _users: Tensor | None = field(default=None, init=False, repr=False)

    def users(self) -> Tensor:
        """The sorted distinct users of the triples and the contrastive users ``[m]``: the rows of
        :math:`e_u^k` the loss reads."""
        if self._users is None:
            self._users = torch.unique(torch.cat([t.user for t in self.triples] + [self.ssl_users]))
        return self._users


@dataclass(frozen=True)
class CMLOptions:
    """CML's hyperparameters (the matching ``RunConfig`` keys say what each does)."""

    dim: int = 16
    layers: int = 3
    dropout: float = 0.8
    reg: float = 1e-3
    beta: float = 0.005
    contrastive: bool = True
    ssl_group: int = 1024
    encoder: str = "cml"
    encoder_options: dict = field(default_factory=dict)
    """For ``encoder='cml'``: ``act`` and ``ego`` of :class:`BehaviorEncoder`."""


class CML(nn.Module):
    r"""CML from `"Contrastive Meta Learning with Behavior Multiplicity for Recommendation"
    <https://arxiv.org/abs/2202.08523>`_ (Wei et al., WSDM 2022): an encoder gives users and
    items embeddings :math:`e_u, e_i` and every user behavior-specific ones :math:`e_u^k`; the
    score is :math:`\hat x_{ui} = e_u \cdot e_i`. For a batch of :math:`B` target pairs, with
    BPR examples of every behavior :math:`k`, contrastive users :math:`S` and weights :math:`w`:

    .. math::
        L = \frac{1}{B}\Big(\frac{1}{K}\sum_k \sum w_{bpr}\,\ell_{bpr}
            + \mathrm{reg}\, L_{reg} + \beta \frac{1}{K}\sum_k \sum_{u \in S} w_{cl}\,\ell^k_{cl}(u)\Big)

    where :math:`\ell_{bpr} = -\log\sigma(\hat x_{ui^+} - \hat x_{ui^-})`,
    :math:`\ell^k_{cl}(u)` is the InfoNCE loss between :math:`e_u^K` (the target behavior's) and
    :math:`e_u^k` with the other users of :math:`S` as negatives (temperature :math:`d`), and
    :math:`L_{reg}` the squared norms of the target triples' embeddings. The weights come from
    :class:`~cml_cli.model.weighting.MetaWeightNet` (``weighting='meta'``), from it without
    gradients (``'frozen'``, the real step), or are all 1 (``'none'``, the w/o MCE ablation).
    ``encoder='cml'`` is the paper's encoder (:class:`~cml_cli.model.encoder.BehaviorEncoder`),
    ``'lightgcn'`` LightGCN's linear layers
    (:class:`~cml_cli.model.encoder.LightGCNBehaviorEncoder`), which the project's presets use
    because the paper's collapses to one ranking for everyone (``experiments/results/collapse.md``);
    the objective is the same. Deviations from the paper: the temperature, the shapes of the
    weight network and the normaliser :math:`B` follow the authors' code, which the paper leaves
    open; the positive pair is left out of InfoNCE's denominator.

    Args:
        n_users (int): Number of users :math:`|U|`.
        n_items (int): Number of items :math:`|I|`.
        n_behaviors (int): Number of behaviors :math:`K` (the target last).
        options (CMLOptions, optional): The hyperparameters.

    Shapes:
        - :meth:`encode` output: ``e_u [|U|, d]``, ``e_i [|I|, d]``, ``e_u^k [K, |U|, d]`` (for a
          batch, ``[K, m, d]``: its ``m`` users only)
        - :meth:`loss` output: a scalar and its parts as floats
    """

    def __init__(self, n_users: int, n_items: int, n_behaviors: int, options: CMLOptions | None = None):
        super().__init__()
        o = options or CMLOptions()
        self.encoder = (LightGCNBehaviorEncoder(n_users, n_items, o.dim, o.layers) if o.encoder == "lightgcn"
                        else BehaviorEncoder(n_users, n_items, o.dim, o.layers, **o.encoder_options))
        self.weigher = MetaWeightNet(o.dim, o.dropout)
        self.n_behaviors, self.dim = n_behaviors, o.dim
        self.reg, self.beta, self.contrastive, self.ssl_group = o.reg, o.beta, o.contrastive, o.ssl_group

    def encode(self, graph: BehaviorGraph, params: dict[str, Tensor] | None = None,
               batch: Batch | None = None) -> Embeddings:
        """``e_u [|U|, d]``, ``e_i [|I|, d]``, ``e_u^k [K, |U|, d]``, optionally with other encoder
        ``params``; for a ``batch``, with its ``held_out`` edges left out of ``graph`` and
        :math:`e_u^k` of :meth:`Batch.users` only, ``[K, m, d]`` (what :meth:`loss` reads)."""
        users = None
        if batch is not None:
            users = batch.users()
            if batch.held_out is not None:
                graph = graph.without(*batch.held_out)
        if params is None:
            return self.encoder(graph, users)
        return functional_call(self.encoder, params, (graph, users))

    def objective(self, graph: BehaviorGraph, batch: Batch, params: dict[str, Tensor] | None = None,
                  weighting: str = "meta") -> tuple[Tensor, dict[str, float]]:
        """The weighted loss and its parts (as floats, for logging): :meth:`encode` for the batch,
        then :meth:`loss`."""
        return self.loss(self.encode(graph, params, batch), batch, weighting)

    def loss(self, embeddings: Embeddings, batch: Batch,
             weighting: str = "meta") -> tuple[Tensor, dict[str, float]]:
        """The weighted loss of ``batch`` on the encoder's output ``embeddings`` (see the class)."""
        e_u, e_i, e_uk = embeddings  # e_uk: the rows of batch.users() (see encode)
        k_count = self.n_behaviors
        users = batch.users()
        table_u = e_u[users]  # the batch's users once: the meta network reads them per user
        slots = [torch.searchsorted(users, t.user) for t in batch.triples]
        items = e_i[torch.cat([torch.cat([t.pos, t.neg]) for t in batch.triples])]
        rows_i = items.split([2 * t.user.numel() for t in batch.triples])
        bpr_total = e_u.new_zeros(())
        for k, (t, ei, s) in enumerate(zip(batch.triples, rows_i, slots)):
            if t.user.numel() == 0:
                continue
            eu = table_u[s]
            pos, neg = ei.chunk(2)
            loss = bpr_loss((eu * pos).sum(-1), (eu * neg).sum(-1))
            w = self._weights("bpr", weighting, loss, table_u, e_uk[k], s)
            bpr_total = bpr_total + (w * loss).sum()
        bpr_total = bpr_total / k_count

        target_pos, target_neg = rows_i[-1].chunk(2)
        reg_total = l2_reg(table_u[slots[-1]], target_pos, target_neg)

        cl_total = e_u.new_zeros(())
        ssl = batch.ssl_users
        if self.contrastive and self.beta != 0 and ssl.numel() >= 2:
            spec = e_uk[:, torch.searchsorted(users, ssl)]
            groups = spec.tensor_split(-(-spec.shape[1] // self.ssl_group), dim=1)  # nearly equal, >= 2 users
            losses = torch.cat([info_nce(g[-1].expand_as(g), g, tau=float(self.dim)) for g in groups], dim=1)
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
        """Aggregated user and item embeddings for scoring: ``x(u, i) = e_u . e_i`` (no
        behavior-specific rows: scoring reads none)."""
        none = torch.empty(0, dtype=torch.long, device=graph.device)
        e_u, e_i, _ = self.encoder(graph, none)
        return e_u, e_i
