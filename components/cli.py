"""The ``recall`` command: thin Typer adapters over the components."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from models.registry import MODELS

_verbose = False  # --verbose: expected failures show their traceback too


def _exit_code(e: Exception) -> int | None:
    """The exit code of an expected failure (2: the command line itself was wrong), None for a bug."""
    from .config import ConfigError
    from .gate import GateFailed
    from .kubeflow import KubeflowUnavailable
    from .promote import PromotionRefused

    if isinstance(e, ConfigError):
        return 2
    if isinstance(e, ValueError | FileNotFoundError | GateFailed | PromotionRefused | KubeflowUnavailable):
        return 1  # bad data or input, a missing file, a failed gate, a refused promotion, no Kubeflow SDK
    return None


class _PlainErrors(TyperGroup):
    """Expected failures end in one line and a non-zero exit; a traceback only with --verbose or for a bug."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            code = _exit_code(e)
            if code is None or _verbose:
                raise
            _fail(str(e), code)


app = typer.Typer(
    cls=_PlainErrors,
    help="Deep-recall MLOps: data, training, evaluation.",
    no_args_is_help=True,
    add_completion=True,  # recall --install-completion (bash, zsh, fish, PowerShell)
)
data_app = typer.Typer(help="Datasets: generate, convert, describe.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(data_app, name="data")
features_app = typer.Typer(
    help="Feature store: ingest, validate, Feast apply/materialize, training sets.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
app.add_typer(features_app, name="features")
ab_app = typer.Typer(help="A/B experiments: start one, report on it.", no_args_is_help=True)
app.add_typer(ab_app, name="ab")
pipeline_app = typer.Typer(
    help="The training pipeline: every step without Airflow (run), one step (step), or a DAG through Airflow.",
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")
config_app = typer.Typer(help="Run settings: the resolved config, the schema of every setting.", no_args_is_help=True)
app.add_typer(config_app, name="config")

RoutingOpt = typer.Option(
    Path(os.environ.get("RECALL_ROUTING", "serving/routing.yaml")), "--routing", help="Routing file."
)
AuditOpt = typer.Option(
    Path(os.environ.get("RECALL_AUDIT_LOG", "runs/serving/audit.jsonl")), "--audit-log", help="Audit log."
)
LogOpt = typer.Option(
    Path(os.environ.get("RECALL_RESPONSE_LOG", "runs/serving/responses.jsonl")),
    "--log",
    help="The service's response log.",
)
FeedbackOpt = typer.Option(
    Path(os.environ.get("RECALL_FEEDBACK", "runs/feedback")), "--feedback", help="Feedback file or dir."
)
ReportsOpt = typer.Option(Path("runs/ab"), "--out", help="Where reports go.")
console = Console(width=max(130, shutil.get_terminal_size().columns))

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML run config (see configs/).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a setting: key=value, e.g. train.epochs=5 (repeatable).")


@contextmanager
def _refusals():
    """A promotion rule said no: print why and exit 1."""
    from .promote import PromotionRefused

    try:
        yield
    except PromotionRefused as e:
        console.print(f"[red]refused:[/red] {e}")
        raise typer.Exit(1) from None


def _fail(message: str, code: int = 1) -> NoReturn:
    """A user's mistake or a refusal: one line, no traceback."""
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)  # one line, however long
    raise typer.Exit(code)


def _config(config: Path | None, overrides: list[str] | None):
    from .config import load_config

    try:
        return load_config(config, overrides or [])
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), 2)


def _metrics(title: str, rows: dict[str, dict[str, float]], ks: tuple[int, ...]) -> None:
    t = Table(title=title)
    t.add_column("model")
    for k in ks:
        for m in ("recall", "ndcg", "hit", "mrr"):
            t.add_column(f"{m}@{k}", justify="right")
    for name, m in rows.items():
        t.add_row(name, *[f"{m[f'{x}@{k}']:.4f}" for k in ks for x in ("recall", "ndcg", "hit", "mrr")])
    console.print(t)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level; tracebacks for every error."),
) -> None:
    global _verbose
    _verbose = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("recall.progress").setLevel(logging.INFO)  # training progress where no bar can draw
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # "could not load AVX512 …" is no error
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the MLflow store's schema migrations
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers up on import


@config_app.command("show")
def config_show(config: Path = ConfigOpt, overrides: list[str] = SetOpt) -> None:
    """Print the run config as a run would use it: defaults ← file ← site settings ← -s overrides."""
    from .config import resolved

    typer.echo(resolved(_config(config, overrides)), nl=False)


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of a run config: every setting's type, range, default and description."""
    from .config import schema

    typer.echo(json.dumps(schema(), indent=2, ensure_ascii=False))


