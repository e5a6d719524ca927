# `make demo` runs the main job on the embedded default data; `make test` runs the test suite.
# Both create .venv, install the pinned packages and any missing Debian packages (run as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEBS := libfluidsynth3 fluid-soundfont-gm wordnet-base wordnet-sense-index chromium default-jre-headless
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install debs demo demo-seeds demo-lieder demo-alignment demo-alignment-language demo-alignment-tone test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and alone: pip takes the local CPU wheel for this exact version.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed debs

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: install
	$(VENV)/bin/recap demo --source music21 --out runs/demo

# Table 1 over three captioner seeds (reuses what `make demo` trained for seed 0).
demo-seeds: install
	$(VENV)/bin/recap demo --source music21 --out runs/demo --seeds 0,1,2

demo-lieder: install
	$(VENV)/bin/recap demo --source ../shared/data/openscore-lieder --out runs/demo-lieder --full

# RECAP's alignment where audio and lyrics correspond (issue 17; docs/results.md): Table 1, the
# w sweep over 3 seeds and audio<->lyrics retrieval on a coupled benchmark. It reuses `make demo`'s
# tagger when there (pretrained on the plain benchmark); otherwise it trains one (+40 s). The
# arm beyond the paper (InfoNCE over an attention pool: three more trainings, ~1 min) is left out
# to keep to issue 17's 15 minutes; `recap demo-alignment --out runs/demo-alignment` adds it.
demo-alignment: install
	$(VENV)/bin/recap demo-alignment --out runs/demo-alignment --arm '{}' \
	  $$(test -f runs/demo/tagger/model.safetensors && echo --tagger runs/demo/tagger)

# The same on 420 OpenScore Lieder scores coupled by language, a correspondence the lyrics side can
# learn (docs/results.md: the alignment finds it; ~36 min on 2 cores, over issue 17's 15).
demo-alignment-language: install
	$(VENV)/bin/recap demo-alignment --source ../shared/data/openscore-lieder --limit 420 \
	  --couple-by language --out runs/demo-alignment-language \
	  $$(test -f runs/demo/tagger/model.safetensors && echo --tagger runs/demo/tagger)

# The same coupled by language and by the tone of each text's opening (an exclamation mark in its
# first 40 words: fast, else slow), every captioner from a text-pretrained BART (docs/results.md,
# "Coupled by language and tone"; ~45 min on 2 cores).
demo-alignment-tone: install
	$(VENV)/bin/recap demo-alignment --source ../shared/data/openscore-lieder --limit 420 \
	  --couple-by language-tone --pretrain-steps 500 --arm '{}' --out runs/demo-alignment-tone \
	  $$(test -f runs/demo/tagger/model.safetensors && echo --tagger runs/demo/tagger)

test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/python -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
