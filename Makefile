# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
# The demo's own environment: the clone installed editable into a venv under the clone, so the
# demo never changes what `python3` or `o365-mailbox-exporter` mean system-wide.
VENV ?= .venv

.PHONY: demo demo-deps test test-floors deps package lint

# Distribution packages (Dovecot, Prometheus, Alertmanager, Chromium) and the package, editable,
# with its test extras, into $(PYTHON) itself: what `make test` and CI use.
deps:
	PYTHON=$(PYTHON) ./scripts/install-deps

# The same distribution packages; the Python side goes into $(VENV) only.
demo-deps:
	PYTHON=$(PYTHON) ./scripts/install-deps --venv $(VENV)

demo: demo-deps
	$(VENV)/bin/python -m tests.demo

test: deps
	$(PYTHON) -m pytest -q

# The core real-peer tests with every runtime dependency at its declared floor (throwaway venv).
test-floors: deps
	PYTHON=$(PYTHON) ./scripts/test-floors

# A wheel and an sdist in dist/ (offline: the build backend comes from the test extras).
package: deps
	$(PYTHON) -m build --no-isolation --outdir dist .

lint:
	ruff check exporter tests
	ruff format --check exporter
	mypy
