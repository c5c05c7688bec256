r"""The collapse check: at the end of a run, does the model rank (nearly) the same list for every
user, or do worse than popularity?

A run is *collapsed* when, on the test split under full ranking (:func:`cml_cli.evaluate.evaluate_full`),

* its HR@10 is below popularity's on the same split (:class:`~cml_cli.model.baselines.PopularityScorer`,
  the ``popularity`` model, ranked by the same code), or
* personalization@10 :math:`< 0.5` (:data:`PERSONALIZATION_FLOOR`): two users' top-10 lists share
  more than half their items on average, or
* coverage@10 :math:`< 0.01 \cdot \min(1, 10\,|U_{test}| / |I|)` (:data:`COVERAGE_FLOOR` times the
  largest coverage the test users' lists can reach).

The coverage floor is measured (experiments/results/tuned.md and collapse.md, test split, seed 0
or mean of three seeds): item-kNN reaches coverage@10 0.33-0.78 on the four shared datasets and
CML at the tuned presets (LightGCN backbone) 0.11-0.41, while CML with the paper's encoder, which
ranks nearly one list for everyone, stays at 0.0014-0.0078 and popularity at 0.0003-0.0010. The
weakest model that is not collapsed, LightGCN on the merged behaviors, has 0.014-0.12 (with
personalization@10 0.52-0.84 and full HR@10 above popularity's). A floor of 0.01 lies between the two groups: 30 times
below item-kNN's lowest, above every collapsed run measured. Scaled by the attainable coverage,
it also holds where the test users are too few to fill :math:`|I|` top-10 slots.

The check is skipped for the ``popularity`` model itself and for runs without a full-ranking test
result (tuning trials). This module imports torch only when a check runs.
"""

from __future__ import annotations

from typing import Any

K = 10
PERSONALIZATION_FLOOR = 0.5
COVERAGE_FLOOR = 0.01


def coverage_floor(n_users: int, n_items: int) -> float:
    """:data:`COVERAGE_FLOOR` times the largest coverage@10 that ``n_users`` top-10 lists over
    ``n_items`` items can reach."""
    return COVERAGE_FLOOR * min(1.0, K * n_users / max(n_items, 1))


def collapse_reasons(full: dict[str, float], popularity_hr: float, min_coverage: float = COVERAGE_FLOOR) -> list[str]:
    """The rules a run's full-ranking test metrics ``full`` (keys ``hr@10``,
    ``personalization@10``, ``coverage@10``) break, each as a short phrase with its numbers;
    empty when the run is not collapsed."""
    hr, personal, cover = full[f"hr@{K}"], full[f"personalization@{K}"], full[f"coverage@{K}"]
    reasons = []
    if hr < popularity_hr:
        reasons.append(f"full HR@{K} {hr:.4f} < popularity's {popularity_hr:.4f}")
    if personal < PERSONALIZATION_FLOOR:
        reasons.append(f"personalization@{K} {personal:.3f} < {PERSONALIZATION_FLOOR}")
    if cover < min_coverage:
        reasons.append(f"coverage@{K} {cover:.4f} < {min_coverage:.4g}")
    return reasons


def collapse_record(full: dict[str, float], popularity_hr: float, min_coverage: float = COVERAGE_FLOOR) -> dict:
    """What ``metrics.json`` records under ``"collapse"``."""
    reasons = collapse_reasons(full, popularity_hr, min_coverage)
    return {"collapsed": bool(reasons), "reasons": reasons, f"popularity_full_hr@{K}": popularity_hr,
            "thresholds": {f"personalization@{K}": PERSONALIZATION_FLOOR, f"coverage@{K}": min_coverage}}


def popularity_full_hr(ds, device) -> float:
    """Full-ranking test HR@10 of the ``popularity`` model on ``ds`` (its own scorer and
    :func:`~cml_cli.evaluate.evaluate_full`: the number its run would report)."""
    from cml_cli.config import RunConfig
    from cml_cli.evaluate import evaluate_full
    from cml_cli.train.baseline_trainers import PopularityTrainer

    scorer = PopularityTrainer(ds, RunConfig(model="popularity"), device).scorer()
    return evaluate_full(scorer, ds, "test", [K], device=device)[f"hr@{K}"]


def check_run(ds, model: str, result: dict[str, Any], device) -> dict[str, Any]:
    """``{"collapse": record}`` for a finished run's ``result`` on dataset ``ds``, or ``{}``
    where the check does not apply (the popularity model, no full-ranking test result)."""
    full = (result.get("test") or {}).get("full")
    if model == "popularity" or not full or f"hr@{K}" not in full or len(ds.test) == 0:
        return {}
    return {"collapse": collapse_record(full, popularity_full_hr(ds, device), coverage_floor(len(ds.test), ds.n_items))}


def warning_line(result: dict[str, Any]) -> str | None:
    """The one line a collapsed run prints (None when it is not collapsed)."""
    record = result.get("collapse") or {}
    if not record.get("collapsed"):
        return None
    model = result.get("model", "cml")
    tune = f"cml tune --dataset {result.get('dataset', 'NAME')}" + ("" if model == "cml" else f" --model {model}")
    alike = any(not r.startswith("full HR") for r in record["reasons"])
    what = "ranks nearly the same items for every user" if alike else "ranks below popularity"
    return (f"{result.get('run_dir', 'this run')} {what} (test, full ranking: {'; '.join(record['reasons'])}); "
            f"its settings do not suit this dataset: try `{tune}`")


def table_note(runs: list[dict[str, Any]]) -> list[str]:
    """A note for a comparison table listing its collapsed runs (``runs``: rows with ``variant``,
    ``seed`` and ``collapse``, the reasons text of :func:`cml_cli.report.tables.collect`)."""
    flagged = [f"{r['variant']} seed {r['seed']} ({r['collapse']})" for r in runs if r.get("collapse")]
    if not flagged:
        return []
    return [f"collapsed (nearly the same top-10 list for every user, or below popularity; `cml tune` the model on "
            f"this dataset): {', '.join(flagged)}"]
