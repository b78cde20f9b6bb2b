"""A real Prometheus server for integration tests: loopback only, a temp dir, removed afterwards.

    def test_x(lab, prometheus):
        prom = prometheus(["127.0.0.1:9417"], rule_files=[ALERTS])
        prom.wait_for_scrapes('tapswitch_build_info', 3)
        assert prom.query("tapswitch_port_up")

`prometheus` (the fixture) starts Debian's /usr/bin/prometheus on a free
port of 127.0.0.1 with its own config and TSDB in a fresh directory,
scraping the targets every second and evaluating rules every second; at the
end of the test it stops every server it started (SIGTERM, then SIGKILL) and
removes their directories, whether the test passed or not. Tests that need
it are skipped where prometheus is not installed (scripts/test.sh installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE_INTERVAL = "1s"
START_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick; a tiny race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PrometheusError(AssertionError):
    """Prometheus did not start, or an API call failed; the message has the server's log."""


class Prometheus:
    """One prometheus process with its config and data under `dir`."""

    def __init__(self, targets: list[str], rule_files: list[str] = (), job: str = "tapswitch"):
        self.dir = tempfile.mkdtemp(prefix="tapswitch-prom-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                       "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [os.path.abspath(f) for f in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
        }
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f)
        self.log_path = os.path.join(self.dir, "prometheus.log")
        self.proc: subprocess.Popen | None = None

    # Starting and stopping.

    def start(self) -> "Prometheus":
        """Start the server and wait until it answers /-/ready."""
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--web.enable-lifecycle", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready in {START_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 10 s) and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()[-4000:]
        except OSError:
            return "(no log)"

    # The HTTP API.

    def api(self, path: str, **params) -> object:
        """GET /api/v1/PATH?params; returns `data`, raises PrometheusError on an error status."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:       # 400/422: a bad query; the body says why
            body = json.load(e)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Evaluate an instant query now; the result as a list of {metric, value} (a scalar as one)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        """Evaluate a range query, as Grafana does a panel's: a list of {metric, values}."""
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def targets_up(self) -> bool:
        active = self.api("targets", state="active")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for_scrapes(self, selector: str, n: int, timeout: float = 30.0) -> None:
        """Wait until every series of `selector` has at least n samples in the last minute."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.query(f"count_over_time({selector}[1m])")
            if counts and min(float(c["value"][1]) for c in counts) >= n:
                return
            if time.monotonic() > deadline:
                targets = self.api("targets", state="active")["activeTargets"]
                raise PrometheusError(f"fewer than {n} scrapes of {selector} in {timeout}s: {counts}\n"
                                      f"targets: {[(t['scrapeUrl'], t['health'], t['lastError']) for t in targets]}"
                                      f"\n{self.log()}")
            time.sleep(0.25)


@pytest.fixture
def prometheus():
    """A factory: prometheus(targets, rule_files=()) starts a server; all are stopped after the test."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("needs prometheus (apt-get install prometheus)")
    servers: list[Prometheus] = []

    def start(targets: list[str], rule_files: list[str] = ()) -> Prometheus:
        server = Prometheus(targets, rule_files)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        errors = []
        for server in servers:      # each, whatever became of the others' stops
            try:
                server.stop()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]
