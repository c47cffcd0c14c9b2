# Two entry points, each setting up its own virtualenv first:
#   make run   -> trains a PPO weighting agent on the embedded benchmark (python -m agents.train --algo ppo)
#   make test  -> the test suite (CPU, < 10 minutes on 2 cores)
# make docs builds the documentation site (mkdocs, warnings are errors) into site/.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup run demo test compare bench docs clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,docs]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m agents.train --algo ppo $(ARGS)

demo: setup
	$(PY) -m mtkd_env $(ARGS)

test: setup
	WANDB_MODE=disabled $(PY) -m pytest -q $(ARGS)

compare: setup
	$(PY) -m baselines.compare $(ARGS)

bench: setup
	$(PY) -m benchmarks.step_overhead $(ARGS)

docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict $(ARGS)

clean:
	rm -rf $(VENV) runs wandb .pytest_cache site
