# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3

.PHONY: demo test deps lint

deps:
	./scripts/install-deps

demo: deps
	$(PYTHON) -m tests.demo

test: deps
	$(PYTHON) -m pytest -q

lint:
	ruff check exporter tests
	ruff format --check exporter
	mypy
