# Two commands a new user runs: `make quickstart`, then `make test`.
# Each sets itself up on first use: a .venv with $(TORCH), then instructsd with its test extras,
# pinned by constraints.txt (and, for `make test`, Debian's chromium for the demo's browser test).
# CUDA users: make TORCH='torch==2.x.y' quickstart
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.instructsd-installed

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup quickstart test test-sd15 clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	# CLIP's BPE merges for the hub-layout test models ship in open-clip-torch; --no-deps because it
	# requires torchvision, which does not install beside this torch.
	$(BIN)/pip install --quiet --no-deps open-clip-torch==3.3.0
	touch $(STAMP)

# Debian's Chromium for the demo's browser test; skipped (with a note) where apt is unavailable.
$(VENV)/.browser: scripts/setup_demo_test.sh | $(STAMP)
	bash scripts/setup_demo_test.sh
	touch $@

quickstart: $(STAMP)
	$(BIN)/instructsd quickstart

test: $(STAMP) $(VENV)/.browser
	$(BIN)/python -m pytest -q

# SD-1.5-size random weights in the hub layout: the post's presets (LoRA bf16 with validation, full
# fine-tuning with EMA) for 2 steps each, then stock-pipeline edits. ~20 min and ~18 GB RSS on 2 cores;
# not part of `make test`. Results: benchmarks/results/sd15_tier.json (summarised in RESULTS.md).
test-sd15: $(STAMP)
	$(BIN)/python benchmarks/sd15_tier.py --work runs/sd15-tier

clean:
	rm -rf $(VENV) runs .pytest_cache
