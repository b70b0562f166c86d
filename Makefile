# Two commands do all the set-up: `make run` and `make test`. Both (re)build .venv when it is
# missing or older than pyproject.toml / scripts/install.sh.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.egsw_rl-installed
PYTEST_ARGS ?=

.PHONY: run test lint format venv clean-venv

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m egsw_rl.launch $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff: lint (pycodestyle, pyflakes, import order, bugbear, pyupgrade) and the formatter's check;
# `make format` rewrites the files. The rules are in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-venv:
	rm -rf $(VENV)