@data_app.command("generate")
def data_generate(
    config: Path = ConfigOpt,
    overrides: list[str] = SetOpt,
    out: Path = typer.Option(Path("runs/data"), help="Directory for the canonical parquet tables."),
) -> None:
    """Load or generate the configured source and write the canonical tables as parquet."""
    from .train import load_tables

    tables = load_tables(_config(config, overrides)).write(out)
    console.print(f"wrote canonical tables to {tables}")


@data_app.command("stats")
def data_stats(config: Path = ConfigOpt, overrides: list[str] = SetOpt) -> None:
    """Describe the configured dataset: sizes, sequence lengths, split."""
    from .train import prepare

    tables, enc, split = prepare(_config(config, overrides))
    lens = enc.data.lengths[1:].float()
    console.print(
        json.dumps(
            {
                "users": enc.data.n_users - 1,
                "items": enc.data.n_items - 1,
                "interactions": len(tables.interactions),
                "mean_events_per_user": round(lens.mean().item(), 2),
                "max_events_per_user": int(lens.max()),
                "eval_users": int(split.eval_users("test").numel()),
                "fingerprint": tables.fingerprint(),
            },
            indent=2,
        )
    )


RegistryOpt = typer.Option(None, "--registry", help="Registry root (default: $RECALL_REGISTRY or runs/registry).")


def _registry(root: Path | None):
    from .registry import Registry

    return Registry(root)


@models_app.command("list")
def models_list(
    registry: Path = RegistryOpt,
    architectures: bool = typer.Option(False, "--architectures", help="List the model architectures instead."),
) -> None:
    """Registered model versions (or, with --architectures, the models that can be trained)."""
    if architectures:
        for name, cls in MODELS.items():
            kind = "causal sequence" if cls.causal else "point"
            console.print(f"{name:14s} {cls.__name__:12s} ({kind}{', multi-interest' if cls.multi_interest else ''})")
        return
    from .registry import verify

    reg = _registry(registry)
    t = Table(title=f"model versions in {reg.root}")
    for col in ("tag", "created", "items", "dim", "index", "ANN recall@100", "test ndcg@10", "gate", "status"):
        t.add_column(col)
    for name in reg.models():
        for v in reg.versions(name):
            path = reg.root / name / v
            problems = verify(path)
            meta = json.loads((path / "model.json").read_text()) if (path / "model.json").is_file() else {}
            test = (meta.get("metrics") or {}).get("test") or {}
            gate = meta.get("gate") or {}
            report = (meta.get("index") or {}).get("report", {})
            t.add_row(
                f"recall-{name}:{v}",
                str(meta.get("created_at", "?")),
                str(meta.get("n_items", "?")),
                str(meta.get("embedding_dim", "?")),
                str(report.get("kind", "?")),
                f"{report['recall_at_k']:.4f}" if "recall_at_k" in report else "?",
                f"{test['ndcg@10']:.4f}" if "ndcg@10" in test else "-",
                "-" if not gate else ("passed" if gate.get("passed") else "failed"),
                "[green]ok[/green]" if not problems else f"[red]broken[/red]: {problems[0]}",
            )
    console.print(
        t if t.row_count else f"no model versions in {reg.root}; create one with `recall models export RUN_DIR`"
    )


@models_app.command("show")
def models_show(
    ref: str = typer.Argument(..., help="recall-sasrec:v3, sasrec:v3, or sasrec for the latest version."),
    registry: Path = RegistryOpt,
) -> None:
    """Verify one version and print its model.json (checksums and config folded)."""
    from .registry import VersionError

    try:
        mv = _registry(registry).get(ref)
    except VersionError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    meta = {k: v for k, v in mv.meta.items() if k not in ("checksums", "config")}
    meta["files"] = sorted(mv.meta["checksums"])
    meta["path"] = str(mv.path)
    console.print_json(json.dumps(meta, default=str))


