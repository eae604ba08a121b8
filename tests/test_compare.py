"""`kiwi-optim compare` on a real sqlite MLflow store holding three runs."""

import subprocess

import pytest

from kiwi_pipe_optim.integrations.tracking.run import MlflowRun
from tests.conftest import BIN, empty_store

pytestmark = pytest.mark.xdist_group("compare")  # one store for the module

RUNS = {
    # name: (params, lr curve of "default", dvc experiment)
    "warm-adamw": ({"optimizer.class_name": "adamw", "optimizer.learning_rate": "0.01", "trainer.seed": "0"},
                   [0.0, 0.005, 0.01, 0.0075, 0.005, 0.0025], "exp-adamw"),
    "flat-sgd": ({"optimizer.class_name": "sgd", "optimizer.learning_rate": "0.05", "trainer.seed": "0"},
                 [0.05, 0.05, 0.05, 0.025, 0.025, 0.025], "exp-sgd"),
    "noam": ({"optimizer.class_name": "noam", "optimizer.learning_rate": "1.0", "trainer.seed": "0"},
             [0.001, 0.002, 0.003, 0.0026, 0.0023, 0.0021], None),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = empty_store(tmp_path_factory.mktemp("store") / "mlflow.db")
    for name, (params, curve, exp) in RUNS.items():
        run = MlflowRun(uri, "kiwi-pipe-optim", name, {"dvc.exp_name": exp} if exp else {})
        run.log_params(params)
        rows = [(("lr/default", "lr/encoder"), [lr, lr / 10], 1000 * step, step) for step, lr in enumerate(curve)]
        run.journal.append_rows(rows + [(("val_loss",), [1.0 / (1 + len(name))], 1000 * len(curve), len(curve))])
        run.end("FINISHED")
    return uri


def compare(store, *args, png):
    return subprocess.run([str(BIN / "kiwi-optim"), "compare", "--tracking-uri", store, "--png", str(png), *args],
                          capture_output=True, text=True)


def rows(stdout):
    return [[c.strip() for c in line.split("│")[1:-1]] for line in stdout.splitlines() if line.startswith("│")]


def test_compare_three_runs(store, tmp_path):
    result = compare(store, png=tmp_path / "lr.png")
    assert result.returncode == 0, result.stderr
    header = [line for line in result.stdout.splitlines() if line.startswith("┃")][0]
    columns = [c.strip() for c in header.split("┃")[1:-1]]
    # only the params that differ; trainer.seed is the same everywhere
    assert columns == ["run", "status", "optimizer.class_name", "optimizer.learning_rate", "val_loss",
                       "lr/default peak / final", "lr/encoder peak / final"]
    table = {row[0]: row for row in rows(result.stdout)}
    assert set(table) == set(RUNS)
    assert table["warm-adamw"][2:4] == ["adamw", "0.01"]
    assert table["warm-adamw"][5] == "0.01 / 0.0025"
    assert table["flat-sgd"][5] == "0.05 / 0.025" and table["flat-sgd"][6] == "0.005 / 0.0025"
    assert table["noam"][5] == "0.003 / 0.0021"
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_by_dvc_experiment_and_run_name(store, tmp_path):
    result = compare(store, "exp-sgd", "noam", png=tmp_path / "two.png")
    assert result.returncode == 0, result.stderr
    assert [row[0] for row in rows(result.stdout)] == ["flat-sgd", "noam"]


def test_compare_unknown_run_is_a_clear_error(store, tmp_path):
    result = compare(store, "nope", png=tmp_path / "x.png")
    assert result.returncode == 2
    assert result.stderr.startswith("RUN_OR_EXP: 'nope' names no run of 'kiwi-pipe-optim' (by run id, run name or "
                                    "DVC experiment name); recent runs: ")
    assert "Traceback" not in result.stderr and not (tmp_path / "x.png").exists()
