# `make test` and `make demo` work on a fresh machine: they create/refresh .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: venv lint test test-fast demo demo-hubmap-kidney demo-hubmap-vasculature bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[test]'
	$(PIP) --no-deps nnunet==1.7.1
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q tests

test-fast: lint
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(VENV)/bin/nnunet-vasculature demo sennet -o $(DEMO_OUT)

demo-hubmap-kidney: $(STAMP)
	$(VENV)/bin/nnunet-vasculature demo hubmap-kidney -o demo-hubmap-kidney

demo-hubmap-vasculature: $(STAMP)
	$(VENV)/bin/nnunet-vasculature demo hubmap-vasculature -o demo-hubmap-vasculature

bench: $(STAMP)
	$(PY) benchmarks/metric.py
	$(PY) benchmarks/convert.py
	$(PY) benchmarks/predict_memory.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) demo-hubmap-kidney demo-hubmap-vasculature build *.egg-info
