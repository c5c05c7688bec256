"""A TPE sampler whose draws for trial ``n`` depend on ``seed + n`` only.

Optuna's seeded ``TPESampler`` keeps one random stream per process: two workers, or a
study continued by a second invocation, start that stream again and draw the same
parameters (the first trials of TPE are random). Re-creating the sampler for every trial
with the seed ``seed + trial.number`` makes each trial's draws depend on its number and on
the trials finished before it, whatever the number of workers or invocations. TPE keeps no
state of its own between trials (it reads the finished trials from the study), so nothing
else changes.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


class TrialSeededTPESampler(BaseSampler):
    """``TPESampler(seed=(seed + n) mod 2**32)`` for trial ``n``."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._inner = TPESampler(seed=seed)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._inner = TPESampler(seed=(self._seed + trial.number) % 2**32)  # numpy seeds are 32-bit
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: list[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
