"""The BentoML recall service: ``bentoml serve serving.service:RecallService``.

``POST /recall`` → Feast online features → the routed version's ONNX user tower → Faiss top-K, minus
already-seen items. ``POST /recall_batch`` does many users in one call (adaptive batching merges
concurrent calls). Unknown or history-less users get the popularity fallback. ``GET /healthz``
(alive), ``GET /readyz`` (JSON: loaded and refused versions; 503 until the default version serves),
``GET /metrics`` (Prometheus, per-variant counts and latency, cache hit rate), ``GET /status``,
``POST /admin/reload`` (bearer ``$RECALL_ADMIN_TOKEN``). The routing file is also watched and reloaded
without a restart; the swap is atomic. ``POST /events`` (bearer ``$RECALL_INGEST_TOKEN``) pushes new
interactions into the online store through Feast's push sources: the next ``/recall`` of those users
sees them in its history and seen set (every worker drops their cached results).

Settings (environment): ``RECALL_ROUTING`` (serving/routing.yaml), ``RECALL_REGISTRY`` (runs/registry;
versions not found there come from the BentoML model store), ``RECALL_FEATURE_DIR``,
``RECALL_ONLINE_STORE`` (sqlite | redis), ``RECALL_REDIS``, ``RECALL_RESPONSE_LOG``
(runs/serving/responses.jsonl), ``RECALL_ADMIN_TOKEN``, ``RECALL_WATCH_INTERVAL_S`` (1; 0 = off),
``RECALL_CACHE_ENTRIES`` (10000), ``RECALL_CACHE_TTL_S`` (60), ``RECALL_MAX_BODY_BYTES`` (1 MiB),
``RECALL_INGEST_TOKEN`` (unset: ``/events`` is disabled), ``RECALL_PUSH_JOURNAL``
(``$RECALL_FEATURE_DIR/pushes.log``: shared by the workers, which must see the same file),
``RECALL_READS_OFF_LOOP`` (auto | 1 | 0: run ``/recall`` in a worker thread instead of on the event
loop; auto = with the Redis online store, whose reads wait on the network — see :meth:`RecallService.recall`).
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Annotated, Any

import anyio
import bentoml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from components import routing as rt
from components.registry import ModelVersion, Registry, VersionError, load_from_bentoml

from .logsink import ResponseLog
from .state import PushJournal, ServingState, build_state

logger = logging.getLogger("recall.serving")

# Canonical user ids only: by default ASCII digits without sign, underscores or leading zeros, below 10^18
# (the online store's int64 key). Python's int() would accept "+5", "1_000", "007" and "١٢", aliasing one
# person as several users, and a number ≥ 2^63 would break the store read of a whole batch.
USER_ID_PATTERN = os.environ.get("RECALL_USER_ID_PATTERN", r"^(0|[1-9][0-9]{0,17})$")
UserId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=USER_ID_PATTERN)]
K = Annotated[int, Field(ge=1, le=1000, description="how many items, 1..1000")]

REQUESTS = bentoml.metrics.Counter(
    name="recall_requests_total",
    documentation="served recall requests by experiment, variant, model and fallback",
    labelnames=["experiment", "variant", "model", "fallback"],
)
LATENCY = bentoml.metrics.Histogram(
    name="recall_latency_seconds",
    documentation="recall latency (features + tower + search) by variant",
    labelnames=["variant", "model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
CACHE = bentoml.metrics.Gauge(name="recall_cache_hit_rate", documentation="result cache hit rate since last reload")
RELOADS = bentoml.metrics.Counter(name="recall_reloads_total", documentation="routing reloads", labelnames=["result"])


AnyId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
CANONICAL_ID = re.compile(USER_ID_PATTERN)


class Context(BaseModel):
    """The request's context. Its one field is the moment whose hour, weekday, weekend and month feed a
    model's context inputs (``model_params.context``; :mod:`feature_repo.context`): by default the
    request time; a ranking tier precomputing for later, or a replay, names its own."""

    model_config = ConfigDict(extra="forbid")
    time: float | None = Field(None, ge=0, le=4_102_444_800, description="unix seconds (default: now)")


class RecallRequest(BaseModel):
    """One user of /recall_batch. Its id is checked per entry: a bad one gets its own error entry and
    never fails the other users of the call (/recall refuses it with a 400). Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
    user_id: AnyId
    k: K = 100
    context: Context | None = None
    exclude_seen: bool = True


