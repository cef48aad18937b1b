# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3

.PHONY: demo test test-floors deps lint

deps:
	./scripts/install-deps

demo: deps
	$(PYTHON) -m tests.demo

test: deps
	$(PYTHON) -m pytest -q

# The core real-peer tests with every runtime dependency at its declared floor (throwaway venv).
test-floors: deps
	PYTHON=$(PYTHON) ./scripts/test-floors

lint:
	ruff check exporter tests
	ruff format --check exporter
	mypy
