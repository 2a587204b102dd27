# The GPU training image: the same project and pins as the component image, with TensorFlow's
# CUDA and cuDNN libraries (the `and-cuda` extra) so `train-model` uses the node's GPUs.
# The pipeline uses it for training when config.pipeline.accelerator_count > 0.
#
# Build from the repository root:  make images   (or)
#   docker build -f infra/docker/gpu.Dockerfile --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t fashion-classifier-gpu:latest .
# The tag must match config.pipeline.gpu_image of the compiled pipeline, and name a registry the
# cluster pulls from (`fashion compile` warns when it does not).

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm
ARG TF_VERSION=2.21.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

COPY requirements.lock ./
# The runtime lock (no test tools) pins tensorflow itself; the extra adds only the matching NVIDIA
# runtime wheels.
RUN pip install -r requirements.lock "tensorflow[and-cuda]==${TF_VERSION}"

COPY pyproject.toml README.md ./
COPY core ./core
COPY components ./components
COPY pipeline ./pipeline
COPY serving ./serving
COPY configs ./configs
RUN pip install --no-deps -e . \
    && python -c "import core.config, pipeline.dag"
# The commit this image was built from (`make images` passes it): the steps record it in MLflow and
# on the model artifact, and an image has no git repository to ask. Last, so a new commit rebuilds
# no earlier layer.
ARG GIT_COMMIT=""
ENV FASHION_GIT_COMMIT=${GIT_COMMIT}
# No USER here: KFP's launcher writes step outputs under root-owned mount points (/gcs, /minio);
# clusters that require non-root pods set runAsUser and an fsGroup in the pipeline's pod spec.
