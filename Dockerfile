# The reconciler installed into the official Airflow image: every Airflow component of docker-compose.yml
# (api-server, scheduler, dag-processor, triggerer, celery workers) runs this image.
# The Python version matches the one requirements.lock was resolved on.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

USER root
RUN mkdir -p /opt/reconciler /opt/airflow/auth /opt/airflow/reconciler-home \
    && chown -R airflow:0 /opt/reconciler /opt/airflow/auth /opt/airflow/reconciler-home
USER airflow

# Dependencies first (cached while only the code changes), with the project's own lock: the same versions
# as the test suite (apache-airflow stays at the image's 3.3.2, pinned in the lock too).
COPY --chown=airflow:0 pyproject.toml requirements.lock README.md /opt/reconciler/
COPY --chown=airflow:0 reconciler /opt/reconciler/reconciler
RUN PIP_CONSTRAINT="" pip install --no-cache-dir -c /opt/reconciler/requirements.lock /opt/reconciler

COPY --chown=airflow:0 expectations /opt/reconciler/expectations
COPY --chown=airflow:0 dags /opt/airflow/dags

ENV RECONCILER_EXPECTATIONS_DIR=/opt/reconciler/expectations \
    RECONCILER_HOME=/opt/airflow/reconciler-home
