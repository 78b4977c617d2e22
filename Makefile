# Two commands for a new user; each sets up .venv on first use (tools/setup_env.sh, about
# 14 minutes on a fresh 2-core machine, most of it compiling mmcv once; seconds afterwards).
#   make demo   pretrain a small RILS on the generated demo data and evaluate it (CPU, minutes)
#   make compare  train and evaluate CLIP, MAE, MAE+CLIP, RILS and the baselines on the demo
#               data, two seeds each (CPU, under an hour)
#   make test   the whole test suite
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env demo compare test clean-env

env:
	@bash tools/setup_env.sh

demo: env
	$(PYTHON) tools/demo.py

compare: env
	$(PYTHON) tools/compare.py

test: env
	$(PYTHON) -m pytest $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV)
