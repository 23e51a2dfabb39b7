# Two commands do all the set-up: `make run` and `make test`. Each creates .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/pip
STAMP   := $(VENV)/.mvf-installed
ASSET   := assets/face_model.npz
LMSET   := assets/mediapipe_landmarks.npz

.PHONY: setup run test asset clean

setup: $(STAMP) $(ASSET) $(LMSET)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[test]"
	touch $(STAMP)

$(ASSET): $(STAMP)
	$(BIN)/mvf build-model --no-landmarks

# the calibrated mediapipe landmark set (a few minutes: renders + detection, deterministic)
$(LMSET): $(ASSET)
	$(BIN)/mvf build-model --landmarks-only

asset: $(STAMP)
	$(BIN)/mvf build-model

run: setup
	$(BIN)/python tools/main_job.py

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf out runs
