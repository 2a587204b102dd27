# The MLflow tracking server for the cluster: the project's pinned MLflow with the PostgreSQL
# driver (backend store) and google-cloud-storage (artifact store on gs://).
#
#   docker build -f infra/docker/mlflow.Dockerfile -t fashion-mlflow:latest .
# infra/k8s/mlflow runs it.

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements.lock /tmp/requirements.lock
# Only MLflow's server side from the lock (same versions as the pipeline's client), plus the driver.
RUN grep -E '^(mlflow|mlflow-skinny|mlflow-tracing|google-cloud-storage)==' /tmp/requirements.lock > /tmp/server.txt \
    && pip install -r /tmp/server.txt psycopg2-binary==2.9.13 \
    && useradd --create-home --uid 1000 mlflow
USER 1000
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
