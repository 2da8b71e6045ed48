# Quick start:  make run   (default study, offline)   |   make test   (the test suite)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds this project is tested with.
TORCH := torch==2.14.1 torchvision==0.29.1
ARGS ?=

.PHONY: install run test test-fast experiments clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml requirements-bundled.txt | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps -r requirements-bundled.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python -m src.run $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

EXP := outputs/experiments
experiments: install
	$(BIN)/python -m src.run experiment=classic_attention_offline hydra.run.dir=$(EXP)/classic_attention_offline
	$(BIN)/python -m src.run -m experiment=vit_vs_cnn hydra.sweep.dir=$(EXP)/vit_vs_cnn
	$(BIN)/python -m src.figures $(EXP)/vit_vs_cnn
	$(BIN)/python -m src.run -m experiment=defect_layer_scan hydra.sweep.dir=$(EXP)/defect_layer_scan
	$(BIN)/python -m src.report $(EXP)/defect_layer_scan --metric aupro
	$(BIN)/python -m src.report $(EXP)/defect_layer_scan --metric auroc
	$(BIN)/python -m src.figures $(EXP)/defect_layer_scan

clean:
	rm -rf $(VENV) outputs/runs outputs/multirun .pytest_cache
