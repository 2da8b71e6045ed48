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
	$(BIN)/layerscope $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

# the developer's loop: every test not marked slow; without ARGS it also fails when a module of the
# package was never imported (the fast tier must reach every module)
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(if $(ARGS),,--check-modules) $(ARGS)

EXP := outputs/experiments
experiments: install
	$(BIN)/layerscope experiment=classic_attention_offline hydra.run.dir=$(EXP)/classic_attention_offline
	$(BIN)/layerscope -m experiment=vit_vs_cnn hydra.sweep.dir=$(EXP)/vit_vs_cnn
	$(BIN)/layerscope-figures $(EXP)/vit_vs_cnn
	$(BIN)/layerscope -m experiment=defect_layer_scan hydra.sweep.dir=$(EXP)/defect_layer_scan
	$(BIN)/layerscope-report $(EXP)/defect_layer_scan --metric aupro
	$(BIN)/layerscope-report $(EXP)/defect_layer_scan --metric auroc
	$(BIN)/layerscope-figures $(EXP)/defect_layer_scan
	$(BIN)/layerscope -m experiment=vit_vs_cnn_representations hydra.sweep.dir=$(EXP)/vit_vs_cnn_representations
	$(BIN)/layerscope -m experiment=vit_vs_cnn_representations data=samples '~data.per_combination' hydra.sweep.dir=$(EXP)/vit_vs_cnn_representations/photos
	$(BIN)/layerscope-compare $(EXP)/vit_vs_cnn_representations --probe category
	$(BIN)/layerscope -m experiment=fewshot_layer_scan hydra.sweep.dir=$(EXP)/fewshot_layer_scan
	$(BIN)/layerscope-report $(EXP)/fewshot_layer_scan --metric aupro --calibration 0.5
	$(BIN)/layerscope-report $(EXP)/fewshot_layer_scan --metric auroc --calibration 0.5
	$(BIN)/layerscope-figures $(EXP)/fewshot_layer_scan --kinds fewshot_vs_layer dataset_vs_layer
	$(BIN)/layerscope-view $(EXP)/fewshot_layer_scan
	test -d $(EXP)/fewshot_mvtec_tree || $(BIN)/layerscope-export $(EXP)/fewshot_mvtec_tree --textures brick --train 20
	$(BIN)/layerscope -m experiment=fewshot_layer_scan_mvtec data.root=$(EXP)/fewshot_mvtec_tree data.category=brick hydra.sweep.dir=$(EXP)/fewshot_layer_scan_mvtec
	$(BIN)/layerscope-report $(EXP)/fewshot_layer_scan_mvtec --metric aupro --calibration 0.5

clean:
	rm -rf $(VENV) outputs/runs outputs/multirun .pytest_cache
