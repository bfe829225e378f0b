# Two entry points for a new user (README): `make repro` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
export DVC_NO_ANALYTICS := 1
export DVC_STUDIO_OFFLINE := 1

.PHONY: setup repro pretrain preflight test test-fast test-gpu clean-notebooks

setup: $(VENV)/.installed

# torch first and pinned (timm needs torchvision; torchvision 0.29.1 pins torch 2.14.1), then the rest.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# `make repro PROFILE=paper` switches the profile first (profiles/<name>.yaml over params.yaml), checks that
# everything the profile needs is on disk (cftlib.preflight), then runs the pipeline.
repro: setup
ifdef PROFILE
	cp profiles/$(PROFILE).yaml params.yaml
endif
	$(PY) -m cftlib.preflight
	. $(VENV)/bin/activate && dvc repro

# The world's pretrained checkpoints (models/pretrain, committed): the stage is frozen so that `dvc repro` uses
# them as released weights; this rebuilds them (README: time) and freezes the stage again.
# (The stage's cmd, run directly: `dvc unfreeze`/`freeze` would rewrite dvc.yaml; `dvc commit` records the result.)
pretrain: setup
	. $(VENV)/bin/activate && python -m cftlib.nbrun notebooks/00_pretrain.ipynb executed/00_pretrain.ipynb \
		-p progress false && dvc commit -f pretrain

preflight: setup
	$(PY) -m cftlib.preflight

# Tests never reach the hub (every hub call would otherwise hang for minutes without network).
test test-fast test-gpu: export HF_HUB_OFFLINE := 1
test test-fast test-gpu: export TRANSFORMERS_OFFLINE := 1

test: setup
	. $(VENV)/bin/activate && pytest -m "not gpu"

test-fast: setup
	. $(VENV)/bin/activate && pytest

test-gpu: setup
	. $(VENV)/bin/activate && pytest -m gpu

clean-notebooks: setup
	$(PY) -m cftlib.nbrun --strip notebooks/*.ipynb
