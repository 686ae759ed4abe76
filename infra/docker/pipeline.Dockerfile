# syntax=docker/dockerfile:1
# The pipeline image, one for every place the pipeline runs: Airflow's scheduler, DAG processor and workers
# (the official chart, infra/airflow/values.yaml), the GPU training pod the recall_training DAG launches
# (`recall pipeline step train`) and the Kubeflow pipeline's steps (infra/kubeflow/pipeline.py).
#
#   docker build -f infra/docker/pipeline.Dockerfile -t ghcr.io/recall-mlops/recall-pipeline:0.1.0 .
#   GPU nodes (CUDA torch):  --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
#
# Every package comes from infra/docker/constraints.txt (a freeze of the environment the tests pass in):
# rebuilding gives the same packages. Tag it with the project's version, never a moving tag.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

# --- build: the project's wheel (the source tree stays out of the final image) ----------------------------
FROM ${AIRFLOW_IMAGE} AS build
# Directories owned by the build's user whatever the builder (only BuildKit gives WORKDIR to USER).
USER root
RUN install -d -o airflow -g 0 /tmp/src
USER airflow
WORKDIR /tmp/src
COPY --chown=airflow:root pyproject.toml README.md ./
COPY --chown=airflow:root models ./models
COPY --chown=airflow:root components ./components
COPY --chown=airflow:root serving ./serving
COPY --chown=airflow:root dags ./dags
COPY --chown=airflow:root feature_repo ./feature_repo
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels .

# --- runtime ---------------------------------------------------------------------------------------------
FROM ${AIRFLOW_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The base image's user (airflow, uid 50000) and entrypoint: the chart's commands (`airflow scheduler`, ...)
# go through it; the training pod and Kubeflow's steps set their own command (`recall`, `python3 -m ...`).
USER root
RUN install -d -o airflow -g 0 /opt/recall/app
USER airflow
COPY --chown=airflow:root infra/docker/constraints.txt infra/kubeflow/requirements.txt /tmp/req/
COPY --from=build /tmp/wheels /tmp/wheels
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir -c /tmp/req/constraints.txt /tmp/wheels/*.whl \
 && pip install --no-cache-dir --no-deps -r /tmp/req/requirements.txt \
 && recall --help >/dev/null
# Run configs and DAG files at fixed absolute paths: the DAGs resolve configs against RECALL_HOME, and a pod
# started from this image finds the same files as the worker that launched it.
ENV RECALL_HOME=/opt/recall/app
WORKDIR /opt/recall/app
COPY --chown=airflow:root configs ./configs
COPY --chown=airflow:root dags ./dags
