# The pipeline's component image (CPU): every step but GPU training runs in it, and so do the
# Apache Beam workers when preprocessing runs on Dataflow (--sdk_container_image), so the
# pipeline and its workers share one set of pinned dependencies and one copy of the code.
#
# Build from the repository root:  make images   (or)
#   docker build -f infra/docker/component.Dockerfile --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t fashion-classifier:latest .
# The tag must match config.pipeline.base_image of the compiled pipeline, and name a registry the
# cluster pulls from (`fashion compile` warns when it does not).

ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0

# Beam's SDK worker harness (boot binary), for use as a Dataflow custom container.
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam

FROM python:${PYTHON_VERSION}-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# Dependencies first: this layer is rebuilt only when the lock file changes. requirements.lock holds
# the runtime pins only; the test tools (requirements-test.lock) stay out of the image.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY --from=beam /opt/apache/beam /opt/apache/beam

# The project itself, installed in place so configs/ (presets) and data/ (demo, samples) sit where
# the code looks for them.
COPY pyproject.toml README.md ./
COPY core ./core
COPY components ./components
COPY pipeline ./pipeline
COPY serving ./serving
COPY configs ./configs
COPY data ./data
RUN pip install --no-deps -e . \
    && python -c "import core.config, pipeline.dag, serving.contract"
# The commit this image was built from (`make images` passes it): the steps record it in MLflow and
# on the model artifact, and an image has no git repository to ask. Last, so a new commit rebuilds
# no earlier layer.
ARG GIT_COMMIT=""
ENV FASHION_GIT_COMMIT=${GIT_COMMIT}
# No USER here: KFP's launcher writes step outputs under root-owned mount points (/gcs, /minio);
# clusters that require non-root pods set runAsUser and an fsGroup in the pipeline's pod spec.

# Kubeflow sets each step's command, which replaces this entrypoint; Dataflow starts the Beam
# worker harness through it.
ENTRYPOINT ["/opt/apache/beam/boot"]
