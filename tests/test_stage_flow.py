"""One execution of the train stage works each thing out once: the params file is read, the
param groups assigned, the schedule resolved and the config linted exactly once, from params to
outputs and a FINISHED MLflow run."""

import sys
from collections import Counter

import yaml
from mlflow.tracking import MlflowClient

from kiwi_pipe_optim import lint, param_groups, params_file, resolve
from kiwi_pipe_optim.integrations.stage import run
from tests.conftest import ROOT, committed

COUNTED = {resolve.resolve.__code__: "resolve", param_groups.assign.__code__: "assign",
           lint.lint.__code__: "lint", params_file.read_params.__code__: "read_params"}
SMALL = {"data": {"init_args": {"limit": 200}},
         "model": {"init_args": {"d_model": 8, "nhead": 2, "num_layers": 1, "dim_feedforward": 16}},
         "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False}}


def merged(base, extra):
    return {**base, **{k: merged(base.get(k) or {}, v) if isinstance(v, dict) else v for k, v in extra.items()}}


def counted_calls(call):
    calls = Counter()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in COUNTED:
            calls[COUNTED[frame.f_code]] += 1

    sys.setprofile(profile)
    try:
        result = call()
    finally:
        sys.setprofile(None)
    return result, calls


def test_one_stage_execution_reads_assigns_resolves_and_lints_once(tmp_path, monkeypatch):
    assert (ROOT / "params.yaml").exists()
    params = merged(yaml.safe_load(committed("params.yaml")), SMALL)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    metrics, calls = counted_calls(lambda: run("params.yaml", tmp_path))

    assert calls == {"read_params": 1, "assign": 1, "resolve": 1, "lint": 1}
    assert metrics["steps"] == 3  # 160 training images, batches of 64
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [finished] = client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    assert finished.info.status == "FINISHED"
    assert finished.data.params["resolved.training_steps"] == "3"


def test_the_count_sees_a_second_call(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(committed("params.yaml"))
    _, calls = counted_calls(lambda: [params_file.read_params(path) for _ in range(2)])
    assert calls == {"read_params": 2}