@models_app.command("export")
def models_export(
    run_dir: Path = typer.Argument(..., help="A directory written by `recall train`."),
    registry: Path = RegistryOpt,
    index: str = typer.Option(
        None, help="Faiss index: flat | hnsw | ivf_flat | ivf_pq (default: the run's index.kind)."
    ),
    version: str = typer.Option(None, help="Version name v<N> (default: the next one)."),
    bentoml_store: bool = typer.Option(True, "--bentoml/--no-bentoml", help="Also save to the BentoML model store."),
) -> None:
    """Export ONNX towers (parity-checked), build the Faiss index, register a version."""
    from .index import IndexConfig
    from .register import register_run

    try:
        index_cfg = IndexConfig(kind=index) if index else None
        mv = register_run(run_dir, _registry(registry), index_cfg, version, to_bentoml=bentoml_store)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), 2)
    par = mv.meta["export"]["parity"]
    rep = mv.meta["index"]["report"]
    console.print(
        f"registered [bold]{mv.tag}[/bold] at {mv.path}\n"
        f"  parity max|onnx-torch|: user {par['user']['max_abs_diff']:.2e}, item {par['item']['max_abs_diff']:.2e}\n"
        f"  index {rep['kind']}: {rep['n_items']} items, d={rep['dim']}, built in {rep['build_seconds']:.2f}s, "
        f"{rep['size_bytes'] / 1e6:.2f} MB, recall@{rep['k']} vs exact {rep['recall_at_k']:.4f}"
    )


def _feature_steps(
    config: Path | None, overrides: list[str] | None, steps: tuple[str, ...], start: str | None = None,
    end: str | None = None,
) -> dict:  # fmt: skip
    from . import snapshots as sn
    from .features import run_pipeline
    from .validate import DataValidationError

    cfg = _config(config, overrides)
    try:
        iv = sn.interval(start, end) if (start or end) else None
        out = run_pipeline(cfg, steps, iv)
    except DataValidationError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), 2)
    t = Table(title=f"features: {', '.join(steps)} → {cfg.features.dir} ({cfg.features.online} online store)")
    t.add_column("step")
    t.add_column("seconds", justify="right")
    for step, secs in out["seconds"].items():
        t.add_row(step, f"{secs:.1f}")
    t.add_row("[bold]total[/bold]", f"[bold]{sum(out['seconds'].values()):.1f}[/bold]")
    console.print(t)
    if out["rows"]:
        console.print("rows: " + ", ".join(f"{k} {v:,}" for k, v in out["rows"].items()))
    if out.get("data_docs"):
        console.print(f"validation report: {out['data_docs']}")
    if out.get("status") == "new":
        done = "published" if out.get("published") else "built (not yet published: run the remaining steps)"
        console.print(f"snapshot {out['snapshot']} of {out['interval']}: {out['new_events']:,} new events, {done}")
    else:
        console.print(f"nothing to do: {out.get('why')}")
    return out


StartOpt = typer.Option(None, "--start", help="Data interval start (ISO-8601; default: the last stored end).")
EndOpt = typer.Option(None, "--end", help="Data interval end (ISO-8601; default: now).")


@features_app.command("run")
def features_run(
    config: Path = ConfigOpt, overrides: list[str] = SetOpt, start: str = StartOpt, end: str = EndOpt
) -> None:
    """Everything for a data interval: ingest → validate → apply → materialize, then publish the snapshot."""
    from .features import STEPS

    _feature_steps(config, overrides, STEPS, start, end)


@features_app.command("ingest")
def features_ingest(
    config: Path = ConfigOpt, overrides: list[str] = SetOpt, start: str = StartOpt, end: str = EndOpt
) -> None:
    """Store the interval's events and build a snapshot (canonical tables + user_behaviour) under features.dir."""
    _feature_steps(config, overrides, ("ingest",), start, end)


@features_app.command("validate")
def features_validate(config: Path = ConfigOpt, overrides: list[str] = SetOpt) -> None:
    """Run the Great Expectations suites; exit 1 naming each failed expectation."""
    _feature_steps(config, overrides, ("validate",))


@features_app.command("apply")
def features_apply(config: Path = ConfigOpt, overrides: list[str] = SetOpt) -> None:
    """Register the Feast entities, feature views and services."""
    _feature_steps(config, overrides, ("apply",))


@features_app.command("materialize")
def features_materialize(config: Path = ConfigOpt, overrides: list[str] = SetOpt) -> None:
    """Load the latest values into the online store (incremental after the first run)."""
    _feature_steps(config, overrides, ("materialize",))