MAX_BATCH = 1000  # users per /recall_batch call (and per merged batch)
# How long a /recall_batch call may wait to be merged and served before BentoML sheds it (503): well
# above one merged batch's service time at the benchmark's loads (benchmarks/serving.py), so calls are
# shed only under real overload, never at ordinary concurrency.
BATCH_MAX_LATENCY_MS = int(os.environ.get("RECALL_BATCH_MAX_LATENCY_MS", "5000"))
Batch = Annotated[list[RecallRequest], Field(min_length=1, max_length=MAX_BATCH)]
RawId = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9]{1,18}$")]
FUTURE_SLACK_S = 300  # an event stamped later than this is a clock or client bug


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: RawId
    item_id: RawId
    timestamp: float | None = Field(None, ge=0, description="unix seconds; default: when it arrives")


Events = Annotated[list[Event], Field(min_length=1, max_length=MAX_BATCH)]


def reads_off_loop() -> bool:
    """Whether ``/recall`` leaves the event loop for a worker thread (``RECALL_READS_OFF_LOOP``)."""
    choice = _env("RECALL_READS_OFF_LOOP", "auto").lower()
    if choice not in ("auto", "1", "0"):
        raise ValueError(f"RECALL_READS_OFF_LOOP must be auto, 1 or 0, got {choice!r}")
    return _env("RECALL_ONLINE_STORE", "sqlite") == "redis" if choice == "auto" else choice == "1"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def resolver(registry_root: str):
    """``resolve(ref)``: the verified version (the registry first, then the BentoML model store), and
    ``tag_of(ref)``: the canonical tag a registry reference points to, without verifying anything."""
    reg = Registry(registry_root)

    def resolve(tag: str) -> ModelVersion:
        try:
            reg.path(tag)
        except VersionError:  # not in this registry: the BentoML model store may have it
            return load_from_bentoml(tag)
        return reg.get(tag)  # present: verified here, and a broken one is refused, not looked up elsewhere

    def tag_of(ref: str) -> str | None:
        try:
            path = reg.path(ref)
        except (VersionError, ValueError):
            return None
        return f"recall-{path.parent.name}:{path.name}"

    return resolve, tag_of


