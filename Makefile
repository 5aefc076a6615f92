# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run the demo pipeline on bundled real data
#   make test   set up .venv and run the test suite
#   make lint   ruff over the code, tests, benchmarks and examples; mypy over curate/
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= demo-store
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint setup clean bench browser llama-server

# The CLIP extra brings torch; .ci/constraints-clip.txt pins the build that lies on this
# machine's disk so no resolver downloads another. img2dataset pins pandas<3, so it gets a
# venv of its own (.venv-img2dataset), used by `curate download` and its test; the tests
# also read vector exports there with clip-retrieval's embedding-reader (pandas<3 too).
I2D_VENV ?= .venv-img2dataset

$(STAMP): pyproject.toml .ci/constraints-clip.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c .ci/constraints-clip.txt -e '.[dev,clip]'
	test -x $(I2D_VENV)/bin/python || ($(PYTHON) -m venv $(I2D_VENV) && $(I2D_VENV)/bin/pip install --quiet img2dataset==1.47.0)
	$(I2D_VENV)/bin/python -c "import embedding_reader" 2>/dev/null || $(I2D_VENV)/bin/pip install --quiet embedding-reader==1.8.1
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP) browser llama-server

# Caption generation's tests talk to a real llama-server (llama.cpp from the source vendored in
# PyPI's llama-cpp-python 0.3.36 sdist): 5-10 min on 2 cores once, one 15 MB binary cached in
# ~/.cache/curate/llama-server/ ($$CURATE_CACHE), skipped when present.
llama-server: $(STAMP)
	PYTHON=$(BIN)/python .ci/build-llama-server

# The HTML report's test opens the page in Debian's chromium, and concept aliases read
# Debian's WordNet files (wordnet-base). As root with apt, set-up installs both (about
# 45 s, 400 MB); elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	  (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1) || \
	  echo "note: could not install chromium; tests/test_report.py's browser test will skip"
	@test -d /usr/share/wordnet || ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null 2>&1 || \
	  echo "note: could not install wordnet-base; the WordNet alias tests will skip"

demo: $(STAMP)
	$(BIN)/python examples/demo.py --store $(STORE)

test: $(STAMP) browser llama-server
	CURATE_IMG2DATASET_PYTHON=$(CURDIR)/$(I2D_VENV)/bin/python $(BIN)/python -m pytest -q

# Settings live in pyproject.toml ([tool.ruff], [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check curate tests benchmarks examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py --rows 10000000

clean:
	rm -rf $(STORE) .pytest_cache
