# One command each: `make demo` sets everything up and trains; `make test` sets everything up and tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Where a machine keeps the CPU wheel of torch 2.13.0 on disk, use it; otherwise pip's configured index
# (point it at a CPU build of torch: an unpinned CUDA build is several GB).
TORCH_SRC := $(if $(wildcard /opt/wheels/torch-2.13.0*),--find-links /opt/wheels,)
JOBS ?= 2

.PHONY: install browser demo test test-slow test-all clean

$(VENV)/.installed: pyproject.toml tests/requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_SRC) torch==2.13.0
	$(PIP) install -q -e '.[test,onnx]'
	# Test-only references. timm goes last and without its dependencies: it asks for torchvision,
	# which has no CPU build here; tests/timm_shim stands in for the few names it imports.
	$(PIP) install -q $$(grep -v '^#' tests/requirements.txt | grep -v -- '--no-deps')
	$(PIP) install -q --no-deps $$(grep -v '^#' tests/requirements.txt | grep -- '--no-deps' | sed 's/ *--no-deps.*//')
	touch $@

install: $(VENV)/.installed

# Headless Chromium for the explain report's browser test. Best effort: without it that test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the browser test will be skipped"; }

demo: install
	$(VENV)/bin/vitkit train --name demo --epochs 120 --batch-size 128 --lr 4e-3 --overwrite
	$(VENV)/bin/vitkit data export digits runs/demo/held_out --split val --count 6 --seed 0
	$(VENV)/bin/vitkit predict runs/demo/best.safetensors runs/demo/held_out/*/*.png --top-k 3

test: install browser
	$(PY) -m pytest -n $(JOBS) -q

test-slow: install
	$(PY) -m pytest -n $(JOBS) -q -m slow

test-all: install
	$(PY) -m pytest -n $(JOBS) -q -m ''

clean:
	rm -rf $(VENV) runs .pytest_cache
