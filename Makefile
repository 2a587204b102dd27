# The front door: `make help` lists every target.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION := $(VENV)/bin/fashion
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo
SHARED_ZIP ?= ../shared/data/fashion-product-images-small.zip
PYTEST_ARGS ?=
# The console shows each step's start, end, progress and the summary; everything the libraries print
# goes to one log file per step (the summary names the folder). V=1 shows everything live (`fashion -v`).
V ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

# The virtual environment holds the runtime pins (requirements.lock: all that the images install) and the
# test tools; requirements-test.lock includes requirements.lock, so a change to either reinstalls.
$(STAMP): requirements.lock requirements-test.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing pinned dependencies into $(VENV) (first time: a few minutes)..."
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP) ## Create/refresh the virtual environment (idempotent)

run: setup ## Run the main job end to end on the bundled demo data (V=1: every library's output live)
	$(FASHION)$(if $(V), -v) run --preset demo --workdir $(WORKDIR)

test: setup ## Install and run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

protos: setup ## Rewrite the shipped protobuf descriptors (TF Serving API, tf.train.Example) after upgrading tensorflow or tensorflow-serving-api
	$(PY) -c "from serving import protos; print(protos.write_descriptor_set())"
	$(PY) -c "from core import protos; print(protos.write_example_descriptor_set())"

lint: setup ## Ruff lint (docstrings included)
	$(VENV)/bin/ruff check .

bench-ingest: setup ## Benchmark ingestion on the full shared zip
	$(PY) bench/ingest.py --source $(SHARED_ZIP)

bench-preprocess: setup ## Benchmark preprocessing: plain loop vs Beam on 1 and 2 workers (the whole shared catalogue)
	$(PY) bench/preprocess.py

bench-serving: setup ## Benchmark: served gRPC throughput/latency vs the SavedModel in-process
	$(PY) -m bench.serving --seconds 10

.PHONY: bench-serving-limits
bench-serving-limits: setup ## Benchmark: the 20000x20000 PNG bomb vs a normal photo, latency and server memory (gRPC, REST)
	$(PY) -m bench.serving_limits --requests 20

bench-train: setup ## cpu-full accuracy, unified vs independent heads (DATA=preprocess output of the full set)
	$(PY) -m bench.train_cpu_full --data $(DATA) --out runs/bench-train

bench-compare-heads: setup ## Paired test of unified vs independent heads (DATA=..., RUN=bench-train output folder)
	$(PY) -m bench.compare_heads --data $(DATA) --pair $(RUN)/unified $(RUN)/independent

bench-compare-models: setup ## Paired test of a recipe change (DATA=..., BASE=model folder, NEW=model folder; FLIP=--flip)
	$(PY) -m bench.compare_models --data $(DATA) --pair $(BASE) $(NEW) $(FLIP)

bench-train-throughput: setup ## Benchmark: cpu-full training images/s, float32 vs mixed bfloat16, XLA, threads
	$(PY) -m bench.train_throughput

bench-train-input: setup ## Training input pipeline vs training-step throughput (DATA=...)
	$(PY) -m bench.train_input --data $(DATA)

bench-warm-start: setup ## Warm start vs from scratch on a catalogue grown by 10% (demo preset, 6,000 products of the shared zip)
	$(PY) -m bench.warm_start --source $(SHARED_ZIP) --limit 6000 --preset demo --out runs/bench-warm-start-$$(date +%Y%m%d-%H%M%S)

bench-pipeline-time: setup ## make run's pipeline time: this checkout vs BASELINE=rev (default: before the start-up work), demo data
	$(PY) -m bench.pipeline_time $(if $(BASELINE),--baseline $(BASELINE)) --out runs/bench-pipeline-time-$$(date +%Y%m%d-%H%M%S)

bench-gpu-train: setup ## GPU: unified vs bare ResNet-50 training images/s (JAX backend, bf16, batch 256)
	KERAS_BACKEND=jax $(PY) -m bench.gpu_train_step --batch-size 256 --precision mixed_bfloat16

bench-evaluate: setup ## Benchmark the evaluate step (MODEL=dir DATA=dir, cpu-full preset)
	$(PY) -m bench.evaluate --preset cpu-full --model $(MODEL) --data $(DATA)

train: setup ## Train on preprocessed shards: make train DATA=dir OUT=dir PRESET=demo
	$(FASHION) train --data $(DATA) --out $(OUT) --preset $(or $(PRESET),demo)

evaluate: setup ## Evaluate a model and decide the gate: make evaluate MODEL=dir DATA=dir OUT=dir [PRESET=demo]
	$(FASHION) evaluate --preset $(or $(PRESET),demo) --model $(MODEL) --data $(DATA) --out $(OUT)

serve: setup ## Serve the model base path over gRPC :8500 and REST :8501 (TF Serving API)
	$(FASHION) serve --model_base_path $(WORKDIR)/models/fashion --enable_batching=true

mlflow-ui: setup ## Open the MLflow UI on the embedded store of $(WORKDIR)
	$(FASHION) mlflow-ui --workdir $(WORKDIR)

# Container images and the compiled pipeline for a cluster (README "Run on a cluster").
IMAGE_REGISTRY ?=
IMAGE_TAG ?= latest
IMAGE ?= $(IMAGE_REGISTRY)fashion-classifier:$(IMAGE_TAG)
GPU_IMAGE ?= $(IMAGE_REGISTRY)fashion-classifier-gpu:$(IMAGE_TAG)
PRESET ?= demo
CONFIG ?=
PIPELINE_YAML ?= pipeline.yaml
# The commit baked into the images (git_commit() reads it there: an image has no repository), with
# -dirty when tracked files have uncommitted changes; evaluated only by the targets that use it.
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)$(shell git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo -dirty)

images: ## Build the component (CPU + Beam) and GPU training images for a registry (IMAGE_REGISTRY=reg/ IMAGE_TAG=v1)
	DOCKER_BUILDKIT=1 docker build -f infra/docker/component.Dockerfile --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(IMAGE) .
	DOCKER_BUILDKIT=1 docker build -f infra/docker/gpu.Dockerfile --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(GPU_IMAGE) .

compile: setup ## Compile the pipeline to pipeline.yaml for Kubeflow (PRESET=, CONFIG=cluster.yaml)
	$(FASHION) compile --preset $(PRESET) $(if $(CONFIG),--config $(CONFIG)) --out $(PIPELINE_YAML) \
		--set pipeline.base_image=$(IMAGE) --set pipeline.gpu_image=$(GPU_IMAGE)

clean: ## Remove run outputs (keeps the virtual environment)
	rm -rf runs .pytest_cache

.PHONY: help setup run test protos lint bench-ingest bench-preprocess bench-serving bench-train bench-compare-models bench-train-throughput bench-train-input bench-warm-start bench-pipeline-time \
	bench-gpu-train bench-evaluate bench-compare-heads train evaluate serve mlflow-ui images compile clean
