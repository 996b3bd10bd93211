# vcache: every target installs what it needs into .venv in this folder.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch lies on this disk; GPU users: make install TORCH="torch==2.13.0 --index-url ..."
TORCH  ?= torch==2.13.0
# GPU=1 installs faiss-gpu (about 1.2 GB of CUDA libraries) instead of faiss-cpu; both give `import faiss`.
GPU    ?= 0
FAISS  := $(if $(filter 1,$(GPU)),faiss-gpu==1.15.1,faiss-cpu)
DEMO   ?= demo
PYTEST_ARGS ?=
# Test files run in this many processes (pytest-xdist; a file's tests stay together in one process).
TEST_WORKERS ?= 2

.PHONY: install test lint format demo bench reproduce-tables clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q $(FAISS)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check pipeline cli tests benchmarks
	$(BIN)/ruff format --check pipeline cli tests benchmarks

format: install
	$(BIN)/ruff check --fix pipeline cli tests benchmarks
	$(BIN)/ruff format pipeline cli tests benchmarks

# The whole pipeline on generated data: synth -> extract -> (train-aggregator -> probe) -> results table.
DEMO_TRAIN ?= 300
DEMO_TEST  ?= 100
DEMO_EPOCHS ?= 100
DEMO_FT_EPOCHS ?= 40
# The official heads (3x2048 target, 2x4096 prediction/SET) made a demo step 3.6x slower than 3x512/2x512 here; the demo
# narrows them (DEMO_HEADS= restores the defaults).
DEMO_HEADS ?= --target-head 3x512 --pred-head 2x512
BACKBONE   ?= r3d_18_narrow
VC := $(BIN)/vcache
demo: install
	$(VC) synth $(DEMO)/data --train $(DEMO_TRAIN) --test $(DEMO_TEST) --task order --seed 0 --overwrite
	$(VC) extract $(DEMO)/data/videos --format ucf101 --annotations $(DEMO)/data/splits --subset train \
	  --backbone $(BACKBONE) --mode train --crops 16 --out $(DEMO)/train16.zarr
	$(VC) extract $(DEMO)/data/videos --format ucf101 --annotations $(DEMO)/data/splits --subset train \
	  --backbone $(BACKBONE) --mode eval --layout 5x3 --out $(DEMO)/train_eval.zarr
	$(VC) extract $(DEMO)/data/videos --format ucf101 --annotations $(DEMO)/data/splits --subset test \
	  --backbone $(BACKBONE) --mode eval --layout 5x3 --out $(DEMO)/test_eval.zarr
	$(VC) inspect $(DEMO)/test_eval.zarr
	$(VC) train-aggregator scale $(DEMO)/train16.zarr --out $(DEMO)/scale.pt --epochs $(DEMO_EPOCHS) --resume \
	  $(DEMO_HEADS)
	$(VC) probe knn $(DEMO)/train_eval.zarr $(DEMO)/test_eval.zarr --out $(DEMO)/results
	$(VC) probe linear $(DEMO)/train_eval.zarr $(DEMO)/test_eval.zarr --out $(DEMO)/results
	$(VC) probe mlp $(DEMO)/train_eval.zarr $(DEMO)/test_eval.zarr --out $(DEMO)/results
	$(VC) probe transformer $(DEMO)/train_eval.zarr $(DEMO)/test_eval.zarr --epochs $(DEMO_FT_EPOCHS) --out $(DEMO)/results
	$(VC) probe knn $(DEMO)/train_eval.zarr $(DEMO)/test_eval.zarr --aggregator $(DEMO)/scale.pt --out $(DEMO)/results
	$(VC) probe linear $(DEMO)/train_eval.zarr $(DEMO)/test_eval.zarr --aggregator $(DEMO)/scale.pt --out $(DEMO)/results
	$(VC) probe transformer $(DEMO)/train_eval.zarr $(DEMO)/test_eval.zarr --aggregator $(DEMO)/scale.pt \
	  --epochs $(DEMO_FT_EPOCHS) --out $(DEMO)/results
	$(VC) results $(DEMO)/results --markdown $(DEMO)/results.md --figure $(DEMO)/results.png

# The papers' tables at this machine's scale, beside the papers' numbers (docs/tables.md).
# QUICK=1: the ~2-minute version (results/quick/). DATA=/path/to/UCF-101 SPLITS=/path/to/ucfTrainTestlist:
# a local copy instead of the synthetic set (FORMAT=hmdb51 for HMDB-51). Reruns redo only what changed.
# STORES=s3://bucket/prefix: the feature stores on object storage (the AWS_* variables configure it).
QUICK  ?=
STORES ?=
DATA   ?=
SPLITS ?=
FORMAT ?= ucf101
TABLES_OUT ?= $(if $(filter 1,$(QUICK)),results/quick,results)
reproduce-tables: install
	$(VC) reproduce-tables --out $(TABLES_OUT) $(if $(filter 1,$(QUICK)),--quick) \
	  $(if $(DATA),--data $(DATA) --splits $(SPLITS) --format $(FORMAT)) $(if $(STORES),--stores $(STORES))

bench: install
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_scaling.py
	$(BIN)/python benchmarks/bench_transport.py
	$(BIN)/python benchmarks/bench_overlap.py

clean:
	rm -rf $(DEMO) .pytest_cache
