# make demo / make test create .venv on first use, install autoprune into it, and run.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint typecheck gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -c "import torch, torchvision, torch_pruning; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m autoprune.demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check autoprune envs search tests
	$(VENV)/bin/ruff format --check autoprune envs search tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy autoprune

# needs CUDA: LeNet-5 demo + resnet18 fake-data search in bf16, budgets re-checked -> results/gpu-check/
gpu-check: $(STAMP)
	PY=$(PY) scripts/gpu-check.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
