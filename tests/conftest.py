from __future__ import annotations

import os
import tempfile

# A private BentoML model store for the test session (read by bentoml at import time).
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="recall-bentoml-")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
# A private MLflow store per test process (components.tracking reads $MLFLOW_TRACKING_URI; DAG runs inherit it).
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='recall-mlflow-')}/mlflow.db"

import pytest  # noqa: E402
import torch  # noqa: E402

from components.datasets import SyntheticConfig, encode, generate_synthetic  # noqa: E402
from models.data import leave_last_out  # noqa: E402

# Two cores: one torch thread per pytest-xdist worker (`make test` runs two), both when running alone.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def tiny():
    """A small synthetic dataset (encoded, split) shared by the fast tests."""
    tables = generate_synthetic(SyntheticConfig(n_users=60, n_items=40, n_interactions=1500, n_clusters=4, seed=3))
    enc = encode(tables, max_len=20)
    return tables, enc, leave_last_out(enc.data)
