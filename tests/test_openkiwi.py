"""OpenKiwi's own files as they are: the section at ``system.optimizer``, optimizer state saved as
``{'name': ..., 'state_dict': ...}``."""

import subprocess

import pytest
import torch

from kiwi_pipe_optim import ConfigError, OptimizerConfig, from_config, load_config
from tests.conftest import BIN, ROOT, Exploit

PREDICTOR = ROOT / "tests" / "data" / "openkiwi_predictor.yaml"


def kiwi_optim(*args):
    return subprocess.run([str(BIN / "kiwi-optim"), *args], capture_output=True, text=True)


def test_validate_reads_the_section_where_openkiwi_keeps_it():
    result = kiwi_optim("validate", str(PREDICTOR), "--section", "system.optimizer")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("system:\n  optimizer:\n    class_name: adam\n    learning_rate: 0.001\n")
    assert "# schedule: plateau" in result.stdout

    missing = kiwi_optim("validate", str(PREDICTOR))
    assert missing.returncode == 2
    assert missing.stderr.strip() == (f"{PREDICTOR}: optimizer: missing section; this file has one at "
                                      "system.optimizer: pass --section system.optimizer (OpenKiwi's files keep it there)")


def test_an_error_in_the_openkiwi_section_names_its_dotted_key_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(PREDICTOR.read_text().replace("learning_rate_decay: 0.6", "learning_rate_decay: 6"))
    with pytest.raises(ConfigError) as e:
        load_config(path, section="system.optimizer")
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "learning_rate_decay:" in text)
    assert str(e.value) == (f"{path}:{line}: system.optimizer.learning_rate_decay: 6 is outside [0, 1]; use a factor "
                            "in (0, 1) to reduce on plateau, or 1.0 for none")


def test_the_openkiwi_section_builds_its_plateau_scheduler():
    config = load_config(PREDICTOR, section="system.optimizer")
    [optimizer], [scheduler] = from_config(config, torch.nn.Linear(4, 2))
    plateau = scheduler["scheduler"]
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.001
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (plateau.factor, plateau.patience, scheduler["monitor"], scheduler["interval"]) == (0.6, 2, "val_loss",
                                                                                               "epoch")


def trained_adam(model):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    for _ in range(3):
        model(torch.ones(1, 4)).sum().backward()
        optimizer.step()
    return optimizer


def test_resume_from_an_openkiwi_optimizer_file(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    saved = trained_adam(model)
    path = tmp_path / "optim.torch"
    torch.save({"name": "adam", "state_dict": saved.state_dict()}, path)  # what OpenKiwi wrote

    resumed = from_config(OptimizerConfig(class_name="adam", learning_rate=0.001, load=path), model)
    assert resumed.state_dict()["state"][0]["step"] == 3
    assert torch.equal(resumed.state_dict()["state"][0]["exp_avg"], saved.state_dict()["state"][0]["exp_avg"])

    with pytest.raises(ConfigError, match=r"^optimizer.load: '.*optim.torch' holds adam state, but "
                                          r"optimizer.class_name is sgd; use the same optimizer or start without load$"):
        from_config(OptimizerConfig(class_name="sgd", learning_rate=0.1, load=path), model)


def test_a_code_carrying_file_in_openkiwis_format_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "optim.torch"
    torch.save({"name": "adam", "state_dict": Exploit(marker)}, path)
    with pytest.raises(ConfigError, match=r"^optimizer.load: '.*optim.torch' was refused: it holds Python objects"):
        from_config(OptimizerConfig(class_name="adam", learning_rate=0.001, load=path), torch.nn.Linear(4, 2))
    assert not marker.exists()
