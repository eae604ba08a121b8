"""`dvc repro`, `dvc exp run` and the DVC queue on the real pipeline, read back from MLflow."""

import json
import shutil
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import make_repo, sh, stage_in_process

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("pipeline")]  # one module-scoped repository

EXPERIMENT = "kiwi-pipe-optim"


def client(repo):
    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def runs(repo):
    c = client(repo)
    experiment = c.get_experiment_by_name(EXPERIMENT)
    return c.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def linear_formula(step, lr, warmup, total):
    if step < warmup:
        return lr * step / warmup
    return lr * max(0.0, (total - step) / (total - warmup))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = make_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    first = sh(["dvc", "repro"], path)
    after_first = runs(path)
    second = sh(["dvc", "repro"], path)
    return {"path": path, "first": first, "second": second, "after_first": after_first}


def test_repro_logs_one_finished_run_with_every_step(repo):
    path = repo["path"]
    [run] = repo["after_first"]
    assert run.info.status == "FINISHED"
    metrics = json.loads((path / "metrics.json").read_text())
    steps = metrics["steps"]
    assert steps == 10 and {"val_loss", "val_acc", "train_loss"} <= set(metrics)

    params = run.data.params
    warmup, total = int(params["resolved.warmup_steps"]), int(params["resolved.training_steps"])
    assert (warmup, total) == (1, 10)  # 0.1 of the trainer's 10 steps
    c = client(path)
    for group, lr in (("default", float(params["optimizer.learning_rate"])),
                      ("encoder", float(params["optimizer.encoder_learning_rate"]))):
        history = sorted(c.get_metric_history(run.info.run_id, f"lr/{group}"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(steps)), group
        assert [m.value for m in history] == pytest.approx(
            [linear_formula(s, lr, warmup, total) for s in range(steps)], rel=1e-12, abs=1e-15)
    loss = c.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in loss) == list(range(steps))
    assert len(c.get_metric_history(run.info.run_id, "val_loss")) == 2  # one per epoch


def test_repro_params_tags_and_artifact(repo):
    path = repo["path"]
    [run] = repo["after_first"]
    params, tags = run.data.params, run.data.tags
    assert params["optimizer.class_name"] == "adamw"
    assert params["trainer.max_epochs"] == "2"
    assert params["model.init_args.d_model"] == "16"
    assert params["resolved.schedule"] == "linear" and params["resolved.optimizer_class"] == "AdamW"
    head = sh(["git", "rev-parse", "HEAD"], path).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    assert len(tags["params.sha256"]) == 64
    assert tags["mlflow.source.name"] == "kiwi-optim train" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"]
    for key in ("version.torch", "version.lightning", "version.mlflow", "version.kiwi_pipe_optim"):
        assert tags[key] and tags[key] != "not installed"
    text = (path / "mlartifacts").rglob("optimizer.yaml")
    assert "class_name: adamw" in next(text).read_text()


def test_repro_writes_outputs_and_second_repro_does_nothing(repo):
    path = repo["path"]
    for group in ("encoder", "default"):
        lr_csv = (path / "plots" / "lr" / f"{group}.csv").read_text().splitlines()
        assert lr_csv[0] == "step,lr" and len(lr_csv) == 11
    assert (path / "plots" / "loss.csv").read_text().splitlines()[0] == "step,train_loss"
    assert "didn't change, skipping" in repo["second"].stdout
    assert len(runs(path)) == len(repo["after_first"]) == 1


def test_a_default_repro_prints_none_of_the_libraries_noise(repo):
    said = repo["first"].stdout + repo["first"].stderr
    assert "Running stage 'train'" in said
    for noise in ("litlogger", "LeafSpec", "Creating initial MLflow database tables", "Updating database tables"):
        assert noise not in said, noise


