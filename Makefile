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

.PHONY: setup quickstart test clean

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

clean:
	rm -rf $(VENV) runs .pytest_cache
