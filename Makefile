# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RECALL_ML100K_DIR ?= $(abspath ../shared/data/ml-100k)

CONSTRAINTS := infra/docker/constraints.txt
KFP := infra/kubeflow/requirements.txt

.PHONY: install demo test lint bench clean redis-server kubectl chromium constraints

# The versions of infra/docker/constraints.txt, the same the pipeline image installs.
$(STAMP): pyproject.toml $(CONSTRAINTS) $(KFP)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first (a local wheel), so the project's torch requirement is already met.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	# The Kubeflow SDK without its dependency pins (see the file's header).
	$(PY) -m pip install -q --no-deps -r $(KFP)
	touch $(STAMP)

# After changing dependencies: re-freeze what the tests pass with (torch without its local +cpu label).
constraints: $(STAMP)
	{ echo "# pip freeze of the environment the tests pass in (make constraints); torch's build is the image's choice."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^#' | sed 's/^torch==\([^+]*\)+.*/torch==\1/'; } > $(CONSTRAINTS)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recall demo

# Two pytest-xdist workers, a test file each at a time (module fixtures are built once): 1.4x faster on two
# cores than one process (most of the time is single-threaded Airflow, Feast and BentoML start-up).
test: $(STAMP) lint redis-server kubectl chromium
	$(PY) -m pytest -q -n 2 --dist loadfile

# The Redis online-store tests run against a real redis-server (Debian's package; root or sudo).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server is needed by the tests: apt-get install redis-server" >&2; exit 1; }

# The manifest tests render the overlays with `kubectl kustomize` (Debian's kubernetes-client where absent).
kubectl:
	@command -v kubectl >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q kubernetes-client >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q kubernetes-client >/dev/null; }; }
	@command -v kubectl >/dev/null 2>&1 || { echo "kubectl is needed by the tests: apt-get install kubernetes-client" >&2; exit 1; }

# The report test renders the evaluation report's charts in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null; }; }
	@command -v chromium >/dev/null 2>&1 || { echo "chromium is needed by the tests: apt-get install chromium" >&2; exit 1; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) runs .pytest_cache
