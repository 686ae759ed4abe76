"""Helpers of the Airflow DAG tests."""

from pathlib import Path

FEATURES_URI = "file:///recall/features"  # the Asset recall_features updates and recall_training is scheduled on


def tree(root: Path) -> list[str]:
    """Every path under ``root``, relative and sorted (empty if it does not exist)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []
