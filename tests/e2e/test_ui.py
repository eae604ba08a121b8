"""The MLflow UI, in a real headless Chromium, shows two runs side by side with their LR charts."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import free_port, stage_in_process, start_mlflow_server, stop_server

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
EXPERIMENTS = {
    "adamw-warmup": {"class_name": "adamw", "learning_rate": 0.01, "encoder_learning_rate": 0.005, "warmup_steps": 0.3},
    "sgd-plateau": {"class_name": "sgd", "learning_rate": 0.05, "encoder_learning_rate": 0.02,
                    "learning_rate_decay": 0.5, "learning_rate_decay_start": 0},
}


@pytest.fixture
def mlflow_ui(repo_factory):
    repo = repo_factory({"optimizer": EXPERIMENTS["adamw-warmup"]})
    for name, section in EXPERIMENTS.items():
        data = yaml.safe_load((repo / "params.yaml").read_text())
        data["optimizer"] = section
        (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        trained = stage_in_process(repo, DVC_EXP_NAME=name)  # what the browser shows is what matters here
        assert trained.returncode == 0, trained.stderr
    port = free_port()
    server = start_mlflow_server(repo / "mlflow.db", port, repo)
    url = f"http://127.0.0.1:{port}"
    yield repo, url
    stop_server(server)


def test_mlflow_ui_compares_two_optimizers_with_lr_charts(mlflow_ui, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed for this test: apt-get install chromium"
    repo, url = mlflow_ui
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kiwi-pipe-optim")
    runs = {r.info.run_name: r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(EXPERIMENTS)
    shots = Path(os.environ.get("KIWI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        compare_url = (f"{url}/#/compare-runs?runs={json.dumps(list(runs.values()))}"
                       f"&experiments={json.dumps([experiment.experiment_id])}")
        page.goto(compare_url)
        page.get_by_text("Comparing 2 Runs from 1 Experiment").wait_for(timeout=60000)
        page.get_by_text("optimizer.learning_rate", exact=True).first.wait_for(timeout=30000)
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
        page.goto(f"{url}/{href}")
        page.wait_for_selector(".js-plotly-plot .scatterlayer .trace", state="attached", timeout=60000)
        page.get_by_text("adamw-warmup (lr/encoder)").wait_for(timeout=30000)
        chart = page.inner_text("body")
        for name in EXPERIMENTS:
            for group in ("default", "encoder"):
                assert f"{name} (lr/{group})" in chart
        assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 4
        page.screenshot(path=str(shots / "mlflow-lr-chart.png"))
        browser.close()
    assert (shots / "mlflow-lr-chart.png").stat().st_size > 10_000
