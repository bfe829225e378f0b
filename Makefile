# Two entry points for a new user (README): `make repro` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export DVC_STUDIO_OFFLINE := 1

.PHONY: setup repro test test-fast test-gpu clean-notebooks

setup: $(VENV)/.installed

# torch first and pinned (timm needs torchvision; torchvision 0.29.1 pins torch 2.14.1), then the rest.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $@

repro: setup
	. $(VENV)/bin/activate && dvc repro

test: setup
	. $(VENV)/bin/activate && pytest -m "not gpu"

test-fast: setup
	. $(VENV)/bin/activate && pytest

test-gpu: setup
	. $(VENV)/bin/activate && pytest -m gpu

clean-notebooks: setup
	$(PY) -m cftlib.nbrun --strip notebooks/*.ipynb
