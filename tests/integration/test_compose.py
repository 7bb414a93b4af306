"""docker-compose.yml is valid Compose (checked offline by ../shared/tools/check-compose, no Docker engine here),
has the agreed shape, and agrees with the Dockerfile, pyproject.toml and the README's deployment section."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHECK_COMPOSE = (ROOT / ".." / "shared" / "tools" / "check-compose").resolve()
COMPOSE = ROOT / "docker-compose.yml"
CORE_SERVICES = {"airflow-db", "ledger-db", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-triggerer"}
CELERY_SERVICES = {"redis", "airflow-worker"}
#: Settings the README tells users they may add to the environment (not set by the compose file itself).
OPTIONAL_ENVIRONMENT = {"AIRFLOW_CONN_RECONCILER_ALERTS", "AIRFLOW_CONN_RECONCILER_SMTP"}
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as Compose reads it (anchors and ``<<`` merges resolved by PyYAML's safe loader)."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _airflow_version() -> str:
    pins = re.findall(r'"apache-airflow==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert len(pins) == 1, pins
    return pins[0]


def readme_deployment_section(readme: str) -> str:
    """The README's "## Deployment ..." section (up to the next "## " heading)."""
    match = re.search(r"^## Deployment\b.*?(?=^## |\Z)", readme, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Deployment ...' section describing docker-compose.yml"
    return match.group(0)


def compose_variables(text: str) -> set[str]:
    """The ``${VAR}`` / ``${VAR:-default}`` / ``${VAR:?message}`` names a compose file interpolates."""
    return set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))


def test_check_compose_accepts_the_file() -> None:
    """The shared offline validator (YAML as Compose reads it, the compose-spec schema, cross-references) passes."""
    assert CHECK_COMPOSE.exists(), f"{CHECK_COMPOSE} is missing: CI needs shared/ beside the clone"
    result = subprocess.run([sys.executable, str(CHECK_COMPOSE), str(COMPOSE)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    """Airflow 3's components plus two PostgreSQL 16 databases by default; Redis and workers in profile celery."""
    services = compose["services"]
    assert set(services) == CORE_SERVICES | CELERY_SERVICES
    for name in CORE_SERVICES:
        assert "profiles" not in services[name], name
    for name in CELERY_SERVICES:
        assert services[name]["profiles"] == ["celery"], name
    assert services["airflow-db"]["image"] == "postgres:16" and services["ledger-db"]["image"] == "postgres:16"
    assert services["redis"]["image"].startswith("redis:")
    assert services["airflow-worker"]["command"].startswith("celery worker")
    assert "container_name" not in services["airflow-worker"]  # --scale needs unnamed containers
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands == {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                        "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer",
                        "airflow-worker": "celery worker --concurrency ${AIRFLOW_WORKER_CONCURRENCY:-4}"}


def test_airflow_services_run_the_project_image(compose: dict[str, Any]) -> None:
    """Every Airflow service is built from the Dockerfile, FROM the official image of the pinned Airflow version."""
    version = _airflow_version()
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG AIRFLOW_IMAGE=(\S+)", dockerfile, flags=re.MULTILINE)
    assert base and base.group(1).startswith(f"apache/airflow:{version}"), base
    assert re.search(r"^FROM \$\{AIRFLOW_IMAGE\}", dockerfile, flags=re.MULTILINE)
    assert "requirements.lock" in dockerfile and "COPY --chown=airflow:0 dags /opt/airflow/dags" in dockerfile
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        assert service["build"]["dockerfile"] == "Dockerfile", name
        assert service["image"] == compose["services"]["airflow-scheduler"]["image"], name


def test_airflow_environment_wires_ledger_and_components(compose: dict[str, Any]) -> None:
    """All Airflow services get the ledger_db connection, one metadata DB, one JWT secret and the api-server's
    execution API; the init service migrates both databases and creates the pool."""
    services = compose["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW_CONN_LEDGER_DB"].startswith("${LEDGER_DATABASE_URL:-postgresql://"), name
        assert "@ledger-db:5432/ledger" in env["AIRFLOW_CONN_LEDGER_DB"], name
        assert env["RECONCILER_DATABASE_URL"] == env["AIRFLOW_CONN_LEDGER_DB"], name
        assert "@airflow-db:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET:?"), name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}", name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0", name
    init = " ".join(services["airflow-init"]["command"])
    for step in ("airflow db migrate", "airflow pools set ledger_db", "reconciler db upgrade"):
        assert step in init
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name


def test_celery_profile_uses_the_settings_the_celery_test_runs_with(compose: dict[str, Any]) -> None:
    """The Celery profile is what tests/dags/test_celery_workers.py runs for real: the same worker command, the
    Redis broker URL's shape, the db+postgresql:// result backend on Airflow's metadata database, and the
    api-server's execution API for every component (so workers can run their tasks)."""
    from tests.fix_celery import CONCURRENCY_FLAG, WORKER_COMMAND, celery_environment

    services = compose["services"]
    worker = services["airflow-worker"]
    command = worker["command"].split()
    assert command[:len(WORKER_COMMAND)] == list(WORKER_COMMAND) and command[len(WORKER_COMMAND)] == CONCURRENCY_FLAG
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        wanted = celery_environment(broker="redis://redis:6379/0",
                                    sql_alchemy_conn=env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
                                    api_server="http://airflow-apiserver:8080")
        wanted["AIRFLOW__CORE__EXECUTOR"] = "${AIRFLOW_EXECUTOR:-LocalExecutor}"  # CeleryExecutor with the profile
        assert {key: env.get(key) for key in wanted} == wanted, name


def test_readme_deployment_section_agrees_with_the_compose_file() -> None:
    """The README names every service, the base image, every variable the compose file reads, and the
    celery/scale commands; it names no service or variable the file does not have."""
    section = readme_deployment_section((ROOT / "README.md").read_text())
    text = COMPOSE.read_text()
    services = set(yaml.safe_load(text)["services"])
    quoted = set(re.findall(r"`([^`\n]+)`", section))
    assert services <= quoted, f"services missing from the README: {sorted(services - quoted)}"
    service_like = {token for token in quoted if re.fullmatch(r"(airflow|ledger)-[a-z-]+|redis", token)}
    assert service_like <= services, f"README names services the compose file lacks: {sorted(service_like - services)}"
    variables = compose_variables(text)
    named = {token for token in quoted if re.fullmatch(r"[A-Z][A-Z0-9_]+", token)}
    assert variables <= named, f"compose variables the README does not explain: {sorted(variables - named)}"
    environment_keys = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+):", text, flags=re.MULTILINE))
    unknown = named - variables - environment_keys - OPTIONAL_ENVIRONMENT
    assert not unknown, f"README variables the compose file does not use: {sorted(unknown)}"
    assert f"apache/airflow:{_airflow_version()}" in section
    assert "--profile celery" in section and "--scale airflow-worker=" in section
