"""``kiwi-optim ui``: the MLflow UI on the repository's store, opened on the experiment's runs.

MLflow 3's UI (3.17) shows an experiment in the workflow its sidebar switch ("GenAI" / "Model
training") names, whatever the experiment's ``mlflow.experimentKind`` tag says: ``useExperimentKind``
(``experiment-tracking/utils/ExperimentKindUtils.tsx``) returns the ``workflowType`` of
``common/contexts/WorkflowTypeContext.tsx``, which is the URL's ``?workflowType=``, else what the
switch last stored in this browser's localStorage (``mlflow.workflowType_v1``), else ``genai``; and
``useNavigateToExperimentPageTab`` opens a GenAI experiment on its Overview, any other on its runs.
So the URL printed here names ``workflowType=machine_learning``, and the UI started here is served
through a small proxy whose page makes "Model training" the choice of a browser that never made one.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator
from urllib.parse import urlsplit

from ..errors import ConfigError, Problem

DEFAULT_EXPERIMENT = "kiwi-pipe-optim"
DEFAULT_PORT = 5000
START_TIMEOUT_S = 180.0
UPSTREAM_TIMEOUT_S = 600.0
# MLflow's useLocalStorage keeps a value as JSON under `${key}_v${version}`; the user's own choice stays.
WORKFLOW_DEFAULT = (b'<script>try{if(!localStorage.getItem("mlflow.workflowType_v1"))localStorage.setItem('
                    b'"mlflow.workflowType_v1",JSON.stringify("machine_learning"))}catch(e){}</script>')
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})


def register(sub: Any) -> None:
    ui = sub.add_parser("ui", help="the MLflow UI on this repository's store, opened on the experiment's runs table")
    ui.add_argument("--experiment", help="MLflow experiment (default: params.yaml's mlflow.experiment_name, "
                    f"else {DEFAULT_EXPERIMENT})")
    ui.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else params.yaml's mlflow.tracking_uri, else "
                    "sqlite:///mlflow.db here; of an http(s) server only the URL is printed")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"(default {DEFAULT_PORT}; 0: any free port)")
    ui.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..extras import require

    require("mlflow", "kiwi-optim ui")
    from ..integrations.tracking.store import check_reachable, repository_root, tracking_uri

    root = repository_root()
    section = _mlflow_section(root / "params.yaml")
    uri = args.tracking_uri or tracking_uri(section.get("tracking_uri"), root)
    field = ("--tracking-uri" if args.tracking_uri else "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
             else "mlflow.tracking_uri" if section.get("tracking_uri") else "--tracking-uri")
    experiment = args.experiment or section.get("experiment_name") or DEFAULT_EXPERIMENT
    if uri.startswith(("http://", "https://")):  # a server of its own: nothing to start
        check_reachable(uri, field, fix="or pass --tracking-uri")
        print(runs_url(uri, _experiment_id(uri, experiment, field)))
        return 0
    _check_store(uri, field)
    experiment_id = _experiment_id(uri, experiment, field)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            proxy = stack.enter_context(_listening(args.host, args.port))
            print(f"starting the MLflow UI of {uri} ...", file=sys.stderr, flush=True)
            proxy.upstream_port, server, log = stack.enter_context(_mlflow_server(uri, root / "mlartifacts"))
            threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
            stack.callback(proxy.shutdown)
            print(f"the runs of {experiment!r} (Ctrl-C stops the UI):\n  "
                  f"{runs_url(_address(args.host, proxy.server_address[1]), experiment_id)}", flush=True)
            code = server.wait()
            raise ConfigError(Problem("", f"the MLflow server stopped (exit status {code}): {_last_line(log)}"))
    except KeyboardInterrupt:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def runs_url(base: str, experiment_id: str) -> str:
    """Where the UI shows the experiment's runs table, in the "Model training" workflow."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # Ctrl-C, even where a shell started us ignoring it, and SIGTERM stop the UI


def _mlflow_section(path: Path) -> dict[str, Any]:
    from ..params_file import read_params

    if not path.is_file():
        return {}
    section = read_params(path)[0].get("mlflow")
    return section if isinstance(section, dict) else {}


def _check_store(uri: str, field: str) -> None:
    """A store that is not there is refused, not created empty."""
    from ..integrations.tracking.store import sqlite_path

    db = sqlite_path(uri)
    parts = urlsplit(uri)
    local = db if db is not None else Path(parts.path) if parts.scheme in ("", "file") else None
    if local is not None and not local.exists():
        local = local.resolve()
        raise ConfigError(Problem(field, f"no MLflow store at {local}; train first (dvc repro), or pass "
                                  f"--tracking-uri"))


