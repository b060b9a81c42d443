# meshpose — the two commands a new user runs: `make demo` and `make test`. Both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.meshpose-installed
OUT    ?= out/demo

.PHONY: setup demo test test-all lint format bench-render clean

$(STAMP): pyproject.toml scripts/setup.sh
	scripts/setup.sh
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/meshpose demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench-render: $(STAMP)
	$(PY) benchmarks/bench_render.py --out benchmarks/results/render.json

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
