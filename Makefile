# meshpose — the two commands a new user runs: `make demo` and `make test`. Both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.meshpose-installed
OUT    ?= out/demo

LMO    ?= ../shared/data/lmo
SYN    ?= data/syn_photoreal

.PHONY: setup demo test test-all lint format bench-render bench-synth bench-lmo synth-testset bench-syn bench-genflow bench-syn-lmo-meshes clean

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

bench-synth: $(STAMP)
	$(PY) benchmarks/bench_synth.py --out benchmarks/results/synth.json

# Refiners on the real LM-O sample (RGB only), at the two initial-error levels of the refinement issue.
bench-lmo: $(STAMP)
	$(PY) benchmarks/bench_refine.py --dataset $(LMO) --methods contour,flow-pnp --levels 15:0.1,30:0.2 \
		--threads 2 --out-dir out/bench/lmo

# A photoreal RGB-D test set of 30 held-out generated objects (deterministic), then the basin-of-attraction grid.
synth-testset: $(STAMP)
	$(VENV)/bin/meshpose synth --objects novel:5000-5029 --out $(SYN) --scenes 20 --images-per-scene 2 \
		--renderer photoreal --split test --seed 1

bench-syn: $(STAMP)
	$(PY) benchmarks/bench_refine.py --dataset $(SYN) --methods flow-pnp,contour,icp \
		--levels 5:0.05,15:0.1,30:0.2,45:0.3,60:0.4 --threads 2 --out-dir out/bench/syn

# genflow next to the training-free presets (their finished result files are reused): LM-O RGB, the synthetic set
# RGB-D and RGB only; then its speed per outer iteration and its training curve.
bench-genflow: $(STAMP)
	$(PY) benchmarks/bench_refine.py --dataset $(LMO) --methods contour,flow-pnp,genflow,genflow+contour \
		--levels 15:0.1,30:0.2 --threads 2 --out-dir out/bench/lmo
	$(PY) benchmarks/bench_refine.py --dataset $(SYN) --methods flow-pnp,contour,icp,genflow,genflow+icp \
		--levels 15:0.1,30:0.2 --threads 2 --out-dir out/bench/syn
	$(PY) benchmarks/bench_refine.py --dataset $(SYN) --methods flow-pnp,contour,genflow,genflow+contour \
		--levels 15:0.1,30:0.2 --no-depth --threads 2 --out-dir out/bench/syn_rgb
	$(PY) benchmarks/bench_genflow.py --threads 2 --out benchmarks/results/genflow_speed.json \
		--curve benchmarks/results/genflow_training.png

# Diagnostic: the LM-O meshes (their own vertex colours) in photoreal synthetic scenes, i.e. LM-O's objects
# without the scan-vs-photo appearance gap; summaries in benchmarks/results/syn_lmo_meshes/.
bench-syn-lmo-meshes: $(STAMP)
	$(VENV)/bin/meshpose synth --objects $(LMO) --out data/syn_lmo_meshes --scenes 10 --images-per-scene 2 \
		--renderer photoreal --split test --seed 1
	$(PY) benchmarks/bench_refine.py --dataset data/syn_lmo_meshes --methods contour,flow-pnp,genflow \
		--levels 15:0.1 --no-depth --threads 2 --out-dir out/bench/syn_lmo_rgb
	$(PY) benchmarks/bench_refine.py --dataset data/syn_lmo_meshes --methods genflow,icp --levels 15:0.1 \
		--threads 2 --out-dir out/bench/syn_lmo_rgbd

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
