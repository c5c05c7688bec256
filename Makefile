# Every target installs what it needs first (into .venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean check-minimal

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

# A first look: CML against one of its ablations and two simple baselines on built-in data.
demo: $(STAMP)
	$(BIN)/cml preprocess --dataset synthetic --size small --data-dir data
	$(BIN)/cml ablate --dataset synthetic --data-dir data --name demo --set epochs=10 \
		--variants cml,w/o-clf,popularity,itemknn-merged

# The CLI in an install with only the required dependencies and the dev extra (no Click,
# Ray, matplotlib or Optuna): usage errors, help text, runs, --json.
check-minimal:
	test -x .venv-min/bin/python || $(PY) -m venv .venv-min
	.venv-min/bin/python -c "import torch" 2>/dev/null || .venv-min/bin/python -m pip install -q torch==2.13.0
	.venv-min/bin/python -m pip install -q -e '.[dev]'
	.venv-min/bin/python -m pytest -q tests/test_cli.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py --record

clean:
	rm -rf $(VENV) .venv-min data runs .pytest_cache

# --- studies (experiments/README.md): each writes experiments/results/<study>.md --------------
.PHONY: studies study-baselines study-ablation study-cutoffs study-tuned study-peers studies-smoke

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

studies: study-baselines study-ablation study-cutoffs study-tuned study-peers

# The same pipeline on tiny synthetic data, one epoch (a few minutes): pages in runs/smoke/results/.
studies-smoke: $(STAMP)
	$(BIN)/python experiments/run_study.py --smoke baselines ablation cutoffs
