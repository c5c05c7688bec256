# Every target installs what it needs first (into .venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean check-minimal

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,plot,ray,tune,tensorboard,mlflow]'
	$(BIN)/python -m pip install -q atheris || echo "atheris did not install: its fuzz test will be skipped"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check cml_cli tests benchmarks experiments

# A first look, about a minute on 2 cores: CML against two of its ablations and two baselines
# on built-in synthetic data (300 users, 400 items), three seeds each. Progress goes to stderr
# (one line every few seconds), the table with its notes to stdout. The runs land in runs/demo
# and are reused by the next `make demo` (delete runs/demo to train them again). One torch
# thread: the fastest for data this small, and on a busy machine.
DEMO_VARIANTS := cml,w/o-clf,target-only,popularity,itemknn-merged

demo: $(STAMP)
	@echo "cml demo: full CML; w/o-clf = CML without its contrastive loss; target-only = CML on purchases only"
	@echo "(no view/fav/cart); popularity and item-kNN over all behaviors = simple baselines. Seeds 0, 1, 2."
	$(BIN)/cml preprocess --dataset synthetic --size tiny --name synthetic-demo --data-dir data
	OMP_NUM_THREADS=1 $(BIN)/cml ablate --dataset synthetic-demo --data-dir data --name demo --seeds 0,1,2 \
		--set epochs=100 --variants $(DEMO_VARIANTS)

# The CLI in an install with only the required dependencies and the dev extra (no Click,
# Ray, matplotlib or Optuna): usage errors, help text, runs, --json.
check-minimal:
	test -x .venv-min/bin/python || $(PY) -m venv .venv-min
	.venv-min/bin/python -c "import torch" 2>/dev/null || .venv-min/bin/python -m pip install -q torch==2.13.0
	.venv-min/bin/python -m pip install -q -e '.[dev]'
	.venv-min/bin/python -m pytest tests/test_cli.py

# --- benchmarks (benchmarks/*.py): each times a base revision and this working tree side by side,
# reports ratios and merges its cases into experiments/results/benchmarks.json.
# `make bench BASE=REV` picks the base; `make bench-train BENCH_TRAIN="--cases retailrocket --rounds 1"`
# runs a quick subset. A new benchmark script gets a bench-NAME target and joins BENCHES.
.PHONY: bench bench-train bench-scale bench-sota bench-threads
BASE ?= 90be1d7
BENCH_TRAIN ?=
BENCH_SCALE ?=
BENCHES := bench-train bench-scale bench-sota

bench: $(STAMP)  # one after the other, never side by side: they time the machine
	for b in $(BENCHES); do $(MAKE) --no-print-directory $$b || exit 1; done

bench-train: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py --base $(BASE) --record $(BENCH_TRAIN)

bench-scale: $(STAMP)
	$(BIN)/python benchmarks/bench_scale.py --base $(BASE) --record $(BENCH_SCALE)

# CascadingRank alone (training-free; its target is a third of the authors' 6 min 49 s, no base side).
bench-sota: $(STAMP)
	$(BIN)/python benchmarks/bench_sota.py --record

# Not part of `make bench`: three trainings at once against one, per thread setting (needs bench-train's data).
bench-threads: $(STAMP)
	$(BIN)/python benchmarks/bench_threads.py --base $(BASE) --record

clean:
	rm -rf $(VENV) .venv-min data runs .pytest_cache

# --- studies (experiments/README.md): each writes experiments/results/<study>.md --------------
.PHONY: studies study-baselines study-ablation study-cutoffs study-tuned study-peers study-ablation-backbone study-sota studies-smoke

study-baselines: $(STAMP)
	$(BIN)/python experiments/run_study.py baselines

study-ablation: $(STAMP)
	$(BIN)/python experiments/run_study.py ablation

study-cutoffs: $(STAMP)
	$(BIN)/python experiments/run_study.py cutoffs

study-tuned: $(STAMP)
	$(BIN)/python experiments/run_study.py tuned --jobs 2

study-peers: $(STAMP)
	$(BIN)/python experiments/run_study.py peers

study-ablation-backbone: $(STAMP)
	$(BIN)/python experiments/run_study.py ablation-backbone --jobs 2

study-sota: $(STAMP)
	$(BIN)/python experiments/run_study.py sota

studies: study-baselines study-ablation study-cutoffs study-tuned study-peers study-ablation-backbone study-sota default-preset

# The same pipeline on tiny synthetic data, one epoch (a few minutes): pages in runs/smoke/results/.
studies-smoke: $(STAMP)
	$(BIN)/python experiments/run_study.py --smoke baselines ablation cutoffs

# Issue 21: the `default` preset chosen leave-one-dataset-out (experiments/default_preset.py):
# every candidate CML configuration on every dataset, one seed, at most 60 epochs with early
# stopping; writes experiments/results/default-preset.md and .json. Resumable: rerun to continue.
# Quick check on synthetic data: `make default-preset DEFAULT_PRESET_DATASETS=synthetic
# DEFAULT_PRESET="--candidates current,d64-l2 --epochs 2 --out /tmp/dp"`.
DEFAULT_PRESET_DATASETS ?= retailrocket,tmall-mbcgcn,tmall,ijcai,synthetic,synthetic-1M
DEFAULT_PRESET ?=
.PHONY: default-preset
default-preset: $(STAMP)
	$(BIN)/python experiments/default_preset.py --datasets $(DEFAULT_PRESET_DATASETS) --data-dir data \
		--runs-dir runs/default-preset --out experiments/results $(DEFAULT_PRESET)
