"""The Feast feature repository (definitions, context features, store configs).

Importing this package before Feast makes ``import feast`` about 7 s faster per process (9.5 s → 2.5 s
here): Feast decorates its classes with typeguard's ``@typechecked``, which re-parses and recompiles a
whole module for every decorated function at import time. Every Airflow task, Kubeflow step and
serving worker that touches Feast pays that on start, so the decorator is made a no-op — what typeguard
itself does under ``python -O`` (in this environment only Feast uses it). ``RECALL_FEAST_TYPECHECKS=1``
keeps the checks (a debugging aid: a wrong argument type to a Feast class fails early with a
``TypeCheckError``). ``benchmarks/imports.py`` measures it.
"""

from __future__ import annotations

import os
import sys

if "feast" not in sys.modules and os.environ.get("RECALL_FEAST_TYPECHECKS") != "1":
    import typeguard

    def _unchecked(target=None, **_):
        """``@typechecked`` and ``@typechecked(...)`` without instrumentation."""
        return (lambda f: f) if target is None else target

    _unchecked.__wrapped__ = typeguard.typechecked
    typeguard.typechecked = _unchecked
