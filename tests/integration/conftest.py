import pytest

from components.airflow_local import ensure_db, environment


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    """A fresh SQLite metadata database (``airflow db migrate``) for this module's DAG runs."""
    env = environment(tmp_path_factory.mktemp("airflow"), {"AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"})
    ensure_db(env)
    return env
