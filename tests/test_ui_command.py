"""``kiwi-optim ui`` without a browser: its one-line errors, the URL of a tracking server it does
not start, and its proxy, which hands MLflow's page the "Model training" default and passes
everything else through as it came."""

import http.client
import http.server
import json
import threading
from contextlib import contextmanager

import pytest

from kiwi_pipe_optim.cli import main
from kiwi_pipe_optim.cli.ui import WORKFLOW_DEFAULT, _Proxy

PAGE = b"<!doctype html><html><head><title>MLflow</title></head><body></body></html>"
EXPERIMENT = {"experiment_id": "7", "name": "kiwi-pipe-optim", "artifact_location": "mlflow-artifacts:/7",
              "lifecycle_stage": "active"}


class FakeMlflow(http.server.BaseHTTPRequestHandler):
    """MLflow's page, its health check, one experiment, an echo and a streamed answer."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/api/2.0/mlflow/experiments/get-by-name"):
            found = "experiment_name=kiwi-pipe-optim" in self.path
            self.answer(200 if found else 404, json.dumps({"experiment": EXPERIMENT} if found else {
                "error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"}).encode())
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"one ", b"two"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.answer(200, PAGE if self.path in ("/", "/health") else b"static", ETag='"page"')

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/api/2.0/mlflow/experiments/search":
            self.answer(200, json.dumps({"experiments": [EXPERIMENT]}).encode())
        else:
            self.answer(201, body + b" " + self.headers.get("Cookie", "").encode())

    def answer(self, status, body, **headers):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # neither this checkout's params.yaml nor its store
    for key in ("DVC_ROOT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)


@contextmanager
def serving(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake_mlflow():
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMlflow)) as port:
        yield port


@pytest.fixture
def proxy(fake_mlflow):
    server = _Proxy(("127.0.0.1", 0))
    server.upstream_port = fake_mlflow
    with serving(server) as port:
        yield port


def request(port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_an_unknown_experiment_is_one_line_and_starts_nothing(sqlite_uri, capsys):
    code = main(["ui", "--tracking-uri", sqlite_uri, "--experiment", "nope"])
    out, err = capsys.readouterr()
    assert code != 0
    assert err == f"--experiment: no experiment 'nope' in {sqlite_uri}; it has: Default\n"
    assert out == ""


def test_a_missing_store_is_one_line_and_is_not_created(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    code = main(["ui", "--tracking-uri", f"sqlite:///{db}"])
    assert code != 0
    assert capsys.readouterr().err == (f"--tracking-uri: no MLflow store at {db}; train first (dvc repro), or pass "
                                       f"--tracking-uri\n")
    assert not db.exists()


def test_a_tracking_server_is_not_started_only_its_runs_url_printed(fake_mlflow, tmp_path, capsys):
    uri = f"http://127.0.0.1:{fake_mlflow}"
    (tmp_path / "params.yaml").write_text(f"mlflow:\n  tracking_uri: {uri}\n  experiment_name: kiwi-pipe-optim\n")
    assert main(["ui"]) == 0
    assert capsys.readouterr().out == f"{uri}/#/experiments/7/runs?workflowType=machine_learning\n"
    assert main(["ui", "--tracking-uri", uri, "--experiment", "nope"]) != 0
    assert capsys.readouterr().err == f"--experiment: no experiment 'nope' in {uri}; it has: kiwi-pipe-optim\n"


def test_the_proxy_gives_the_page_the_model_training_default(proxy):
    status, headers, page = request(proxy, "GET", "/", headers={"Accept-Encoding": "gzip", "If-None-Match": '"page"'})
    assert status == 200
    assert page == PAGE.replace(b"<head>", b"<head>" + WORKFLOW_DEFAULT)
    assert headers["Content-Length"] == str(len(page)) and "ETag" not in headers
    assert b'localStorage.getItem("mlflow.workflowType_v1")' in WORKFLOW_DEFAULT  # the user's choice stays


def test_the_proxy_passes_everything_else_through(proxy):
    status, headers, body = request(proxy, "GET", "/static-files/x.js")
    assert (status, body, headers["ETag"]) == (200, b"static", '"page"')
    status, _, echoed = request(proxy, "POST", "/ajax-api/2.0/mlflow/runs/search", body=b'{"a": 1}',
                                headers={"Cookie": "session=1"})
    assert (status, echoed) == (201, b'{"a": 1} session=1')
    status, _, echoed = request(proxy, "POST", "/upload", body=iter([b"chunked ", b"body"]))  # no length: chunked
    assert (status, echoed) == (201, b"chunked body ")
    assert request(proxy, "GET", "/stream")[::2] == (200, b"one two")


@pytest.mark.parametrize("kind", [None, "genai_development"])
def test_the_stage_marks_its_experiment_as_model_training(sqlite_uri, kind):
    from mlflow.tracking import MlflowClient

    from kiwi_pipe_optim.integrations.tracking.run import MlflowRun

    client = MlflowClient(sqlite_uri)
    made = client.create_experiment("kiwi-pipe-optim", tags={"mlflow.experimentKind": kind} if kind else None)
    with MlflowRun(sqlite_uri, "kiwi-pipe-optim", "run", {}) as run:
        assert run.experiment_id == made
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"