@features_app.command("online")
def features_online(
    users: list[int] = typer.Argument(..., help="Raw user ids."),
    config: Path = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Read users' online features (what serving sees)."""
    from feature_repo.definitions import service_for

    from .features import StoreConfig, online_features, store

    cfg = _config(config, overrides)
    fs = store(StoreConfig(cfg.features.dir, cfg.features.online, cfg.features.redis))
    console.print_json(json.dumps(online_features(fs, users, service_for(cfg.model)), default=str))


def _ab_report(experiment: str, log: Path, feedback: Path, out: Path, k: int, window_h: float, fixed: bool):
    from .ab import ReportConfig, run_report

    cfg = ReportConfig(experiment, k=k, window_s=window_h * 3600, sequential=not fixed)
    return run_report(log, feedback, cfg, out)


@ab_app.command("report")
def ab_report(
    experiment: str = typer.Option(..., "--experiment", "-e"),
    log: Path = LogOpt,
    feedback: Path = FeedbackOpt,
    out: Path = ReportsOpt,
    k: int = typer.Option(10, help="CTR@K cut-off."),
    window_h: float = typer.Option(24.0, help="Attribution window in hours."),
    fixed: bool = typer.Option(False, "--fixed-horizon", help="Decide on the z-test instead of the always-valid test."),
) -> None:
    """Per-variant hit rate, CTR@K, differences vs control with CIs and tests, guardrails → JSON + HTML."""
    from .ab import decision

    try:
        rep = _ab_report(experiment, log, feedback, out, k, window_h, fixed)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), 2)
    t = Table(title=f"experiment {experiment}: {rep['attributed_events']:,} attributed feedback events")
    for col in ("variant", "users", "requests", "hit rate", f"CTR@{k}", "p99 ms", "fallback"):
        t.add_column(col, justify="right")
    for v, r in rep["variants"].items():
        lo, hi = r["hit_rate_ci"]
        t.add_row(v, f"{r['users']:,}", f"{r['requests']:,}", f"{r['hit_rate']:.4f} [{lo:.4f}, {hi:.4f}]",
                  f"{r[f'ctr@{k}']:.4f}", f"{r['latency_p99_ms']:.1f}", f"{r['fallback_rate']:.3f}")  # fmt: skip
    console.print(t)
    for v, c in rep["comparisons"].items():
        h = c["hit_rate"]
        ok, why = decision(rep, v)
        console.print(
            f"{v} vs control: {h['diff']:+.4f} [{h['ci_low']:+.4f}, {h['ci_high']:+.4f}], z-test p {h['p_value']:.3g}, "
            f"always-valid p {h['always_valid_p']:.3g} → "
            + ("[green]promote[/green]" if ok else "[yellow]hold[/yellow]")
            + f": {why}"
        )
    console.print(f"report: {rep['html']} and {rep['json']}")


@ab_app.command("start")
def ab_start(
    challenger: str = typer.Option(..., help="Registered version to test, e.g. recall-sasrec:v4."),
    weight: float = typer.Option(10, help="Percent of users for the challenger."),
    name: str = typer.Option(None, help="Experiment name (default: from the challenger)."),
    reason: str = typer.Option("", help="Why (goes into the audit log)."),
    routing: Path = RoutingOpt,
    audit_log: Path = AuditOpt,
    registry: Path = RegistryOpt,
) -> None:
    """Start an experiment: the current default (control) against a challenger."""
    from .promote import start

    with _refusals():
        new = start(routing, challenger, weight, audit_log, _registry(registry), name, reason)
    console.print(f"started {new.experiments[-1].name}: {new.default} vs {challenger} at {weight}% → {routing}")


@app.command()
def promote(
    experiment: str = typer.Option(..., "--experiment", "-e"),
    variant: str = typer.Option("treatment", "--variant"),
    force: bool = typer.Option(False, "--force", help="Promote without a significant win (needs --reason)."),
    reason: str = typer.Option("", help="Why (goes into the audit log)."),
    log: Path = LogOpt,
    feedback: Path = FeedbackOpt,
    out: Path = ReportsOpt,
    routing: Path = RoutingOpt,
    audit_log: Path = AuditOpt,
) -> None:
    """Make a variant's model the default and end the experiment, if its report shows a significant win
    with no guardrail breach (or --force with a reason)."""
    from .promote import promote as do_promote

    rep = None
    try:
        rep = _ab_report(experiment, log, feedback, out, 10, 24.0, False)
    except (ValueError, FileNotFoundError) as e:
        if not force:
            console.print(f"[red]refused:[/red] no report: {e}")
            raise typer.Exit(1) from None
    with _refusals():
        new = do_promote(routing, experiment, variant, rep, audit_log, force, reason)
    console.print(f"promoted: default is now {new.default}; experiment {experiment} ended → {routing}")


@app.command()
def rollback(
    reason: str = typer.Option("", help="Why (goes into the audit log)."),
    routing: Path = RoutingOpt,
    audit_log: Path = AuditOpt,
) -> None:
    """Restore the default that the last promotion replaced."""
    from .promote import rollback as do_rollback

    with _refusals():
        new = do_rollback(routing, audit_log, reason)
    console.print(f"rolled back: default is now {new.default} → {routing}")


