import pickle

import pytest
import torch

from kiwi_pipe_optim import ConfigError, OptimizerConfig, from_config, save_state
from kiwi_pipe_optim.state import read_state
from tests.conftest import Exploit


def train(opt, sched, model, steps):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
        sched["scheduler"].step()


def make(section, model=None):
    model = model or torch.nn.Linear(4, 2)
    [opt], [sched] = from_config(OptimizerConfig(**section), model)
    return model, opt, sched


SECTION = dict(class_name="adamw", learning_rate=1e-3, warmup_steps=5, training_steps=40)


def test_save_then_load_resumes_optimizer_and_scheduler(tmp_path):
    torch.manual_seed(0)
    model, opt, sched = make(SECTION)
    train(opt, sched, model, 12)
    path = save_state(tmp_path / "state.pt", opt, sched["scheduler"], class_name="adamw")

    resumed_model = torch.nn.Linear(4, 2)
    resumed_model.load_state_dict(model.state_dict())
    _, opt2, sched2 = make({**SECTION, "load": str(path)}, resumed_model)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert sched2["scheduler"].last_epoch == 12
    train(opt, sched, model, 10)
    train(opt2, sched2, resumed_model, 10)
    assert torch.equal(model.weight, resumed_model.weight)


def test_plain_optimizer_state_dict_is_accepted(tmp_path):
    model, opt, sched = make(SECTION)
    train(opt, sched, model, 3)
    torch.save(opt.state_dict(), tmp_path / "plain.pt")
    _, opt2, _ = make({**SECTION, "load": str(tmp_path / "plain.pt")}, model)
    assert opt2.state_dict()["state"][0]["step"] == 3


def test_code_carrying_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"optimizer": Exploit(str(marker))}, evil)
    with pytest.raises(ConfigError) as info:
        make({**SECTION, "load": str(evil)})
    assert str(info.value).startswith(f"optimizer.load: '{evil}' was refused: it holds Python objects that could run code")
    assert not marker.exists()

    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Exploit(str(marker))))
    with pytest.raises(ConfigError, match="was refused|is not a saved optimizer state"):
        make({**SECTION, "load": str(raw)})
    assert not marker.exists()


def test_not_a_state_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    with pytest.raises(ConfigError, match=rf"^optimizer.load: '{junk}' is not a saved optimizer state"):
        make({**SECTION, "load": str(junk)})
    tensors = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, tensors)
    with pytest.raises(ConfigError, match=rf"^optimizer.load: '{tensors}' holds no optimizer state"):
        make({**SECTION, "load": str(tensors)})


def test_state_of_another_optimizer_or_model(tmp_path):
    model, opt, sched = make(SECTION)
    path = save_state(tmp_path / "s.pt", opt, sched["scheduler"], class_name="adamw")
    with pytest.raises(ConfigError, match=r"holds adamw state, but optimizer.class_name is adam"):
        make({**SECTION, "class_name": "adam", "scheduler": "linear", "load": str(path)})
    with pytest.raises(ConfigError, match=r"does not fit this model's parameters"):
        make({**SECTION, "load": str(path)}, torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))


def test_a_decompression_bomb_and_a_directory_are_refused_before_loading(tmp_path):
    import zipfile

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w") as f:
            for _ in range(256):  # 256 MiB of zeros, a few hundred KiB on disk
                f.write(bytes(1 << 20))
    with pytest.raises(ConfigError, match=r"^optimizer.load: '.*bomb.pt' would unpack to 268,435,456 bytes from "):
        read_state(bomb)
    with pytest.raises(ConfigError, match=r"^optimizer.load: '.*' is a directory, not a file; "):
        read_state(tmp_path)