def _experiment_id(uri: str, name: str, field: str) -> str:
    from mlflow.tracking import MlflowClient

    from ..integrations.tracking.store import retrying

    try:
        client = MlflowClient(tracking_uri=uri)
        found = retrying(client.get_experiment_by_name, name)
        names = [] if found is not None else [e.name for e in retrying(client.search_experiments)]
    except Exception as e:  # a file that is no MLflow store, a server that refuses us
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}" if str(e).strip() else type(e).__name__
        raise ConfigError(Problem(field, f"cannot read the MLflow store at {uri} ({reason})")) from None
    if found is None:
        raise ConfigError(Problem("--experiment", f"no experiment {name!r} in {uri}; it has: "
                                  f"{', '.join(names) or 'none'}"))
    if found.lifecycle_stage == "deleted":
        raise ConfigError(Problem("--experiment", f"experiment {name!r} is deleted in {uri}; restore it with "
                                  f"`mlflow experiments restore --experiment-id {found.experiment_id}`"))
    return found.experiment_id


def _address(host: str, port: int) -> str:
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


@contextlib.contextmanager
def _listening(host: str, port: int) -> Iterator[_Proxy]:
    """The proxy's socket, bound before MLflow starts so a taken port fails at once."""
    try:
        proxy = _Proxy((host, port))
    except OSError as e:
        where = "--port" if e.errno == errno.EADDRINUSE else "--host"
        raise ConfigError(Problem(where, f"cannot listen on {host}:{port} ({e.strerror or e}); pass another "
                                  f"{where}" + (" (0: any free port)" if where == "--port" else ""))) from None
    try:
        yield proxy
    finally:
        proxy.server_close()


@contextlib.contextmanager
def _mlflow_server(uri: str, artifacts: Path) -> Iterator[tuple[int, subprocess.Popen, IO[bytes]]]:
    """``mlflow server`` on a free port of 127.0.0.1, answering, its output in a temporary file;
    stopped, its whole process group, on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--artifacts-destination",
               str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # No job runner: its consumers (seven processes) run GenAI jobs this UI never asks for.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
        try:
            _wait_until_healthy(server, port, log)
            yield port, server, log
        finally:
            _stop(server)


def _wait_until_healthy(server: subprocess.Popen, port: int, log: IO[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(port):
        if server.poll() is not None:
            raise ConfigError(Problem("", f"the MLflow server did not start (exit status {server.returncode}): "
                                      f"{_last_line(log)}"))
        if time.monotonic() > deadline:
            raise ConfigError(Problem("", f"the MLflow server did not answer within {START_TIMEOUT_S:.0f} s: "
                                      f"{_last_line(log)}"))
        time.sleep(0.25)


def _healthy(port: int) -> bool:
    health = http.client.HTTPConnection("127.0.0.1", port, timeout=2)  # direct, whatever HTTP_PROXY says
    try:
        health.request("GET", "/health")
        return health.getresponse().status == 200
    except OSError:
        return False
    finally:
        health.close()


def _stop(server: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)  # the uvicorn workers too
        except ProcessLookupError:
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=wait)
            return


def _last_line(log: IO[bytes]) -> str:
    log.seek(0)
    lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _with_default(page: bytes) -> bytes:
    at = page.find(b"<head>")
    return page[:at + 6] + WORKFLOW_DEFAULT + page[at + 6:] if at >= 0 else WORKFLOW_DEFAULT + page


class _Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.upstream_port = 0
        super().__init__(address, _Forward)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a browser that went away is no news
            super().handle_error(request, client_address)


class _Forward(http.server.BaseHTTPRequestHandler):
    """Every request goes to the MLflow server as it came, one a connection (so a streamed answer
    ends when the connection closes); the UI's page gets :data:`WORKFLOW_DEFAULT` at the top of
    its head, before MLflow's scripts read the workflow."""

    server: _Proxy

    def do_GET(self) -> None:
        page = self.command == "GET" and urlsplit(self.path).path in ("/", "/index.html")
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=UPSTREAM_TIMEOUT_S)
        with contextlib.closing(upstream):
            try:
                response = self._ask(upstream, page)
            except OSError as e:
                self.send_error(502, f"the MLflow server does not answer ({e})")
                return
            content = _with_default(response.read()) if page and response.status == 200 else None
            self.send_response_only(response.status, response.reason)
            changed = {"content-length", "etag", "last-modified"} if content is not None else set()
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP | changed:
                    self.send_header(key, value)
            if content is not None:
                self.send_header("Content-Length", str(len(content)))
            self.send_header("Connection", "close")
            self.end_headers()
            if content is not None:
                self.wfile.write(content)
                return
            while chunk := response.read1(65536):
                self.wfile.write(chunk)
                self.wfile.flush()

    def _ask(self, upstream: http.client.HTTPConnection, page: bool) -> http.client.HTTPResponse:
        """The request, as it came, to the MLflow server; the page whole and unencoded, to edit."""
        body = self._body()
        drop = HOP_BY_HOP | {"content-length"} | (
            {"accept-encoding", "if-none-match", "if-modified-since", "range"} if page else set())
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for key, value in self.headers.items():
            if key.lower() not in drop:
                upstream.putheader(key, value)
        if body is not None:
            upstream.putheader("Content-Length", str(len(body)))
        upstream.endheaders(body)
        return upstream.getresponse()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(parts)
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length else None

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet
