# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   create .venv (when missing or stale), then train the tiny model on the bundled corpus
#   make test   create .venv (when missing or stale), then run the test suite
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test venv

venv: $(STAMP)

# Stale when requirements.txt is newer than the last install.
$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m lcx.train --config configs/pretrain.py:tiny --workdir $(DEMO_DIR)

test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 WANDB_MODE=disabled \
	  $(VENV)/bin/python -m pytest -q tests
