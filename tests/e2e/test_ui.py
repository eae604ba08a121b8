"""``kiwi-optim ui`` in a real headless Chromium, on the user's path: the UI's home page, a click on
the experiment, its runs table (not MLflow 3's GenAI overview), two runs ticked and compared, and
their LR charts in one plot."""

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN
from tests.e2e.conftest import stage_in_process, tool_env

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
EXPERIMENT = "kiwi-pipe-optim"
EXPERIMENTS = {
    "adamw-warmup": {"class_name": "adamw", "learning_rate": 0.01, "encoder_learning_rate": 0.005, "warmup_steps": 0.3},
    "sgd-plateau": {"class_name": "sgd", "learning_rate": 0.05, "encoder_learning_rate": 0.02,
                    "learning_rate_decay": 0.5, "learning_rate_decay_start": 0},
}
WAIT_MS = 60_000


def processes_naming(text: str) -> list[int]:
    """The processes whose command line names ``text`` (a test's own temp path)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def start_ui(repo: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``kiwi-optim ui --port 0`` in ``repo``, as the README says to run it, and the URL it prints."""
    ui = subprocess.Popen([str(BIN / "kiwi-optim"), "ui", "--port", "0"], cwd=repo, env=tool_env(),
                          stdout=subprocess.PIPE, stderr=log.open("w"), text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in ui.stdout], daemon=True).start()
    printed = []
    try:
        while True:
            line = lines.get(timeout=180)
            printed.append(line)
            if found := re.search(r"https?://\S+", line):
                return ui, found.group(0)
    except queue.Empty:
        pass
    stop_ui(ui)
    kill_leftovers(repo)
    raise AssertionError(f"kiwi-optim ui printed no URL:\n{''.join(printed)}\n{log.read_text()}")


def stop_ui(ui: subprocess.Popen) -> int:
    """Ctrl-C, as a user stops it; its exit status."""
    ui.send_signal(signal.SIGINT)
    try:
        return ui.wait(timeout=60)
    except subprocess.TimeoutExpired:
        ui.kill()
        return ui.wait()


def server_processes(repo: Path) -> list[int]:
    """The processes of an MLflow server on ``repo``'s store."""
    return processes_naming(str((repo / "mlflow.db").resolve()))


def kill_leftovers(repo: Path) -> None:
    for pid in server_processes(repo):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def mlflow_ui(repo_factory, tmp_path):
    repo = repo_factory({"optimizer": EXPERIMENTS["adamw-warmup"]})
    for name, section in EXPERIMENTS.items():
        data = yaml.safe_load((repo / "params.yaml").read_text())
        data["optimizer"] = section
        (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        trained = stage_in_process(repo, DVC_EXP_NAME=name)  # what the browser shows is what matters here
        assert trained.returncode == 0, trained.stderr
    ui, url = start_ui(repo, tmp_path / "ui.log")
    yield repo, ui, url
    if ui.poll() is None:
        stop_ui(ui)
    kill_leftovers(repo)


def test_the_ui_opens_the_experiment_on_its_runs_and_compares_their_lr(mlflow_ui, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed for this test: apt-get install chromium"
    repo, ui, url = mlflow_ui
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\?workflowType=machine_learning", url), url
    home = url.split("#")[0]
    shots = Path(os.environ.get("KIWI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        # MLflow's assistant opens itself on a browser's first visit and covers a quarter of every
        # screenshot: this browser has seen it. Nothing else of the browser's state is set here.
        page.add_init_script('localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true")')

        # a fresh browser on the home page, as a user opens it: the experiment, then its runs table
        page.goto(home)
        page.get_by_role("link", name=EXPERIMENT, exact=True).first.click(timeout=WAIT_MS)
        expect(page).to_have_url(re.compile(r"#/experiments/\d+/runs"), timeout=WAIT_MS)  # not .../overview
        rows = {name: page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))
                for name in EXPERIMENTS}
        for row in rows.values():
            row.first.wait_for(timeout=WAIT_MS)
        expect(page.get_by_text(f"{len(EXPERIMENTS)} matching runs")).to_be_visible(timeout=WAIT_MS)
        page.screenshot(path=str(shots / "mlflow-runs.png"))

        for row in rows.values():
            row.get_by_role("checkbox", name=re.compile("row selection")).check(timeout=WAIT_MS)
        page.get_by_role("button", name="Compare", exact=True).click(timeout=WAIT_MS)
        page.get_by_text("Comparing 2 Runs from 1 Experiment").wait_for(timeout=WAIT_MS)
        page.get_by_text("optimizer.learning_rate", exact=True).first.wait_for(timeout=WAIT_MS)
        body = page.inner_text("body")
        for name in EXPERIMENTS:
            assert name in body
        for text in ("optimizer.class_name", "optimizer.learning_rate", "optimizer.encoder_learning_rate",
                     "resolved.schedule", "lr/default", "lr/encoder", "adamw", "sgd", "plateau", "linear"):
            assert text in body, text
        page.screenshot(path=str(shots / "mlflow-compare.png"), full_page=True)

        # the LR charts: follow the comparison's link to lr/default, then add lr/encoder to it
        link = page.locator("a[href*='metric=%22lr%2Fdefault%22']").first
        href = link.get_attribute("href").replace("plot_metric_keys=%5B%22lr%2Fdefault%22%5D",
                                                  "plot_metric_keys=%5B%22lr%2Fdefault%22%2C%22lr%2Fencoder%22%5D")
        page.goto(f"{home}{href}")
        page.wait_for_selector(".js-plotly-plot .scatterlayer .trace", state="attached", timeout=WAIT_MS)
        page.get_by_text("adamw-warmup (lr/encoder)").wait_for(timeout=WAIT_MS)
        chart = page.inner_text("body")
        for name in EXPERIMENTS:
            for group in ("default", "encoder"):
                assert f"{name} (lr/{group})" in chart
        assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 4
        page.screenshot(path=str(shots / "mlflow-lr-chart.png"))
        browser.close()
    for shot in ("mlflow-runs.png", "mlflow-compare.png", "mlflow-lr-chart.png"):
        assert (shots / shot).stat().st_size > 10_000, shot

    code, left = stop_ui(ui), server_processes(repo)
    assert (code, left) == (0, [])  # Ctrl-C stops it cleanly, its MLflow server with it
