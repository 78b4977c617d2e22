# Two commands for a new user; each sets up .venv on first use (tools/setup_env.sh, about
# 8-12 minutes on a fresh machine, seconds afterwards).
#   make demo   pretrain a small RILS on the generated demo data and evaluate it (CPU, minutes)
#   make test   the whole test suite
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env demo test clean-env

env:
	@bash tools/setup_env.sh

demo: env
	$(PYTHON) tools/demo.py

test: env
	$(PYTHON) -m pytest $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV)
