# `make test` and `make demo` work on a fresh machine: they create/refresh .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: venv lint test test-fast test-integration test-e2e demo demo-hubmap-kidney demo-hubmap-vasculature bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[test]'
	$(PIP) --no-deps nnunet==1.7.1
	# the offline-install tests' wheel folder: this environment's pins as wheels for this Python and platform,
	# built once by `bundle` itself (the tests then install from it with pip cut off from every index)
	$(PY) -m pip freeze --exclude-editable | grep -v '^nnunet==' > $(VENV)/freeze.txt
	$(PY) -m nnunet_vasculature.cli bundle -o $(VENV)/wheelhouse --overwrite -c $(VENV)/freeze.txt \
	  --python-version $$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
	  --platform $$($(PY) -c 'import platform as p; a, b = p.libc_ver()[1].split(".")[:2]; print(f"manylinux_{a}_{b}_{p.machine()}")')
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q --durations=20 tests

# the tiers (tests/conftest.py). `| $(STAMP)`: an existing venv is used as it is, so editing pyproject.toml or
# this Makefile does not rebuild the venv and its wheel folder before a fast run (`make venv` refreshes it)
test-fast: | $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=10 -m unit tests

test-integration: | $(STAMP)
	$(PY) -m pytest -q --durations=20 -m integration tests

test-e2e: | $(STAMP)
	$(PY) -m pytest -q --durations=20 -m e2e tests

demo: $(STAMP)
	$(VENV)/bin/nnunet-vasculature demo sennet -o $(DEMO_OUT)

demo-hubmap-kidney: $(STAMP)
	$(VENV)/bin/nnunet-vasculature demo hubmap-kidney -o demo-hubmap-kidney

demo-hubmap-vasculature: $(STAMP)
	$(VENV)/bin/nnunet-vasculature demo hubmap-vasculature -o demo-hubmap-vasculature

bench: $(STAMP)
	$(PY) -m benchmarks metric
	$(PY) -m benchmarks convert
	$(PY) -m benchmarks predict_memory

clean:
	rm -rf $(VENV) $(DEMO_OUT) demo-hubmap-kidney demo-hubmap-vasculature build *.egg-info