@app.command()
def refresh(
    version: str = typer.Argument(None, help="Version to refresh, e.g. recall-dssm:v2 (default: every served one)."),
    features_dir: Path = typer.Option(
        Path(os.environ.get("RECALL_FEATURE_DIR", "runs/features")),
        "--features-dir",
        help="Feature store root: the catalogue of its latest published snapshot is read.",
    ),
    remove: list[int] = typer.Option(None, "--remove", help="Withdraw an item (raw id; repeatable)."),
    swap: bool = typer.Option(True, "--swap/--no-swap", help="Serve the new version where the routing names the old."),
    reason: str = typer.Option("item refresh", help="Why (goes into the audit log)."),
    routing: Path = RoutingOpt,
    audit_log: Path = AuditOpt,
    registry: Path = RegistryOpt,
) -> None:
    """Put catalogue items a version never saw into its index (its item tower places them by their
    attributes) as a new version, and serve it in its place. ID-only models are refused."""
    from .promote import swap as do_swap
    from .refresh import RefreshError, catalogue, refresh_served
    from .refresh import refresh as do_refresh
    from .registry import VersionError

    reg = _registry(registry)
    if version is None and remove:
        console.print("[red]error:[/red] --remove withdraws items from one version: name it (e.g. recall-dssm:v2)")
        raise typer.Exit(2)
    try:
        if version is None:
            records = refresh_served(routing, reg, features_dir, audit_log, swap)
        else:
            latest, items = catalogue(features_dir)
            _, record = do_refresh(reg.get(version), items, reg, remove or (), latest["id"])
            records = [record]
    except (RefreshError, VersionError, FileNotFoundError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    for r in records:
        why = f" ({r['why']})" if "why" in r else ""
        console.print(f"{r['status']}: {r['version']} — {r['added']} new, {len(r['removed'])} withdrawn item(s){why}")
    if version is not None and swap and records[0]["version"] != records[0]["parent"]:
        from . import routing as rt
        from .registry import parse_ref

        served = rt.load(routing).models() if routing.exists() else []
        if parse_ref(records[0]["parent"]) not in [parse_ref(m) for m in served]:
            console.print(f"{records[0]['parent']} is not served ({routing}): nothing to swap")
            return
        with _refusals():
            do_swap(routing, records[0]["parent"], records[0]["version"], audit_log, reason)
        console.print(f"serving {records[0]['version']} in place of {records[0]['parent']} → {routing}")
    if any(r["status"] == "failed" for r in records):
        raise typer.Exit(1)


def _print_gate(verdict: dict) -> None:
    colour = {"passed": "green", "failed": "red", "skipped": "yellow"}
    for c in verdict["checks"]:
        console.print(f"   [{colour[c['status']]}]{c['status']:>7}[/] {c['name']}: {c['detail']}")
    if "promotion" in verdict:
        p = verdict["promotion"]
        console.print(f"   replace production: {'yes' if p['recommended'] else 'no'} — {p['why']}")


def _pipeline_config(config: Path | None, overrides: list[str] | None, model: str | None):
    return _config(config, [*(overrides or []), *([f"model={model}"] if model else [])])


@pipeline_app.command("run")
def pipeline_run(
    config: Path = ConfigOpt,
    overrides: list[str] = SetOpt,
    model: str = typer.Option(None, help="Model to train (default: the config's)."),
    run_dir: Path = typer.Option(None, help="Run directory (default: <out_dir>/runs/<model>-<time>)."),
    features: bool = typer.Option(True, "--features/--no-features", help="Run ingest/validate/apply/materialize."),
    bentoml_store: bool = typer.Option(
        None, "--bentoml/--no-bentoml", help="Also save to the BentoML store (default: the config's bentoml_store)."
    ),
    force: bool = typer.Option(False, "--force", help="Train even if this model was trained on the same data."),
) -> None:
    """features → training set → train → evaluate → gate → export → index → register, no orchestrator."""
    from . import pipeline
    from .gate import GateFailed
    from .validate import DataValidationError

    store = [] if bentoml_store is None else [f"bentoml_store={str(bentoml_store).lower()}"]
    cfg = _pipeline_config(config, [*(overrides or []), *store], model)

    def show(name: str, out: dict, secs: float) -> None:
        brief = {k: v for k, v in out.items() if k not in ("checks", "rows", "seconds", "test")}
        console.print(f"[bold]{name}[/bold] {secs:.1f}s {json.dumps(brief, default=str)[:200]}")

    try:
        out = pipeline.run(cfg, run_dir, with_features=features, on_step=show, force=force)
    except DataValidationError as e:
        console.print(f"[red]validation failed; nothing was trained:[/red]\n{e}")
        raise typer.Exit(1) from None
    except GateFailed as e:
        console.print("[red]quality gate failed; nothing was exported or registered:[/red]")
        _print_gate(e.verdict)
        raise typer.Exit(1) from None
    if out.get("nothing_new"):
        console.print(out["nothing_new"])
        return
    reg, ev = out["steps"]["register"], out["steps"]["evaluate"]
    console.print(f"registered {reg['tag']} (candidate); report {ev['report']}")


@pipeline_app.command("step")
def pipeline_step(
    name: str = typer.Argument(..., help="training_set | train | evaluate | gate | export | index | register"),
    run_dir: Path = typer.Option(..., help="The run directory the steps share."),
    config: Path = ConfigOpt,
    overrides: list[str] = SetOpt,
    model: str = typer.Option(None, help="Model to train (default: the config's)."),
) -> None:
    """One step of the training pipeline: the entry point of the DAG's Kubernetes train pod, which passes
    the run's own settings (``--config <run dir>/run_config.json``, written by training_set)."""
    from . import pipeline
    from .gate import GateFailed

    if name not in pipeline.STEP_FUNCTIONS:
        console.print(f"[red]error:[/red] unknown step {name!r}; choose one of: {', '.join(pipeline.STEP_FUNCTIONS)}")
        raise typer.Exit(2)
    cfg = _pipeline_config(config, list(overrides or []), model or None)
    try:
        out = pipeline.STEP_FUNCTIONS[name](cfg, run_dir)
    except GateFailed as e:
        console.print("[red]quality gate failed:[/red]")
        _print_gate(e.verdict)
        raise typer.Exit(1) from None
    except pipeline.NothingNew as e:
        console.print(str(e))
        return
    if out:  # empty from a torchrun worker: rank 0 reports
        console.print_json(json.dumps(out, default=str))


@pipeline_app.command("pytorchjob")
def pipeline_pytorchjob(
    run_dir: Path = typer.Option(..., help="The run directory (on the shared volume) the job trains into."),
    config: Path = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Print the PyTorchJob (Kubeflow training operator) that a multi-node run (kubernetes.nodes > 1)
    submits for its train step, from the config and site config; `| kubectl apply -f -` submits it."""
    import yaml

    from .k8s import pytorch_job

    cfg = _config(config, overrides)
    typer.echo(yaml.safe_dump(pytorch_job(cfg.kubernetes, str(run_dir)), sort_keys=False), nl=False)


@pipeline_app.command("kubeflow")
def pipeline_kubeflow(
    config: Path = ConfigOpt,
    overrides: list[str] = SetOpt,
    output: Path = typer.Option(Path("runs/kubeflow/recall-training.yaml"), help="The compiled pipeline (YAML)."),
    local: bool = typer.Option(False, "--local", help="Also run it here, end to end, with kfp.local."),
    run_name: str = typer.Option(None, help="--local: run directory name (default: <model>-<time>)."),
    force: bool = typer.Option(False, "--force", help="--local: train even if nothing is new."),
) -> None:
    """Compile the Kubeflow pipeline (infra/kubeflow/pipeline.py) for the config's `kubernetes` settings; with
    --local, run it here with kfp.local's subprocess runner, registering a candidate as the Airflow DAGs do."""
    from . import kubeflow, pipeline

    cfg = _config(config, overrides)
    try:
        path = kubeflow.compile_pipeline(cfg, output)
    except kubeflow.KubeflowUnavailable as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    console.print(f"compiled {path} (image {cfg.kubernetes.image}; train requests {cfg.kubernetes.gpus} GPU)")
    if not local:
        return
    run_dir = pipeline.new_run_dir(cfg, run_name).resolve()

    def read(name: str) -> dict | None:
        p = run_dir / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    try:
        kubeflow.run_local(cfg, config or "configs/demo.yaml", list(overrides or []), run_dir, force)
    except RuntimeError as e:
        if (verdict := read("gate")) is not None and not verdict.get("passed"):
            console.print("[red]quality gate failed:[/red] nothing exported or registered")
            _print_gate(verdict)
        else:
            console.print(f"[red]pipeline failed:[/red] {str(e).splitlines()[0]}")
        raise typer.Exit(1) from None
    if nothing := read("nothing_new"):
        console.print(f"nothing new: {nothing['reason']}")
    elif registered := read("registered"):
        console.print(f"registered {registered['tag']} (candidate); run directory {run_dir}")


@pipeline_app.command("airflow")
def pipeline_airflow(
    dag_id: str = typer.Argument(..., help="recall_features | recall_training | recall_ab_report"),
    conf: str = typer.Option("{}", help="DAG run params as JSON, e.g. '{\"model\": \"gru4rec\"}'."),
    home: Path = typer.Option(Path("runs/airflow"), help="AIRFLOW_HOME (SQLite metadata DB, set up on first use)."),
) -> None:
    """One real `airflow dags test` run of a DAG; prints each task's state and wall time."""
    from .airflow_local import dags_test, environment

    run = dags_test(dag_id, json.loads(conf), environment(home), stream=True)
    table = Table(title=f"{dag_id}: {run.state} in {run.seconds:.1f}s")
    for col in ("task", "state", "seconds"):
        table.add_column(col)
    for task, t in run.tasks.items():
        table.add_row(task, str(t["state"]), f"{t['duration_s'] or 0:.1f}")
    console.print(table)
    if not run.ok:
        raise typer.Exit(1)


@app.command()
def train(
    config: Path = ConfigOpt,
    overrides: list[str] = SetOpt,
    resume: Path = typer.Option(
        None, "--resume", help="Continue the interrupted run in this directory, with its own settings."
    ),
) -> None:
    """Train the configured model, early-stopping on validation; print test metrics beside popularity.
    The state after each epoch is kept in the run directory: `--resume RUN_DIR` continues a killed run."""
    from .train import resume_config, run

    if resume is not None:
        if config is not None or overrides:
            _fail("--resume continues a run with its own settings: drop -c/-s", 2)
        try:
            cfg = resume_config(resume)
        except (ValueError, FileNotFoundError) as e:
            _fail(str(e), 2)
    else:
        cfg = _config(config, overrides)
    out = run(cfg)
    if out is None:  # a torchrun worker: rank 0 reports
        return
    _metrics(
        f"{cfg.model} on {cfg.data.source}: test, full corpus, seen items masked",
        {cfg.model: out.test_metrics, "popularity": out.popularity_test},
        cfg.ks[:2],
    )
    console.print(
        f"best epoch {out.best_epoch}; {out.examples_per_s:,.0f} training examples/s; run saved in {out.run_dir}"
    )


@app.command()
def evaluate(run_dir: Path = typer.Argument(..., help="A directory written by `recall train`.")) -> None:
    """Re-score a trained run on the test split (masked and unmasked) beside popularity."""
    from .evaluate import run

    out = run(run_dir)
    _metrics(
        f"{out.model}: test, full corpus",
        {
            f"{out.model} (seen masked)": out.test,
            f"{out.model} (unmasked)": out.test_unmasked,
            "popularity (seen masked)": out.popularity,
        },
        (10, 20),
    )


@app.command()
def recommend(
    run_dir: Path = typer.Argument(..., help="A directory written by `recall train`."),
    user: int = typer.Option(..., help="Raw user id."),
    k: int = typer.Option(10, min=1, max=1000),
) -> None:
    """Top-K unseen items for one user."""
    from .evaluate import recommend as rec

    try:
        console.print(rec(run_dir, user, k).to_string(index=False))
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def _serve_once(cfg, mv, user: int) -> None:
    """Starts the real BentoML service on the demo's version, asks it for one user, and stops it."""
    import urllib.request

    from serving.process import running_service

    from .registry import atomic_write_text

    out = Path(cfg.out_dir).resolve()  # the server runs from the repository root
    routing = Path(cfg.routing).resolve()
    # The demo plays the operator: its candidate goes straight to the default route (in production:
    # `recall ab start` → `recall promote`). The next demo's gate compares against it.
    atomic_write_text(routing, f"default: {mv.tag}\nexperiments: []\n")
    env = {
        "RECALL_ROUTING": str(routing),
        "RECALL_REGISTRY": str(Path(cfg.registry).resolve()),
        "RECALL_FEATURE_DIR": str(Path(cfg.features.dir).resolve()),
        "RECALL_RESPONSE_LOG": str(out / "serving" / "responses.jsonl"),
        "RECALL_WORKERS": "1",
    }
    try:
        with running_service(env, out / "serve.log", timeout_s=120) as url:
            body = json.dumps({"user_id": str(user), "k": 5}).encode()
            req = urllib.request.Request(f"{url}/recall", body, {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                console.print(f"   POST /recall {body.decode()} →")
                console.print_json(r.read().decode())
    except (OSError, RuntimeError) as e:
        console.print(f"[red]the service did not answer: {e}[/red]")
        raise typer.Exit(1) from None


def _demo_results(cfg, run_dir: Path):
    """Steps 3-5 of the demo: metrics, gate verdict, the registered version (returned)."""
    from .registry import Registry

    ev = json.loads((run_dir / "evaluation.json").read_text())
    verdict = json.loads((run_dir / "gate.json").read_text())
    _metrics(
        "3. evaluate: test split, full corpus, seen items masked",
        {cfg.model: ev["test"], "popularity": ev["popularity_test"]},
        cfg.ks[:2],
    )
    console.print(f"   report: {run_dir / 'report.html'}")
    console.print(f"[bold]4. gate[/bold] {'passed' if verdict['passed'] else 'FAILED'}")
    _print_gate(verdict)
    mv = Registry(cfg.registry).get(json.loads((run_dir / "registered.json").read_text())["tag"])
    par, rep = mv.meta["export"]["parity"], mv.meta["index"]["report"]
    worst = max(par["user"]["max_abs_diff"], par["item"]["max_abs_diff"])
    console.print(
        f"[bold]5. registered[/bold] {mv.tag} ({mv.meta['stage']}) at {mv.path}: max |ONNX - PyTorch| {worst:.1e}, "
        f"{rep['kind']} index over {rep['n_items']} items, recall@{rep['k']} vs exact {rep['recall_at_k']:.3f}"
    )
    return mv


@app.command()
def demo(
    config: Path = typer.Option(Path("configs/demo.yaml"), help="Demo config."),
    overrides: list[str] = SetOpt,
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Finish with one request to the real service."),
    airflow: bool = typer.Option(True, "--airflow/--no-airflow", help="Run the DAGs with `airflow dags test`."),
) -> None:
    """The main job on the embedded default, through the real Airflow: recall_features (synthetic data →
    validated features in Feast/SQLite) → recall_training (training set → SASRec → evaluation report →
    gate → ONNX + Faiss → registered candidate) → one user's top-10 → one request to the real service."""
    from . import pipeline
    from .evaluate import recommend as rec
    from .registry import Registry

    t0 = time.perf_counter()
    cfg = _config(config, overrides)
    out_dir = Path(cfg.out_dir)
    placed = [f"features.dir={out_dir / 'features'}", f"registry={out_dir / 'registry'}",
              f"routing={out_dir / 'routing.yaml'}", "bentoml_store=false"]  # fmt: skip
    cfg = _config(config, [*(overrides or []), *placed])
    run_name = f"{cfg.model}-{time.strftime('%Y%m%dT%H%M%S')}"
    run_dir = pipeline.new_run_dir(cfg, run_name)
    if airflow:
        from .airflow_local import dags_test, environment

        env = environment(out_dir / "airflow")
        conf = {"config": str(config), "overrides": [*(overrides or []), *placed]}
        for n, (dag_id, extra) in enumerate(
            [("recall_features", {}), ("recall_training", {"run_name": run_name})], 1
        ):
            console.print(f"[bold]{n}. airflow dags test {dag_id}[/bold] (AIRFLOW_HOME={env['AIRFLOW_HOME']})")
            run = dags_test(dag_id, {**conf, **extra}, env)
            steps = ", ".join(f"{t} {v['duration_s'] or 0:.1f}s" + ("" if v["state"] == "success" else f" {v['state']}")
                              for t, v in run.tasks.items())  # fmt: skip
            console.print(f"   {run.state} in {run.seconds:.1f}s: {steps}")
            if not run.ok:
                if (run_dir / "gate.json").exists():
                    _print_gate(json.loads((run_dir / "gate.json").read_text()))
                console.print(f"[red]{dag_id} failed[/red]; Airflow's output ends:\n{run.output[-3000:]}")
                raise typer.Exit(1)
    else:
        console.print("[bold]1-2. recall pipeline run[/bold] (no Airflow)")
        try:
            pipeline.run(cfg, run_dir, on_step=lambda name, _, secs: console.print(f"   {name} {secs:.1f}s"))
        except Exception as e:  # the gate's or validation's message says what failed
            console.print(f"[red]pipeline failed:[/red] {e}")
            raise typer.Exit(1) from None
    if (run_dir / "nothing_new.json").exists():  # the same data and settings as a registered version
        info = json.loads((run_dir / "nothing_new.json").read_text())
        console.print(f"[bold]3-5.[/bold] {info['reason']}")
        mv = Registry(cfg.registry).get(info["version"])
        trained = Path(mv.meta["run_dir"])
    else:
        mv, trained = _demo_results(cfg, run_dir), run_dir
    from .datasets import Tables

    snapshot = json.loads((run_dir / "snapshot.json").read_text())
    user = int(Tables.read(snapshot["dir"]).interactions.user_id.iloc[0])
    console.print(f"[bold]6. top-10 for user {user}[/bold]")
    console.print(rec(trained, user, 10).to_string(index=False))
    if serve:
        console.print(f"[bold]7. serve[/bold] bentoml serve serving.service:RecallService with {mv.tag}")
        _serve_once(cfg, mv, user)
    console.print(f"done in {time.perf_counter() - t0:.1f}s; everything is under {cfg.out_dir}/")


if __name__ == "__main__":
    app()
