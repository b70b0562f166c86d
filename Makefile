# Two commands do all the set-up: `make run` and `make test`. Both (re)build .venv when it is
# missing or older than pyproject.toml / scripts/install.sh.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.egsw_rl-installed
PYTEST_ARGS ?=

.PHONY: run test venv clean-venv

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m egsw_rl.launch $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