class Controller:
    """Holds the current state; reloads it (file watch or admin call) and swaps it atomically."""

    def __init__(self) -> None:
        self.routing_path = _env("RECALL_ROUTING", "serving/routing.yaml")
        self.resolve, self.tag_of = resolver(_env("RECALL_REGISTRY", "runs/registry"))
        self.cache_entries = int(_env("RECALL_CACHE_ENTRIES", "10000"))
        self.cache_ttl = float(_env("RECALL_CACHE_TTL_S", "60"))
        self._reload_lock = threading.Lock()
        self.last_error: dict[str, Any] | None = None  # the last rejected reload: when and why
        try:
            self.state: ServingState = self._build(None)
        except Exception as e:  # noqa: BLE001 - up and saying why beats a crash loop; the watcher retries
            path = Path(self.routing_path)
            mtime = path.stat().st_mtime if path.exists() else 0.0
            self.state = ServingState.empty(self.routing_path, mtime, f"{type(e).__name__}: {e}")
            self._rejected(str(e))
        gc.collect()
        gc.freeze()  # long-lived objects (Feast, torch, the indexes) out of every later collection: fewer pauses
        self._feature_store = None
        self._fs_lock = threading.Lock()
        self._push_store = None
        self._push_lock = threading.Lock()
        self.feature_dir = _env("RECALL_FEATURE_DIR", "runs/features")
        self.journal = PushJournal(_env("RECALL_PUSH_JOURNAL", str(Path(self.feature_dir) / "pushes.log")))
        interval = float(_env("RECALL_WATCH_INTERVAL_S", "1"))
        if interval > 0:
            threading.Thread(target=self._watch, args=(interval,), daemon=True, name="routing-watch").start()

    def _build(self, previous: ServingState | None) -> ServingState:
        return build_state(self.routing_path, self.resolve, previous, 1, self.cache_entries, self.cache_ttl,
                           self.tag_of)  # fmt: skip

    def _rejected(self, why: str) -> None:
        RELOADS.labels(result="rejected").inc()
        self.last_error = {"at": time.time(), "error": why}
        logger.error("routing reload rejected, keeping the current routing: %s", why)

    def reload(self) -> dict[str, Any]:
        """Builds a new state from the routing file and swaps it in. Anything that goes wrong — a malformed
        file, a default version that cannot be served, any exception while loading — rejects the new
        state (raised as :class:`routing.RoutingError`, recorded in ``last_error``) and keeps the old one."""
        with self._reload_lock:
            try:
                new = self._build(self.state)
            except Exception as e:  # noqa: BLE001 - see the docstring
                why = str(e) if isinstance(e, rt.RoutingError) else f"{type(e).__name__}: {e}"
                self._rejected(why)
                raise rt.RoutingError(why) from e
            if not new.ready:
                why = f"default version {new.routing.default} cannot be served: {new.failures.get(new.routing.default)}"
                self._rejected(why)
                if not self.state.ready:
                    self.state = new  # nothing was served before either: keep the newer reason in /readyz
                raise rt.RoutingError(why)
            self.state = new  # atomic reference swap: in-flight requests keep the state they took
            gc.freeze()  # the loaded versions are long-lived: keep them out of the collector's scans
            self.last_error = None
            RELOADS.labels(result="ok").inc()
            logger.info("routing reloaded: default %s, %d experiment(s), generation %s", new.routing.default,
                        len(new.routing.experiments), new.generation)  # fmt: skip
            return new.status()

    def _watch(self, interval: float) -> None:
        """Reloads when the routing file changes. Nothing escapes the loop: a thread that died would leave
        this worker on its old routing for good while /readyz said ready."""
        seen = self.state.mtime
        backoff, next_retry = interval, time.monotonic() + interval
        while True:
            time.sleep(interval)
            try:
                mtime = Path(self.routing_path).stat().st_mtime if Path(self.routing_path).exists() else 0.0
                changed = mtime not in (seen, self.state.mtime)
                # Not ready: try again now and then even if the file is unchanged (a version being copied
                # in, a store coming up), backing off to a minute.
                retry = not self.state.ready and time.monotonic() >= next_retry
                if not (changed or retry):
                    continue
                seen = mtime  # one attempt per change of the file (a broken file is not retried every second)
                if retry:
                    backoff = min(backoff * 2, 60.0)
                    next_retry = time.monotonic() + backoff
                self.reload()
                backoff = interval
            except Exception:  # noqa: BLE001, S112 - reload() already logged and recorded why
                continue

    def nudge_other_workers(self) -> None:
        """Each worker process holds its own state; bumping the file's mtime makes the other workers'
        watchers reload too (this worker then sees the new mtime and reuses everything it loaded)."""
        try:
            os.utime(self.routing_path)
        except OSError:
            pass

    # --- features ------------------------------------------------------------------------------------
    def _new_store(self):
        from components.features import StoreConfig, store

        online, redis = _env("RECALL_ONLINE_STORE", "sqlite"), _env("RECALL_REDIS", "localhost:6379")
        return store(StoreConfig(self.feature_dir, online, redis))

    def feature_store(self):
        if self._feature_store is None:
            self._feature_store = self._new_store()
        return self._feature_store

    def online(self, users: list[int], refs: list[str]) -> dict[str, list]:
        rows = [{"user_id": u} for u in users]
        with self._fs_lock:  # Feast's SQLite connection is not shared across threads safely
            return self.feature_store().get_online_features(features=refs, entity_rows=rows).to_dict()

    def push(self, events) -> dict[str, int]:
        """New interactions → the online store (:func:`components.features.push_events`), at the history
        length of the latest published snapshot; every worker then forgets those users' cached results.
        Pushes use their own Feast connection, so waiting for another worker's push never holds up this
        worker's online reads."""
        from components import snapshots as sn
        from components.features import push_events

        latest = sn.latest(self.feature_dir)
        if latest is None:
            raise bentoml.exceptions.ServiceUnavailable(f"no published feature snapshot in {self.feature_dir}")
        with self._push_lock:
            if self._push_store is None:
                self._push_store = self._new_store()
            return push_events(self._push_store, self.feature_dir, events, int(latest["max_len"]),
                               on_pushed=lambda users: self.journal.record([str(u) for u in users]))  # fmt: skip

    def forget_pushed(self, state: ServingState) -> None:
        """Drops the cached results of users whose features were pushed since the last look."""
        stale = self.journal.changed()
        if stale is None or stale:
            state.cache.drop_users(stale)


