"""A corpus of broken params files: each gets one line per problem naming file, line and dotted
field, exit code 2 before any training, no MLflow run left RUNNING, and no output overwritten."""

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kiwi_pipe_optim.integrations.stage import main
from tests.conftest import ROOT, Exploit

CORPUS = sorted((Path(__file__).parent / "bad_params").iterdir())
EXPECT = {"empty.yaml": "the file is empty", "binary_junk.yaml": "not a text file (byte 0x80 at offset 128)"}


def expected(path):
    if path.name in EXPECT:
        return EXPECT[path.name]
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first[len("# expect: "):]


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_broken_params(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlflow.db"
    if b"tracking_uri:" not in path.read_bytes():  # else the file's own store is what is wrong
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    (tmp_path / "metrics.json").write_text('{"kept": true}\n')
    code = main(["--params", str(path), "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("kiwi-pipe-optim: ")]
    assert lines, err
    assert "Traceback" not in err
    assert any(expected(path) in line for line in lines), f"{path.name}: {lines}"
    for line in lines:
        assert line.startswith(f"{path}:"), line  # every line names the file (and the line where known)
    assert (tmp_path / "metrics.json").read_text() == '{"kept": true}\n'
    assert not (tmp_path / "plots").exists()
    if store.exists():  # every mistake is found before an MLflow run is started
        client = MlflowClient(f"sqlite:///{store}")
        assert [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])] == []


def test_broken_params_through_the_real_script(tmp_path):
    path = ROOT / "tests" / "bad_params" / "unknown_optimizer.yaml"
    result = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "--params", str(path)],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}:17: optimizer.class_name: unknown optimizer 'adamx' (did you mean ")
    assert "Traceback" not in result.stderr and not (tmp_path / "mlflow.db").exists()


def test_code_carrying_pickle_as_optimizer_load_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    import pickle

    import torch
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": Exploit(str(marker))}, tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Exploit(str(marker))))
    for name in ("evil.pt", "evil.pkl"):
        params = yaml.safe_load((CORPUS[0].parent / "unknown_optimizer.yaml").read_text())
        params["optimizer"].update(class_name="adamw", load=name)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        assert main(["--params", "params.yaml"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("params.yaml:") and f"optimizer.load: '{name}'" in err, err
        assert "refused" in err or "not a saved optimizer state" in err
        assert not marker.exists()
        assert not (tmp_path / "mlflow.db").exists()
