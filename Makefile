# Two entry points for a new user (README): `make repro` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
export DVC_NO_ANALYTICS := 1
export DVC_STUDIO_OFFLINE := 1

.PHONY: setup repro profile notebooks pretrain preflight test test-fast test-gpu clean-notebooks

setup: $(VENV)/.installed

# torch first and pinned (timm needs torchvision; torchvision 0.29.1 pins torch 2.14.1), then the rest.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# `make repro PROFILE=paper` switches the profile first (`make profile`), rebuilds the world's pre-trained
# checkpoints when the committed ones are another profile's (the smoke profile's take seconds), checks that
# everything the profile needs is on disk (cftlib.stages.preflight), then runs the pipeline. DVC deletes a stage's
# outputs before running it: when a stage fails, the last line says how to get the committed ones back.
repro: setup
ifdef PROFILE
	$(MAKE) --no-print-directory profile PROFILE=$(PROFILE)
endif
	@$(PY) -m cftlib.stages.preflight --pretrained; rc=$$?; \
		if [ $$rc = 3 ]; then echo "make repro: rebuilding models/pretrain for this profile (make pretrain)"; \
		$(MAKE) --no-print-directory pretrain || exit 1; elif [ $$rc != 0 ]; then exit $$rc; fi
	$(PY) -m cftlib.stages.preflight
	@. $(VENV)/bin/activate && dvc repro || { echo "make repro: a stage failed (its log above). DVC deleted that \
	stage's outputs before running it; the committed ones come back with \`make profile PROFILE=default\` (which \
	also restores params.yaml) or \`git checkout -- $(OUTPUTS) && dvc checkout\`" >&2; exit 1; }

# The committed results are the default profile's (profiles/default.yaml = params.yaml, a test checks it).
# `make profile PROFILE=<name>` puts profiles/<name>.yaml in params.yaml, refusing when params.yaml holds edits
# that are in no profile; PROFILE=default also restores the committed outputs (git, then the DVC cache), so that
# git status is clean again after a run of another profile.
OUTPUTS := dvc.lock executed metrics plots figures reports models/pretrain
profile:
	@test -n "$(PROFILE)" -a -f "profiles/$(PROFILE).yaml" || \
		{ echo "make profile: PROFILE=<name> of profiles/<name>.yaml: $$(cd profiles && ls *.yaml | sed 's/.yaml//' | tr '\n' ' ')"; exit 1; }
	@for f in profiles/*.yaml; do cmp -s "$$f" params.yaml && exit 0; done; \
		echo "make profile: params.yaml holds edits that are in no profile; save them (cp params.yaml profiles/<name>.yaml) or drop them (git checkout params.yaml)"; exit 1
	cp profiles/$(PROFILE).yaml params.yaml
ifeq ($(PROFILE),default)
	@tracked="$$(git ls-files -- $(OUTPUTS))"; if [ -n "$$tracked" ]; then git checkout -- $$tracked; fi
	git clean -fdq -- $(OUTPUTS)
	@if [ -x $(VENV)/bin/dvc ]; then $(VENV)/bin/dvc checkout -q || echo "make profile: some DVC outputs are not in this cache; \`make repro\` rebuilds them"; fi
endif

# A student's path: Jupyter in the project's environment, the stage outputs the notebooks read (from the DVC
# cache, else rebuilt by `dvc repro`), then JupyterLab on notebooks/.
notebooks: setup
	$(PY) -m pip install -q -e ".[test,interactive]"
	. $(VENV)/bin/activate && (dvc checkout -q 2>/dev/null || dvc repro)
	. $(VENV)/bin/activate && jupyter lab notebooks/

# The world's pretrained checkpoints (models/pretrain, committed): the stage is frozen so that `dvc repro` uses
# them as released weights; this rebuilds them (README: time) and freezes the stage again.
# (The stage's cmd, run directly: `dvc unfreeze`/`freeze` would rewrite dvc.yaml; `dvc commit` records the result.)
pretrain: setup
	. $(VENV)/bin/activate && python -m cftlib.stages.nbrun notebooks/00_pretrain.ipynb executed/00_pretrain.ipynb \
		-p progress false && dvc commit -f pretrain

preflight: setup
	$(PY) -m cftlib.stages.preflight

# Tests never reach the hub (every hub call would otherwise hang for minutes without network).
test test-fast test-gpu: export HF_HUB_OFFLINE := 1
test test-fast test-gpu: export TRANSFORMERS_OFFLINE := 1

test: setup
	. $(VENV)/bin/activate && lint-imports && ruff check && pytest -m "not gpu"

test-fast: setup
	. $(VENV)/bin/activate && pytest

test-gpu: setup
	. $(VENV)/bin/activate && pytest -m gpu

clean-notebooks: setup
	$(PY) -m cftlib.stages.nbrun --strip notebooks/*.ipynb