CONTROLLER: Controller | None = None  # the worker's controller, for the control middleware


API_ROUTES = ("/recall", "/recall_batch", "/events")  # JSON in, JSON out
READ_ROUTES = ("/readyz", "/status")


class TokenGuard:
    """A bearer token compared in constant time (scheme case-insensitive), and a per-worker limit on
    failed attempts *per client address*: after ``max_fails`` wrong tokens within ``window_s`` that
    client's wrong attempts get a 429 with ``Retry-After`` until the window has passed. The right token
    is compared first and always accepted, so nobody guessing can lock out the token's holders."""

    MAX_CLIENTS = 10_000  # addresses tracked per worker; beyond it the oldest are forgotten

    def __init__(self, env: str, max_fails: int = 10, window_s: float = 60.0):
        self.env, self.max_fails, self.window_s = env, max_fails, window_s
        self.fails: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, client: str, header: str | None, token: str) -> int | None:
        """None: allowed; 0: wrong token; n > 0: wrong and locked out, retry in n seconds."""
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
            return None
        now = time.monotonic()
        seen = self.fails.pop(client, None) or deque()
        while seen and now - seen[0] > self.window_s:
            seen.popleft()
        seen.append(now)
        self.fails[client] = seen
        while len(self.fails) > self.MAX_CLIENTS:
            self.fails.popitem(last=False)
        return int(self.window_s - (now - seen[0])) + 1 if len(seen) > self.max_fails else 0


class ControlMiddleware:
    """ASGI middleware in front of BentoML's routes: JSON ``/readyz`` (BentoML's own says only yes/no),
    ``/status`` and ``POST /admin/reload`` (admin token), the ``/events`` token, JSON-only API bodies
    (415 otherwise), and the body limit on the bytes actually read — chunked or not (413)."""

    def __init__(self, app, max_body: int | None = None):
        self.app = app
        self.max_body = max_body or int(_env("RECALL_MAX_BODY_BYTES", str(1 << 20)))
        self.guards = {env: TokenGuard(env) for env in ("RECALL_ADMIN_TOKEN", "RECALL_INGEST_TOKEN")}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        ctl = CONTROLLER
        if path in READ_ROUTES and method not in ("GET", "HEAD"):
            return await _refuse(send, 405, f"use GET {path}", path)
        if path == "/readyz" and ctl is not None:
            st = ctl.state
            body = {
                "ready": st.ready,
                "default": st.routing.default,
                "routing_generation": st.generation,
                "loaded": list(st.retrievers),
                "failed": st.failures,
                "last_reload_error": ctl.last_error,
            }
            return await _json(send, 200 if st.ready else 503, body)
        if path == "/status" and ctl is not None:  # routing salts predict assignment: operators only
            if await self._authorised(scope, send, headers, "RECALL_ADMIN_TOKEN", path):
                return await _json(send, 200, {**ctl.state.status(), "last_reload_error": ctl.last_error})
            return None
        if path == "/events" and not await self._authorised(scope, send, headers, "RECALL_INGEST_TOKEN", path):
            return None
        if path == "/admin/reload":
            if method != "POST":
                return await _refuse(send, 405, "use POST /admin/reload", path)
            if not await self._authorised(scope, send, headers, "RECALL_ADMIN_TOKEN", path):
                return None
            if ctl is None:
                return await _json(send, 503, {"error": "service not initialised"})
            try:
                status = await anyio.to_thread.run_sync(ctl.reload)
            except rt.RoutingError as e:
                return await _json(send, 400, {"error": str(e)})
            ctl.nudge_other_workers()
            return await _json(send, 200, status)
        if method in ("POST", "PUT", "PATCH"):
            if path in API_ROUTES:
                ctype = headers.get("content-type", "application/json").split(";")[0].strip().lower()
                if ctype != "application/json":
                    return await _refuse(send, 415, f"{path} takes application/json, not {ctype!r}", path)
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body:
                return await _refuse(send, 413, f"request body of {length} bytes exceeds {self.max_body}", path)
            body = bytearray()  # read it all here: a chunked body has no Content-Length to check
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                if len(body) > self.max_body:
                    return await _refuse(send, 413, f"request body exceeds {self.max_body} bytes", path)
                more = message.get("more_body", False)
            receive = _replay(bytes(body), receive)
        if path in API_ROUTES:
            send = _with_retry_after(send)
        return await self.app(scope, receive, send)

    async def _authorised(self, scope, send, headers: dict[str, str], env: str, path: str) -> bool:
        """Answers the refusal itself (403 disabled, 401 wrong, 429 too many wrong) and returns False."""
        token = os.environ.get(env)
        if not token:
            await _refuse(send, 403, f"{path} is disabled: {env} is not set", path)
            return False
        client = (scope.get("client") or ("?",))[0]
        wait = self.guards[env].check(client, headers.get("authorization"), token)
        if wait is None:
            return True
        if wait:  # (not logged: a guesser must not be able to flood the log)
            await _json(send, 429, {"error": f"too many wrong tokens; retry in {wait} s"},
                        [(b"retry-after", str(wait).encode())])  # fmt: skip
        else:
            await _refuse(send, 401, "missing or wrong bearer token", path)
        return False


