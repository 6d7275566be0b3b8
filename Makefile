# Two entry points: `make demo` (heatmaps of the sample photos) and `make test`.
# Both create the virtual environment on first use; nothing is downloaded at run time.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test test-all lint bench-quick clean

$(BIN)/lrp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/lrp

demo: $(BIN)/lrp
	$(BIN)/lrp explain sample_images/ --out lrp-out/ --overlay --overwrite --jsonl lrp-out/records.jsonl

test: $(BIN)/lrp
	$(BIN)/pytest -q

test-all: $(BIN)/lrp
	$(BIN)/pytest -q -m "slow or not slow"

lint: $(BIN)/lrp
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench-quick: $(BIN)/lrp
	$(BIN)/python benchmarks/bench_engine.py --quick

clean:
	rm -rf lrp-out .pytest_cache
