"""CML's trainer: vectorised batch sampling and the three-step meta update of Wei et al.
(WSDM 2022, https://arxiv.org/abs/2202.08523), Section 3.3 and Algorithm 1."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import clip_grad_norm_
from torch.optim.lr_scheduler import CyclicLR

from cml_cli.config import RunConfig
from cml_cli.data.dataset import MultiBehaviorDataset
from cml_cli.data.sampling import TripleSampler
from cml_cli.errors import NonFiniteLoss
from cml_cli.evaluate import EmbeddingScorer
from cml_cli.model.cml import CML, Batch, CMLOptions, Embeddings, Triples
from cml_cli.model.propagation import BehaviorGraph

ADAM_EPS = 1e-8


def cyclic(optimizer: torch.optim.Optimizer, base: float, peak: float, up: int, down: int) -> CyclicLR:
    """Triangular cyclic learning rate stepped once per epoch, without momentum cycling."""
    return CyclicLR(optimizer, base_lr=base, max_lr=peak, step_size_up=up, step_size_down=down,
                    mode="triangular", cycle_momentum=False)


class CMLSampler:
    """Draws CML's mini-batches and meta batches with array operations only."""

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.batch_size, self.lr_factor = cfg.batching(sum(len(ds.train[b]) for b in ds.behaviors))
        self.triples = TripleSampler(ds, self.batch_size, list(range(len(ds.behaviors))), cfg.aux_samples)
        self.index = [self.triples.index[k] for k in range(len(ds.behaviors))]
        self.meta_users = ds.meta_users
        self.n_users, self.n_items = ds.n_users, ds.n_items
        self.hold_out_everywhere = not any(index.contains(ds.test.user, ds.test.item).any()
                                           for index in self.index[:-1])

    def epoch(self, rng: np.random.Generator) -> list[np.ndarray]:
        """A shuffled partition of the target training pairs into batches."""
        return self.triples.epoch(rng)

    def _tensor(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device)

    def _ssl_users(self, users: np.ndarray, rng: np.random.Generator, count: int | None = None) -> Tensor:
        unique = np.unique(users)
        size = count if count is not None else max(2, int(round(self.cfg.ssl_ratio * len(unique))))
        return self._tensor(rng.choice(unique, size=min(size, len(unique)), replace=False))

    def batch(self, rows: np.ndarray, rng: np.random.Generator) -> Batch:
        """BPR triples for every behavior from the target pairs ``rows``: the target pairs with one
        negative each, and ``aux_samples`` positives (with negatives) of every other behavior for
        each of their users."""
        triples = [Triples(*map(self._tensor, t)) for t in self.triples.triples(rows, rng)]
        return Batch(triples, self._ssl_users(self.triples.user[rows], rng), len(rows),
                     self._held_out(triples, list(range(len(triples)))))

    def _held_out(self, triples: list[Triples], sources: list[int]) -> tuple[Tensor, Tensor] | None:
        """With ``hold_out=True``: the batch's positive pairs as block coordinates of the edges
        to leave out, so the model scores a positive without seeing its own edge, as it must
        at test time. Triple k's positives (drawn from behavior ``sources[k]``) leave that
        behavior; they leave every other behavior that has them too when the dataset's test
        items never occur in their users' auxiliary behaviors (as in the CML files), and stay
        there when they do (as in the MB-CGCN files, where the test item was often viewed)."""
        if not self.cfg.hold_out:
            return None
        keys = []
        for k, t in enumerate(triples):
            user, item = t.user.cpu().numpy(), t.pos.cpu().numpy()
            targets = range(len(self.index)) if self.hold_out_everywhere else [sources[k]]
            for b in targets:
                has = self.index[b].contains(user, item)
                keys.append(user[has] * self.n_items + item[has] + b * self.n_users * self.n_items)
        keys = np.unique(np.concatenate(keys))
        block, rest = keys // (self.n_users * self.n_items), keys % (self.n_users * self.n_items)
        return (self._tensor(rest // self.n_items + block * self.n_users),
                self._tensor(rest % self.n_items + block * self.n_items))

    def meta_batch(self, pointer: int, rng: np.random.Generator) -> tuple[Batch, int]:
        """The next ``meta_batch`` meta users (cycling) with up to ``samp_num`` pairs each, per
        behavior; ``meta_sampling='reference'`` samples the target behavior for every k."""
        count = min(self.cfg.meta_batch, len(self.meta_users))
        take = (pointer + np.arange(count)) % len(self.meta_users)
        users = self.meta_users[take]
        triples = []
        for index in self.index:
            source = self.index[-1] if self.cfg.meta_sampling == "reference" else index
            u, pos = source.sample_per_user(users, self.cfg.samp_num, rng)
            neg = source.sample_negative(u, rng)
            triples.append(Triples(self._tensor(u), self._tensor(pos), self._tensor(neg)))
        size = max(int(triples[-1].user.numel()), 1)
        ssl = self._ssl_users(users, rng, count=len(np.unique(users)))
        last = len(self.index) - 1
        sources = [last] * len(triples) if self.cfg.meta_sampling == "reference" else list(range(len(triples)))
        return Batch(triples, ssl, size, self._held_out(triples, sources)), int(
            (pointer + count) % len(self.meta_users))


class CMLTrainer:
    """Owns the model, optimizers and schedulers (the :class:`~cml_cli.train.trainer.Trainer`
    contract): :meth:`train_batch` is one mini-batch.

    Per mini-batch, on every ``meta_every``-th batch (``meta=True``):

    1. virtual step: :math:`\\Theta'_G` = one fresh-AdamW step of a copy of :math:`\\Theta_G`
       (``first-order``; :math:`\\Theta_M` also takes a step) or
       :math:`\\Theta'_G = \\Theta_G - \\alpha \\nabla L` kept differentiable (``second-order``);
    2. meta step: :math:`0.5\\,L_{meta}(\\Theta'_G, \\Theta_M)` updates :math:`\\Theta_M` only;
    3. real step: :math:`L(\\Theta_G)` with :math:`\\Theta_M` frozen updates :math:`\\Theta_G`.

    The other batches take the real step only. Steps 1 and 3 read the encoder at the same
    :math:`\\Theta_G`, so one forward pass serves both (each backpropagates its own loss).
    """

    trainable = True

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        norm = "symmetric" if cfg.encoder == "lightgcn" else cfg.adj
        self.graph = BehaviorGraph([ds.train[b].user for b in ds.behaviors], [ds.train[b].item for b in ds.behaviors],
                                   ds.n_users, ds.n_items, norm=norm, device=device)
        options = CMLOptions(cfg.dim, cfg.layers, cfg.meta_dropout, cfg.reg, cfg.beta, cfg.contrastive, cfg.ssl_group,
                             cfg.encoder, {"act": cfg.act, "ego": cfg.ego} if cfg.encoder == "cml" else {})
        self.model = CML(ds.n_users, ds.n_items, len(ds.behaviors), options).to(device)
        self.sampler = CMLSampler(ds, cfg, device)
        enc, weigher = self.model.encoder.parameters(), self.model.weigher.parameters()
        lr, max_lr = cfg.lr * self.sampler.lr_factor, cfg.max_lr * self.sampler.lr_factor
        self.opt = torch.optim.AdamW(enc, lr=lr, weight_decay=cfg.wd, fused=True)  # one kernel per table
        if cfg.meta_optimizer == "sgd":
            self.meta_opt = torch.optim.SGD(weigher, lr=cfg.meta_lr, momentum=cfg.meta_momentum, nesterov=True,
                                            weight_decay=cfg.meta_wd)
        else:
            self.meta_opt = torch.optim.AdamW(weigher, lr=cfg.meta_lr, weight_decay=cfg.meta_wd)
        self.sched = cyclic(self.opt, lr, max_lr, cfg.cycle_up, cfg.cycle_down)
        self.meta_sched = cyclic(self.meta_opt, cfg.meta_lr, cfg.meta_max_lr, cfg.meta_cycle_up, cfg.meta_cycle_down)
        self.meta_pointer = 0
        self.step = 0

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return self.sampler.epoch(rng)

    def train_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        batch = self.sampler.batch(rows, rng)
        meta_now = self.cfg.meta and self.step % self.cfg.meta_every == 0
        self.step += 1
        # The virtual step and the real step see the same encoder parameters: one forward pass
        # serves both (the meta network, which differs between them, runs on its output).
        embeddings = self.model.encode(self.graph, batch=batch)
        if meta_now:
            meta_batch, self.meta_pointer = self.sampler.meta_batch(self.meta_pointer, rng)
            if self.cfg.meta_grad == "second-order":
                self._second_order(batch, meta_batch, embeddings)
            else:
                self._first_order(batch, meta_batch, embeddings)
        return self._real_step(batch, embeddings)

    def end_epoch(self) -> None:
        self.sched.step()
        self.meta_sched.step()

    def _meta_params(self) -> list[Tensor]:
        return list(self.model.weigher.parameters())

    def _step_meta(self, grads: tuple[Tensor | None, ...]) -> None:
        params = self._meta_params()
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.detach()
        clip_grad_norm_(params, self.cfg.clip)
        self.meta_opt.step()
        self.meta_opt.zero_grad(set_to_none=True)

    def _encoded(self, batch: Batch, embeddings: Embeddings | None) -> Embeddings:
        return embeddings if embeddings is not None else self.model.encode(self.graph, batch=batch)

    def _first_order(self, batch: Batch, meta_batch: Batch, embeddings: Embeddings | None = None) -> None:
        names, live = zip(*self.model.encoder.named_parameters())
        loss, _ = self.model.loss(self._encoded(batch, embeddings), batch, weighting="meta")
        self._check(loss, "virtual step")
        meta_params = self._meta_params()
        grads = torch.autograd.grad(loss, list(live) + meta_params, allow_unused=True, retain_graph=True)
        g_enc = [torch.zeros_like(p) if g is None else g for p, g in zip(live, grads[:len(live)])]
        scale = _clip_scale(g_enc, self.cfg.clip)
        lr, wd = self.opt.param_groups[0]["lr"], self.opt.param_groups[0]["weight_decay"]
        with torch.no_grad():
            # a fresh AdamW's first step on the clipped gradient c g: p (1 - lr wd) - lr c g / (|c g| + eps),
            # written as lr g / (|g| + eps / c) in three passes over each table
            virtual = {n: (p * (1 - lr * wd)).addcdiv_(g, g.abs().add_(ADAM_EPS / scale), value=-lr)
                       for n, p, g in zip(names, live, g_enc)}
        self._step_meta(grads[len(live):])
        meta_loss, _ = self.model.objective(self.graph, meta_batch, virtual, weighting="meta")
        self._check(meta_loss, "meta step")
        self._step_meta(torch.autograd.grad(0.5 * meta_loss, meta_params, allow_unused=True))

    def _second_order(self, batch: Batch, meta_batch: Batch, embeddings: Embeddings | None = None) -> None:
        names, live = zip(*self.model.encoder.named_parameters())
        loss, _ = self.model.loss(self._encoded(batch, embeddings), batch, weighting="meta")
        self._check(loss, "virtual step")
        grads = torch.autograd.grad(loss, live, create_graph=True, allow_unused=True)
        alpha = self.cfg.virtual_lr or self.opt.param_groups[0]["lr"]
        virtual = {n: p - alpha * (torch.zeros_like(p) if g is None else g) for n, p, g in zip(names, live, grads)}
        meta_loss, _ = self.model.objective(self.graph, meta_batch, virtual, weighting="meta")
        self._check(meta_loss, "meta step")
        self._step_meta(torch.autograd.grad(0.5 * meta_loss, self._meta_params(), allow_unused=True, retain_graph=True))

    def _real_step(self, batch: Batch, embeddings: Embeddings | None = None) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        weighting = "frozen" if self.cfg.meta else "none"
        loss, parts = self.model.loss(self._encoded(batch, embeddings), batch, weighting=weighting)
        self._check(loss, "real step")
        loss.backward()
        clip_grad_norm_(self.model.encoder.parameters(), self.cfg.clip)
        self.opt.step()
        return parts

    @staticmethod
    def _check(loss: Tensor, where: str) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {float(loss.detach())} in the {where}")

    def scorer(self) -> EmbeddingScorer:
        self.model.eval()
        try:
            return EmbeddingScorer(*self.model.embeddings(self.graph))
        finally:
            self.model.train()

    def model_state(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_model_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "opt": self.opt.state_dict(), "meta_opt": self.meta_opt.state_dict(),
            "sched": self.sched.state_dict(), "meta_sched": self.meta_sched.state_dict(),
            "meta_pointer": self.meta_pointer, "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.meta_opt.load_state_dict(state["meta_opt"])
        self.sched.load_state_dict(state["sched"])
        self.meta_sched.load_state_dict(state["meta_sched"])
        self.meta_pointer = int(state["meta_pointer"])
        self.step = int(state.get("step", 0))


def _clip_scale(grads: list[Tensor], max_norm: float) -> float:
    """The factor ``clip_grad_norm_`` would apply to ``grads``."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return float(torch.clamp(max_norm / (total + 1e-6), max=1.0))