def _with_retry_after(send):
    """Adds ``Retry-After: 1`` to a 503 (BentoML's own overload answer has none), so clients back off."""

    async def sending(message):
        if message["type"] == "http.response.start" and message["status"] == 503:
            headers = list(message.get("headers", []))
            if not any(k.lower() == b"retry-after" for k, _ in headers):
                message = {**message, "headers": [*headers, (b"retry-after", b"1")]}
        await send(message)

    return sending


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # (the disconnect, when it comes)

    return replayed


async def _refuse(send, status: int, error: str, path: str, extra: list | None = None) -> None:
    logger.warning("%d on %s: %s", status, path, error)  # one line, no traceback: the client's mistake
    await _json(send, status, {"error": error}, extra)


class OneLineClientErrors(logging.Filter):
    """BentoML logs every rejected request — a validation error, invalid JSON — at ERROR with a full
    traceback. The client's mistake becomes one WARNING line saying what was wrong; real errors (5xx)
    keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from pydantic import ValidationError

        code = getattr(getattr(exc, "error_code", None), "value", 500)
        if isinstance(exc, ValidationError) or (isinstance(exc, bentoml.exceptions.BentoMLException) and code < 500):
            what = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]) if isinstance(
                exc, ValidationError) else str(exc)  # fmt: skip
            message = record.getMessage().replace("Exception on", "bad request on")
            record.msg, record.args = "%s: %s", (message, what.splitlines()[0][:300] if what else type(exc).__name__)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


async def _json(send, status: int, body: dict[str, Any], extra_headers: list | None = None) -> None:
    data = json.dumps(body, default=str).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": data})


def _workers() -> int | str:
    w = os.environ.get("RECALL_WORKERS", "cpu_count")
    return w if w == "cpu_count" else int(w)


@bentoml.service(
    name="recall",
    # One process per core: each request is ~1 ms of GIL-bound work (see benchmarks/serving.py).
    workers=_workers(),
    traffic={"timeout": 30, "max_concurrency": 512},
    # Our response log records every request; BentoML's access log line would double the logging cost.
    logging={"access": {"enabled": os.environ.get("RECALL_ACCESS_LOG", "0") == "1"}},
    # OpenTelemetry spans on the hot path cost ~0.3 ms a request; RECALL_TRACE=1 turns them back on.
    tracing={"excluded_urls": [] if os.environ.get("RECALL_TRACE", "0") == "1" else ["/recall", "/recall_batch"]},
)
class RecallService:
    def __init__(self) -> None:
        global CONTROLLER
        import faiss

        # Requests are the parallelism: one Faiss thread per search (OpenMP teams for a single query
        # cost more than they save and spin on the cores the other requests need).
        faiss.omp_set_num_threads(int(_env("RECALL_FAISS_THREADS", "1")))
        logging.getLogger("bentoml._internal.server.http_app").addFilter(OneLineClientErrors())
        self.ctl = Controller()
        CONTROLLER = self.ctl
        self.off_loop = reads_off_loop()
        # One file per worker process (rotation is not safe across processes); the A/B reader merges them.
        base = Path(_env("RECALL_RESPONSE_LOG", "runs/serving/responses.jsonl"))
        self.log = ResponseLog(base.with_name(f"{base.stem}.{os.getpid()}{base.suffix}"))
        if not self.ctl.state.ready:
            logger.error("not ready: %s", self.ctl.state.failures)
        else:
            self._warm_up()

    def _warm_up(self) -> None:
        """One feature read and one retrieval before the first request: Feast's first online read sets
        up its registry and connections (seconds), which a user's request should not pay."""
        try:
            self._serve([RecallRequest(user_id="0", k=1)], log=False)
        except Exception as e:  # noqa: BLE001 - a failed warm-up is logged; requests will retry
            logger.warning("warm-up failed: %s", e)

    def __is_ready__(self) -> bool:
        return self.ctl.state.ready

    def _serve(self, reqs: list[RecallRequest], log: bool = True) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        state = self.ctl.state  # one state for the whole call, whatever reloads happen meanwhile
        if not state.ready:
            raise bentoml.exceptions.ServiceUnavailable(f"default version not loaded: {state.failures}")
        out: list[dict[str, Any] | None] = [None] * len(reqs)
        errors: dict[int, str] = {}
        groups: dict[str, list[int]] = {}
        plans = []
        self.ctl.forget_pushed(state)
        bad = 0
        for i, r in enumerate(reqs):
            if not CANONICAL_ID.fullmatch(r.user_id):
                out[i] = {"items": [], "model": None, "variant": None, "experiment": None, "fallback": None,
                          "error": f"user_id {r.user_id!r} should match pattern {USER_ID_PATTERN!r}"}  # fmt: skip
                plans.append(None)
                bad += 1
                continue
            a, retriever, flag = state.route(r.user_id)
            user = str(int(r.user_id)) if r.user_id.isascii() and r.user_id.isdigit() else r.user_id  # as pushes do
            moment = r.context.time if r.context is not None else None
            key = (retriever.tag, user, r.k, r.exclude_seen, moment)  # (no moment: the cache's TTL bounds the drift)
            plans.append((a, retriever, flag, key, state.cache.version(user)))
            cached = state.cache.get(key)
            if cached is not None:
                out[i] = cached
            else:
                groups.setdefault(retriever.tag, []).append(i)
        now = time.time()
        for tag, members in groups.items():
            retriever = state.retrievers[tag]
            users: list[int] = []
            numeric: list[int] = []
            for i in members:
                uid = reqs[i].user_id
                if uid.isascii() and uid.isdigit():  # (a custom RECALL_USER_ID_PATTERN may allow other ids)
                    users.append(int(uid))
                    numeric.append(i)
                else:
                    out[i] = self._response(plans[i], retriever.popularity(reqs[i].k), unknown=True)
            if not numeric:
                continue
            try:
                found = self._recall(retriever, users, [reqs[i] for i in numeric], now)
                results = dict(zip(numeric, found, strict=True))
            except Exception as e:  # noqa: BLE001 - a failing dependency must not fail the request
                logger.exception("recall failed for %d user(s) on %s", len(numeric), tag)
                results = {}
                errors.update({i: f"{type(e).__name__}: {e}"[:300] for i in numeric})
                if len(numeric) > 1:  # one at a time: one user's failure never changes another's answer
                    for i, u in zip(numeric, users, strict=True):
                        try:
                            results[i] = self._recall(retriever, [u], [reqs[i]], now)[0]
                            errors.pop(i)
                        except Exception as e1:  # noqa: BLE001
                            errors[i] = f"{type(e1).__name__}: {e1}"[:300]
                            if type(e1) is type(e) and not results:
                                break  # the first user fails as the batch did: a dependency is down, not a user
            for i in numeric:
                if i in results:
                    out[i] = self._response(plans[i], results[i])
                    state.cache.put(plans[i][3], out[i], plans[i][4])  # not if a push dropped the user meanwhile
                else:  # the popularity list, flagged: the A/B report's error-rate guardrail counts these
                    out[i] = self._response(plans[i], retriever.popularity(reqs[i].k)) | {"fallback": "error"}
        elapsed = time.perf_counter() - t0
        if not log:
            return out  # type: ignore[return-value]
        CACHE.set(state.cache.hit_rate)
        if bad:
            logger.warning("recall_batch: %d of %d user ids refused (not canonical)", bad, len(reqs))
        for i, r in enumerate(reqs):
            resp = out[i]
            if plans[i] is None:
                continue
            REQUESTS.labels(
                experiment=resp["experiment"] or "",
                variant=resp["variant"],
                model=resp["model"],
                fallback=resp["fallback"] or "",
            ).inc()
            LATENCY.labels(variant=resp["variant"], model=resp["model"]).observe(elapsed)
            self.log.write(
                {
                    "time": now,
                    "user_id": r.user_id,
                    "experiment": resp["experiment"],
                    "variant": resp["variant"],
                    "model": resp["model"],
                    "fallback": resp["fallback"],
                    "k": r.k,
                    "items": [x["item_id"] for x in resp["items"]],
                    "latency_ms": round(elapsed * 1000, 3),
                    **({"error": errors[i]} if i in errors else {}),
                }
            )
        return out  # type: ignore[return-value]

    def _recall(self, retriever, users: list[int], reqs: list[RecallRequest], now: float) -> list:
        feats = self.ctl.online(users, retriever.feature_refs)
        moments = [now if r.context is None or r.context.time is None else r.context.time for r in reqs]
        return retriever.recall(users, feats, [r.k for r in reqs], [r.exclude_seen for r in reqs], moments)

    @staticmethod
    def _response(plan, res, unknown: bool = False) -> dict[str, Any]:
        a, retriever, flag = plan[:3]
        return {
            "items": [{"item_id": it, "score": round(s, 6)} for it, s in zip(res.items, res.scores, strict=True)],
            "model": retriever.tag,
            "variant": a.variant,
            "experiment": a.experiment,
            "fallback": res.fallback or flag,
        }

    @bentoml.api(route="/recall")
    async def recall(
        self, user_id: UserId, k: K = 100, context: Context | None = None, exclude_seen: bool = True
    ) -> dict[str, Any]:
        """Top-k items for one user from the version the routing assigns to them."""
        req = [RecallRequest(user_id=user_id, k=k, context=context, exclude_seen=exclude_seen)]
        if self.off_loop:  # the Redis read waits on the network: the loop takes other requests meanwhile
            return (await anyio.to_thread.run_sync(self._serve, req))[0]
        # With SQLite it is ~1 ms of CPU-bound work (GIL held throughout): inline beats a thread hand-off
        # (benchmarks/results/serving_reads.json).
        return self._serve(req)[0]

    @bentoml.api(route="/recall_batch", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=BATCH_MAX_LATENCY_MS)
    def recall_batch(self, requests: Batch) -> list[dict[str, Any]]:
        """Many users in one call, ``{"requests": [{"user_id": "1", "k": 10}, ...]}`` (at most 1000);
        concurrent calls are merged by BentoML's adaptive batching into one feature read, one tower
        run and one index search per model version."""
        return self._serve(requests)

    @bentoml.api(route="/events")
    def events(self, events: Events) -> dict[str, Any]:
        """New interactions, ``{"events": [{"user_id": "1", "item_id": "50", "timestamp": 1700000000}]}``
        (at most 1000; ids are raw integer ids; no timestamp = now): pushed to the online store at once."""
        import pandas as pd

        now = time.time()
        late = [e.timestamp for e in events if e.timestamp is not None and e.timestamp > now + FUTURE_SLACK_S]
        if late:
            raise bentoml.exceptions.InvalidArgument(
                f"event timestamp {late[0]:.0f} is {late[0] - now:.0f} s in the future (unix seconds expected)"
            )
        df = pd.DataFrame(
            {
                "user_id": [int(e.user_id) for e in events],
                "item_id": [int(e.item_id) for e in events],
                "event_timestamp": pd.to_datetime(
                    [now if e.timestamp is None else e.timestamp for e in events], unit="s", utc=True
                ),
            }
        )
        out = self.ctl.push(df)
        logger.info("pushed %d event(s) of %d user(s)", out["events"], out["users"])
        return out


RecallService.add_asgi_middleware(ControlMiddleware)
for _api in ("recall", "recall_batch", "events"):  # a typo'd field ("K": 5) is a 400, never silently ignored
    RecallService.apis[_api].input_spec.model_config["extra"] = "forbid"
    RecallService.apis[_api].input_spec.model_rebuild(force=True)
