# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RECALL_ML100K_DIR ?= $(abspath ../shared/data/ml-100k)

.PHONY: install demo test lint bench clean redis-server

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first (a local wheel), so the project's torch requirement is already met.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recall demo

test: $(STAMP) lint redis-server
	$(PY) -m pytest -q

# The Redis online-store tests run against a real redis-server (Debian's package; root or sudo).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server is needed by the tests: apt-get install redis-server" >&2; exit 1; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) runs .pytest_cache