def test_exp_run_with_overrides_is_a_second_run(repo):
    path = repo["path"]
    out = sh(["dvc", "exp", "run", "-S", "optimizer.class_name=sgd", "-S", "optimizer.learning_rate=0.05"], path)
    finished = [r for r in runs(path) if r.data.tags.get("dvc.exp_name")]
    assert len(finished) == 1
    run = finished[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.class_name"] == "sgd"
    assert float(run.data.params["optimizer.learning_rate"]) == 0.05
    name = run.data.tags["dvc.exp_name"]
    assert run.info.run_name == name and name in out.stdout
    assert run.data.tags["dvc.baseline_rev"] == sh(["git", "rev-parse", "HEAD"], path).stdout.strip()
    shown = sh(["dvc", "exp", "show", "--json"], path).stdout
    assert name in shown and "workspace" in shown


# Every point differs from the experiments run before: DVC restores a stage it has already run
# with the same params and deps from its run cache, without running it (so without a new run).
SWEEP = [
    ["-S", "optimizer.class_name=adam", "-S", "optimizer.learning_rate=0.002", "-S", "+optimizer.scheduler=cosine"],
]


def test_queued_sweep_lands_in_the_repository_store(repo):
    path = repo["path"]
    sh(["git", "checkout", "--", "params.yaml"], path)  # `dvc exp run` left the last experiment's params
    before = {r.info.run_id for r in runs(path)}
    for overrides in SWEEP:
        sh(["dvc", "exp", "run", "--queue", *overrides], path)
    sh(["dvc", "queue", "start"], path)
    deadline = time.time() + 480
    while time.time() < deadline:
        status = sh(["dvc", "queue", "status"], path).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, status + sh(["dvc", "queue", "logs", status.split()[-1]], path, check=False).stdout
    new = [r for r in runs(path) if r.info.run_id not in before]
    assert len(new) == len(SWEEP), status
    assert all(r.info.status == "FINISHED" for r in new)
    chosen = sorted((r.data.params["optimizer.class_name"], r.data.params["resolved.schedule"]) for r in new)
    assert chosen == [("adam", "cosine")], status
    assert len({r.data.tags["dvc.exp_name"] for r in new}) == len(SWEEP)
    assert all({"lr/default", "lr/encoder", "train_loss", "val_loss"} <= set(r.data.metrics) for r in new)
    assert not list((path / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))  # no store in the temp copies
    shown = sh(["dvc", "exp", "show", "--json"], path).stdout
    assert all(r.data.tags["dvc.exp_name"] in shown for r in new)


def test_plots_diff_overlays_two_experiments(repo, tmp_path):
    path = repo["path"]
    names = [r.data.tags["dvc.exp_name"] for r in runs(path) if r.data.tags.get("dvc.exp_name")][-2:]
    out = tmp_path / "diff"
    sh(["dvc", "plots", "diff", *names, "-o", str(out)], path)
    html = (out / "index.html").read_text()
    assert all(name in html for name in names)
    assert "plots/lr/default.csv" in html and "plots/lr/encoder.csv" in html and "plots/schedule/encoder.csv" in html


def test_muon_with_wsd_trains_in_the_stage(repo, tmp_path):
    """The section of the Muon issue on the bundled Transformer for 200 steps: both halves of every
    group logged, warm-up, the stable stretch and the 1-sqrt decay in the LR history. (``-S``
    reaching the stage is the exp run test's; this one is about what trains.)"""
    path = tmp_path / "muon"
    shutil.copytree(repo["path"], path, symlinks=True)
    sh(["git", "checkout", "--", "params.yaml"], path)
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["optimizer"].update(class_name="muon", learning_rate=0.02, warmup_steps=20, training_steps=200,
                               scheduler="wsd")
    params["trainer"]["max_epochs"] = 40
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = {r.info.run_id for r in runs(path)}
    trained = stage_in_process(path)
    assert trained.returncode == 0, trained.stderr
    [run] = [r for r in runs(path) if r.info.run_id not in before]
    assert run.info.status == "FINISHED"
    assert (run.data.params["optimizer.class_name"], run.data.params["resolved.schedule"]) == ("muon", "wsd")
    # encoder_learning_rate (0.005) splits encoder and the rest; the rest is the head, all AdamW
    assert {"lr/encoder", "lr/encoder/adamw", "lr/default/adamw", "train_loss"} <= set(run.data.metrics)
    assert "lr/default" not in run.data.metrics

    def wsd(step):
        if step < 20:
            return step / 20
        return 1.0 if step < 180 else 1 - ((step - 180) / 20) ** 0.5

    for key, lr in (("lr/encoder", 0.005), ("lr/encoder/adamw", 0.0005), ("lr/default/adamw", 0.002)):
        history = sorted((m.step, m.value) for m in client(path).get_metric_history(run.info.run_id, key))
        assert [s for s, _ in history] == list(range(200))
        assert [v for _, v in history] == pytest.approx([lr * wsd(s) for s in range(200)], rel=1e-9, abs=1e-15)
