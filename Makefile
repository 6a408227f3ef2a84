# tuneforge: `make demo` and `make test` from a fresh clone. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser demo calibration-demo agent-demo rl-demo long-context-demo test test-slow bench bench-serve gguf-check llama-cpp clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 first and pinned: an unpinned torch would pull a multi-GB CUDA build on this CPU machine.
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

EXTRAS := $(VENV)/.extras-stamp
$(EXTRAS): $(STAMP) requirements-extras.lock
	$(BIN)/python -m pip install -q -r requirements-extras.lock
	touch $(EXTRAS)

demo: setup
	$(BIN)/tuneforge models default
	$(BIN)/tuneforge data demo data/generated/dates --n-train 2000 --n-val 200
	$(BIN)/tuneforge train examples/demo.yaml --overwrite
	@echo "see it in the browser: $(BIN)/tuneforge ui   (then open http://127.0.0.1:8765/)"

# Calibration tuning on open arithmetic of graded difficulty, evaluated with intervals against trivial
# predictors; the table and reliability diagrams go into docs/calibration.md. On
# 2 cores with AMX (51 min measured alone, 2026-12-03).
calibration-demo: setup
	$(BIN)/tuneforge models default
	@start=$$(date +%s) && \
	$(BIN)/tuneforge data calibration data/generated/calibration && \
	$(BIN)/tuneforge train examples/calibration.yaml --overwrite && \
	$(BIN)/tuneforge runs report runs/calibration --into docs/calibration.md --images docs/img \
	  --command "make calibration-demo" --wall-seconds $$(( $$(date +%s) - start ))

# Three-role agent vs two single-model baselines on the offline tool world, with the α-UMi reference's
# budgets (in epochs) on 64 tasks (58 to train, 6 to validate); evaluated on 80 + 80 test tasks; the table and charts go
# into docs/agent.md. Measured 2026-12-03/04 on 2 CPU cores with AMX, from a fresh clone: 60 min on a fast day,
# 76-89 on slower ones (training 22-31, evaluation of the three systems 38-57: the machine's speed varies from
# day to day; docs/agent.md, "Cost on this machine", says where the time goes);
# minutes on a GPU.
agent-demo: setup
	$(BIN)/tuneforge models default
	@start=$$(date +%s) && \
	$(BIN)/tuneforge agent world data/generated/toolworld --n-train 64 --n-test 80 && \
	$(BIN)/tuneforge train examples/agent.yaml --overwrite && \
	$(BIN)/tuneforge runs report runs/agent --into docs/agent.md --images docs/img \
	  --command "make agent-demo" --wall-seconds $$(( $$(date +%s) - start ))

# GRPO on two-digit arithmetic with a numeric reward (recipe: rl): held-out accuracy (greedy) before and after,
# with intervals, and the reward curve, into docs/rl.md.
rl-demo: setup
	$(BIN)/tuneforge models default
	@start=$$(date +%s) && \
	$(BIN)/tuneforge data arithmetic data/generated/arithmetic && \
	$(BIN)/tuneforge train examples/rl.yaml --overwrite && \
	$(BIN)/tuneforge runs report runs/rl --into docs/rl.md --images docs/img \
	  --command "make rl-demo" --wall-seconds $$(( $$(date +%s) - start ))

# Context extension: YaRN x2 on the embedded model (8,192 -> 16,384 tokens), LoRA on pass-key rows of ~8k
# tokens, pass-key accuracy of the model as shipped and the tuned one at 1x and 2x, with intervals, into
# docs/training.md. On 2 cores with AMX: 33 min measured (2026-12-03; scoring 19 of them, training 13).
long-context-demo: setup
	$(BIN)/tuneforge models default
	@start=$$(date +%s) && \
	$(BIN)/tuneforge data passkey data/generated/passkey --lengths 8000 --n-train 64 --n-val 2 && \
	$(BIN)/tuneforge train examples/long_context.yaml --overwrite && \
	$(BIN)/tuneforge runs report runs/long_context --into docs/training.md --images docs/img \
	  --command "make long-context-demo" --wall-seconds $$(( $$(date +%s) - start ))

# Headless Chromium + its driver from Debian's packages, for the `tuneforge ui` browser tests (tests/test_ui.py).
# Without apt-get or root it only says why; those tests then skip.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "browser: apt-get not available: install chromium and chromedriver yourself; the UI browser tests will be skipped"; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "browser: not root: run 'sudo apt-get install -y chromium chromium-driver'; the UI browser tests will be skipped"; \
	else \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "browser: apt-get install chromium chromium-driver failed; the UI browser tests will be skipped"; \
	fi

test: setup $(EXTRAS) browser llama-cpp
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=20

test-slow: setup $(EXTRAS)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

bench: setup
	# TRL only for the side-by-side; --no-deps keeps the pinned torch/transformers untouched.
	$(BIN)/python -m pip install -q --no-deps -r bench/requirements.txt
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_train.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_generate.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_serve.py

# llama.cpp itself on what `tuneforge export` writes (run `make demo` first): builds llama-cpp-python from
# source (a few minutes; pip caches the wheel), runs its test and compares greedy tokens on the demo run.
# `make test` tries it too (tests/test_export_gguf.py runs the export in llama.cpp); where it cannot be
# built (no C++ compiler or cmake) it says so in one line and that test skips.
LLAMA_CPP := $(VENV)/.llama-cpp-stamp
$(LLAMA_CPP): $(STAMP) bench/requirements-llama-cpp.txt
	$(BIN)/python -m pip install -q -r bench/requirements-llama-cpp.txt
	touch $(LLAMA_CPP)

llama-cpp: $(STAMP)
	@test -f $(LLAMA_CPP) || echo "llama-cpp: building llama-cpp-python $$(grep -o '==.*' bench/requirements-llama-cpp.txt | head -1) from source (10-30 min on 2 cores; pip keeps the wheel)"
	@$(MAKE) --no-print-directory $(LLAMA_CPP) >/dev/null 2>&1 || \
	  echo "llama-cpp: building llama-cpp-python failed (needs a C++ compiler and cmake); the llama.cpp export test will be skipped"

gguf-check: $(LLAMA_CPP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/test_export_gguf.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/check_gguf_llamacpp.py runs/demo --prompts data/generated/dates/val.jsonl

# The load test of `tuneforge serve` alone (docs/lifecycle.md has its numbers).
bench-serve: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_serve.py

clean:
	rm -rf $(VENV) runs data/generated .pytest_cache
