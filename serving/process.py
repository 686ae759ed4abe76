"""Run the recall service as a real `bentoml serve` process (the demo, the tests, the load benchmark), and a
throwaway `redis-server` for its Redis online store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(directory: str | Path) -> Iterator[str]:
    """A local ``redis-server`` without persistence on a free loopback port, working in ``directory``;
    yields ``host:port`` and stops it on exit."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server is not installed: apt-get install redis-server (make test does it)")
    port = free_port()
    cmd = [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server did not listen on port {port} within 5 s")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def running_service(
    env: dict[str, str],
    log_path: str | Path,
    timeout_s: float = 180,
    target: str = "serving.service:RecallService",
    cwd: str | Path = ROOT,
) -> Iterator[str]:
    """Starts ``bentoml serve <target>`` (the source tree's service, or a built bento's tag) on a free
    loopback port with ``env`` added to the environment, waits for ``/readyz``, yields the base URL, and
    stops the process on exit. Raises ``RuntimeError`` with the end of the server log if it exits or never
    becomes ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bentoml = str(Path(sys.executable).parent / "bentoml")
    cmd = [bentoml, "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout_s
            while not _ready(url):
                if proc.poll() is not None or time.time() > deadline:
                    tail = log_path.read_text()[-3000:]
                    raise RuntimeError(f"the recall service did not become ready; its log ends:\n{tail}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
