# deploykit — developer and CI entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DK     := $(VENV)/bin/deploykit
STAMP  := $(VENV)/.deploykit-installed
DEMO_DIR ?= demo

.PHONY: help venv vendor toolchain demo ship test unit integration lint format reference clean

help:
	@echo "make demo       set up everything and ship the embedded demo adapter end to end"
	@echo "make ship ADAPTER=dir QUANT=q4_k_m NAME=name   ship an adapter (CI entry point)"
	@echo "make test       set up everything and run lint + the test suite (unit lane first)"
	@echo "make unit       the unit lane: no llama.cpp build needed (about 2 minutes)"
	@echo "make integration  the tests that run the built llama.cpp tools"
	@echo "make venv       create $(VENV) with the pinned dependencies (constraints.txt)"
	@echo "make vendor     extract the pinned llama.cpp into vendor/llama.cpp"
	@echo "make toolchain  build the llama.cpp tools into ~/.cache/deploykit (once)"
	@echo "make format     apply ruff's formatting and import order"
	@echo "make reference  regenerate the README's command reference from --help"
	@echo "make clean      remove $(VENV), vendor/llama.cpp and $(DEMO_DIR)/ (not the cache)"

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

vendor: venv
	$(DK) toolchain vendor

toolchain: vendor
	$(DK) toolchain build

# Ships the demo fine-tune: merge, convert, verify, quantize, Modelfile, bundle, and (when an
# Ollama answers at OLLAMA_HOST) create + health check. Without Ollama it stops at the bundle.
demo: toolchain
	$(DK) demo init $(DEMO_DIR)/qwen2 --arch qwen2 --force
	$(DK) demo init $(DEMO_DIR)/llama --arch llama --force
	$(DK) doctor
	@# the demo model is random and tiny: its Q4_K_M's KL divergence (about 0.21) is beyond the
	@# 0.1 a real model's Q4_K_M must meet, so the demo passes a limit suited to it
	$(DK) ship --adapter $(DEMO_DIR)/qwen2/adapter --quant q4_k_m,q8_0 --name deploykit-demo \
		--quality-gate 0.3 \
		--probes $(DEMO_DIR)/qwen2/probes.json --out $(DEMO_DIR)/dist
	@echo
	@echo "demo models: $(CURDIR)/$(DEMO_DIR)/qwen2 and $(CURDIR)/$(DEMO_DIR)/llama"
	@echo "  (base/ = tiny base model, adapter/ = its LoRA fine-tune, probes.json = expected answers)"
	@echo "release bundle: $(CURDIR)/$(DEMO_DIR)/dist (GGUFs, Modelfile, manifest.json, README.md)"
	@echo "publish it (the card and the file list first, offline): $(DK) push $(DEMO_DIR)/dist --to hf:YOU/deploykit-demo-GGUF --dry-run"

# CI users: make ship ADAPTER=out/lora QUANT=q4_k_m NAME=my-model [SHIP_ARGS="--probes p.json"]
ADAPTER ?=
QUANT ?= q4_k_m
NAME ?=
ship: toolchain
	@test -n "$(ADAPTER)" || { echo "error: set ADAPTER=dir (hint: make ship ADAPTER=out/lora QUANT=q4_k_m NAME=my-model)" >&2; exit 2; }
	$(DK) ship --adapter $(ADAPTER) --quant $(QUANT) $(if $(NAME),--name $(NAME)) $(SHIP_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	@$(VENV)/bin/cog --check README.md || { echo "error: the README's command reference is stale (hint: make reference)" >&2; exit 1; }

format: venv
	$(VENV)/bin/ruff check --fix --select I .
	$(VENV)/bin/ruff format .

reference: venv
	$(VENV)/bin/cog -r README.md

# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
PYTEST = run() { $(PY) -m pytest "$$@"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; return 1; fi; return $$rc; }; run

# The unit lane needs the vendored tree (vocab files, templates), not the llama.cpp build. It
# runs on two workers; the demo models are built (or found in the cache) first, once.
unit: vendor
	@d=$$(mktemp -d) && for a in qwen2 llama qwen3.5 gemma4; do $(DK) demo init $$d/$$a --arch $$a --json >/dev/null || exit 1; done; rm -rf $$d
	@$(PYTEST) -n 2 tests/unit tests/golden

integration: toolchain
	@$(PYTEST) tests/integration

# lint, then the unit lane, then the build and the tests that need it
test: lint unit integration

clean:
	rm -rf $(VENV) vendor/llama.cpp $(DEMO_DIR)
