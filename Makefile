# Everything installs itself: `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: run test lint format typecheck unit system-deps clean

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian tools the tests drive as real clients (chromium: the headless browser;
# nghttp2-client: h2load, an HTTP/2 load generator).
system-deps:
	@missing=""; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

run: $(STAMP)
	$(BIN)/gunicorn -k flask_async_worker.UVLoopWorker --threads 4 \
		--chdir examples -b $(HOST):$(PORT) --access-logfile - hello:app

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache

# Benchmarks against the alternatives (bench/run.py makes its own bench/.venv);
# writes docs/benchmarks.rst, docs/_static/benchmarks.png and bench/PROFILE.md.
# BENCH_ARGS="--quick" or "--only 3,gthread" narrow the run.
BENCH_ARGS ?=
.PHONY: bench
bench:
	$(PYTHON) bench/run.py $(BENCH_ARGS)
