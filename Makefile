# bnlab: two commands do all the set-up on a fresh machine.
#   make train   creates .venv if missing, installs bnlab, runs the main job (the vanishing experiment)
#   make test    same environment, runs the linter and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bnlab-installed

# A CPU build of torch where no NVIDIA GPU is present; the package itself accepts any torch >= 2.1.
# On this project's machines torch==2.13.0 is a CPU wheel kept on local disk, while a plain `torch`
# resolves to a ~5.5 GB CUDA build. Elsewhere, point pip at PyTorch's CPU wheel index, e.g.
#   make test TORCH_PIP_ARGS="--index-url <PyTorch CPU wheel index>"
# and GPU users get the CUDA build with `make TORCH_SPEC=torch`.
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAVE_GPU),torch>=2.1,torch==2.13.0)
TORCH_PIP_ARGS ?=
# Triton: CUDA builds of torch bring their own. Without a GPU the tests run bnlab's Triton kernels in
# Triton's CPU interpreter; 3.9 is the first whose interpreter works with numpy >= 2.4 (3.6's fails on
# loop bounds), and it never needs a GPU for that.
TRITON_SPEC ?= $(if $(HAVE_GPU),,triton==3.9.0)

.PHONY: setup train pair test test-slow lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(if $(TRITON_SPEC),$(BIN)/python -m pip install --quiet "$(TRITON_SPEC)")
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The headline experiment: sigmoid and tanh MLPs at depths 2-50, with and without bnlab's BatchNorm, 3 seeds,
# ending with its verdict table. `make pair` trains just the default pair (with / without BatchNorm).
train: $(STAMP)
	$(BIN)/bnlab reproduce vanishing
	@echo
	@echo "Open TensorBoard on every run:  $(BIN)/bnlab tb runs   (or: $(BIN)/tensorboard --logdir runs)"

pair: $(STAMP)
	$(BIN)/bnlab train
	$(BIN)/bnlab train norm=none
	@echo
	@echo "Open TensorBoard on both runs:  $(BIN)/bnlab tb runs/train   (or: $(BIN)/tensorboard --logdir runs/train)"

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/pytest -n 2

# The slow tests (non-editable install, full-size checks); CI runs them too.
test-slow: $(STAMP)
	$(BIN)/pytest -n 2 -m slow

bench: $(STAMP)
	$(BIN)/python scripts/bench_bn.py
	$(BIN)/python scripts/bench.py telemetry loop experience
	$(BIN)/python scripts/bench_channels_last.py
	$(if $(HAVE_GPU),$(BIN)/python scripts/bench_bn_gpu.py)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
