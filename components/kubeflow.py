"""The Kubeflow pipeline (``infra/kubeflow/pipeline.py``): compiled to the YAML Kubeflow Pipelines runs, or run
here end to end with ``kfp.local``'s subprocess runner (each step a subprocess of this environment instead of
a pod of the pipeline image). ``recall pipeline kubeflow [--local]``."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_FILE = ROOT / "infra" / "kubeflow" / "pipeline.py"
REQUIREMENTS = "infra/kubeflow/requirements.txt"


class KubeflowUnavailable(RuntimeError):
    """The kfp SDK or the pipeline file is missing."""


def module() -> Any:
    """infra/kubeflow/pipeline.py, loaded from this checkout."""
    try:
        import kfp  # noqa: F401
    except ImportError:
        hint = f"pip install --no-deps -r {REQUIREMENTS}"
        raise KubeflowUnavailable(f"the Kubeflow Pipelines SDK is not installed: {hint}") from None
    if not PIPELINE_FILE.is_file():
        raise KubeflowUnavailable(f"{PIPELINE_FILE} is missing: run from a checkout of the project")
    spec = importlib.util.spec_from_file_location("recall_kubeflow_pipeline", PIPELINE_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(cfg: Any) -> Any:
    """The pipeline function for the run config's ``kubernetes`` settings (image, GPU, node pool, volume)."""
    return module().build(cfg.kubernetes)


def compile_pipeline(cfg: Any, out: str | Path) -> Path:
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(cfg), str(out))
    return out


def run_local(cfg: Any, config: str | Path, overrides: list[str], run_dir: Path, force: bool = False) -> None:
    """Runs the pipeline here with kfp.local (steps as subprocesses of this Python, no venv per step), its
    artefacts under ``<out_dir>/kubeflow``. What the run did is in ``run_dir`` (gate.json, registered.json or
    nothing_new.json); a failed step (a failed gate included) raises RuntimeError."""
    import kfp.local

    root = (Path(cfg.out_dir) / "kubeflow").resolve()
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    fn = build(cfg)
    with warnings.catch_warnings():  # "not a Python base image": the steps run in this environment instead
        warnings.filterwarnings("ignore", message=".*base image.*", category=RuntimeWarning)
        fn(config=str(Path(config).resolve()), overrides=list(overrides), run_name=run_dir.name, force=force)
