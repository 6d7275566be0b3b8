# Two entry points: `make demo` (heatmaps of the sample photos) and `make test`.
# Both create the virtual environment on first use; nothing is downloaded at run time.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# Test-only oracle for tests/lxt_reference.py (lrp_cli never imports it): LXT 2.1 plus exactly
# what `import lxt.efficient` needs (it imports transformers' llama/qwen/gemma/bert/gpt2 modules).
# --no-deps skips LXT's declared but unused accelerate, bitsandbytes, open_clip_torch, tabulate.
LXT_ORACLE = lxt==2.1 transformers==4.57.6 huggingface-hub==0.36.2 tokenizers==0.22.2 \
	regex==2026.11.19 requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1 \
	charset-normalizer==3.5.3
# Test-only oracle for tests/test_evaluate.py (region perturbation, ROAD's imputation): Quantus
# 0.6.0 plus what `import quantus` needs beyond .[dev]; --no-deps: opencv-python-headless stands
# in for the declared opencv-python (same cv2 module, no GUI libraries), and torch, scipy,
# scikit-learn, matplotlib and tqdm come from .[dev] already.
QUANTUS_ORACLE = quantus==0.6.0 scikit-image==0.26.0 opencv-python-headless==5.0.0.93 \
	pandas==3.1.1 cachetools==8.0.2 imageio==2.38.2 tifffile==2026.3.3 lazy-loader==0.6

.PHONY: demo test test-all lint bench-quick clean

$(BIN)/lrp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/lrp

$(VENV)/.oracles: $(BIN)/lrp Makefile
	$(BIN)/pip install --quiet --no-deps $(LXT_ORACLE)
	$(BIN)/pip install --quiet --no-deps $(QUANTUS_ORACLE)
	touch $(VENV)/.oracles

demo: $(BIN)/lrp
	$(BIN)/lrp explain sample_images/ --out lrp-out/ --overlay --overwrite --jsonl lrp-out/records.jsonl

# The default set; the Ray tests, in a pytest process of their own; then a bounded share of the
# slow tests (8, drawn anew each day; the header prints the seed to repeat a draw). The 15
# slowest of each are listed.
test: $(VENV)/.oracles
	$(BIN)/pytest -q --durations=15
	$(BIN)/pytest -q -m ray --durations=5
	$(BIN)/pytest -q -m slow --slow-sample 8 --durations=15

test-all: $(VENV)/.oracles
	$(BIN)/pytest -q -m "not ray" --durations=15
	$(BIN)/pytest -q -m ray --durations=5

lint: $(BIN)/lrp
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench-quick: $(BIN)/lrp
	$(BIN)/python benchmarks/bench_engine.py --quick

clean:
	rm -rf lrp-out .pytest_cache
