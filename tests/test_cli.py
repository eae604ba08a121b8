import subprocess
import sys

import pytest

from tests.conftest import BIN


def run(*args, cwd=None):
    return subprocess.run([str(BIN / "kiwi-optim"), *args], capture_output=True, text=True, cwd=cwd)


def test_validate_prints_resolved_config(write_params):
    path = write_params("optimizer:\n  class_name: adamw\n  learning_rate: 1e-5\n  warmup_steps: 0.1\n"
                        "  training_steps: 12000\n")
    result = run("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "  learning_rate: 1.0e-05\n" in result.stdout
    assert "# schedule: linear (chosen from class_name / learning_rate_decay)" in result.stdout


def test_validate_defaults_to_params_yaml_in_cwd(write_params, tmp_path):
    write_params("optimizer: {class_name: sgd, learning_rate: 0.1}\n")
    assert run("validate", cwd=tmp_path).returncode == 0


def test_validate_reports_every_problem_and_exits_2(write_params):
    path = write_params("optimizer:\n  class_name: adamx\n  learning_rate: .nan\n  warmup_steps: -1\n")
    result = run("validate", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:2: optimizer.class_name: unknown optimizer 'adamx' (did you mean 'adamax'?); choose one of: "
        "adadelta, adafactor, adagrad, adam, adamax, adamw, averaged_sgd, lbfgs, muon, nadam, noam, radam, rmsprop, rprop, sgd, sparse_adam, or 'package.module:ClassName'",
        f"{path}:3: optimizer.learning_rate: nan is not a finite number; use a positive float such as 0.001",
        f"{path}:4: optimizer.warmup_steps: -1 is not a step count; use a whole number of steps, "
        "or a fraction in [0, 1] of training_steps",
    ]
    assert "Traceback" not in result.stderr


def test_validate_missing_file(tmp_path):
    result = run("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"{tmp_path / 'nope.yaml'}: cannot read the params file "
                                     "(No such file or directory); pass an existing YAML file")


def test_validate_warns_on_warmup_one(write_params):
    path = write_params("optimizer: {class_name: adamw, learning_rate: 1e-3, warmup_steps: 1}\n")
    result = run("validate", str(path))
    assert result.returncode == 0
    assert result.stderr.startswith(f"{path}:1: warning: optimizer.warmup_steps: 1 means a fraction of 1.0")


def test_validate_imports_no_heavy_library(write_params):
    path = write_params("optimizer: {class_name: adam, learning_rate: 1e-3}\n")
    code = ("import sys; from kiwi_pipe_optim.cli import main; rc = main(['validate', %r]); "
            "heavy = [m for m in ('torch', 'lightning', 'mlflow', 'pytorch_lightning') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)") % str(path)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_list():
    result = run("list")
    assert result.returncode == 0
    assert "sparse_adam" in result.stdout and "inverse_sqrt" in result.stdout


def test_validate_prints_a_warning_once_and_exits_0(write_params):
    path = write_params("optimizer:\n  class_name: sgd\n  learning_rate: 0.1\n  learning_rate_decay: 0.5\n"
                        "  warmup_steps: 10\n")
    result = run("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"{path}:5: warning: optimizer.warmup_steps: 10 is not used by the plateau schedule; remove it or choose a "
        "schedule with warm-up: constant, cosine, cosine_restarts, exponential, inverse_sqrt, linear, multistep, noam, one_cycle, polynomial, step, wsd"]


WHOLE_FILE_MISTAKES = [
    ("data", "init_args", "batch_size", 0, "data.init_args.batch_size"),
    ("model", "init_args", "d_modle", 8, "model.init_args.d_modle"),
    ("trainer", None, "precision", "bogus", "trainer.precision"),
    ("mlflow", None, "flush_interval_s", -1, "mlflow.flush_interval_s"),
    ("checkpoint", None, "every_n_steps", "often", "checkpoint.every_n_steps"),
]


@pytest.mark.parametrize("section, sub, key, value, dotted", WHOLE_FILE_MISTAKES, ids=[m[0] for m in WHOLE_FILE_MISTAKES])
def test_validate_checks_the_whole_file_as_the_stage_would(tmp_path, capsys, section, sub, key, value, dotted):
    import yaml

    from kiwi_pipe_optim.cli import main
    from tests.conftest import committed

    params = yaml.safe_load(committed("params.yaml"))
    (params[section][sub] if sub else params[section])[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and f": {dotted}: " in err and "Traceback" not in err


def test_validate_refuses_a_code_carrying_optimizer_load(tmp_path, capsys):
    import torch
    import yaml

    from kiwi_pipe_optim.cli import main
    from tests.conftest import Exploit, committed

    marker = tmp_path / "ran"
    torch.save({"format": "kiwi-pipe-optim/optimizer-state", "optimizer": Exploit(marker)}, tmp_path / "state.pt")
    params = yaml.safe_load(committed("params.yaml"))
    params["optimizer"]["load"] = str(tmp_path / "state.pt")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    assert "optimizer.load: " in capsys.readouterr().err and not marker.exists()
