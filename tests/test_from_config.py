import logging

import pytest
import torch

from kiwi_pipe_optim import ConfigError, OptimizerConfig, from_config
from kiwi_pipe_optim.optimizers import implementation_of, resolve_for


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))
        self.head = torch.nn.Linear(16, 3)


SECTIONS = [
    dict(class_name="adamw", learning_rate=1e-5, warmup_steps=0.1, training_steps=12000),
    dict(class_name="adam", learning_rate=0.001, learning_rate_decay=0.6, learning_rate_decay_start=2),
    dict(class_name="adam", learning_rate=0.001),
    dict(class_name="noam", learning_rate=2.0, warmup_steps=0.5),
    dict(class_name="sgd", learning_rate=0.1, encoder_learning_rate=0.01, scheduler="cosine", warmup_steps=3),
]


@pytest.mark.parametrize("section", SECTIONS)
def test_from_config_never_mutates_its_config(section):
    cfg = OptimizerConfig(**section)
    before = cfg.model_dump()
    from_config(cfg, Tiny(), training_data_size=100)
    from_config(cfg, Tiny().parameters(), training_data_size=100)
    assert cfg.model_dump() == before


def test_no_schedule_returns_the_optimizer_alone():
    opt = from_config(OptimizerConfig(class_name="adam", learning_rate=0.001), Tiny().parameters())
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["name"] == "default"


def test_schedule_returns_two_lists_lightning_accepts():
    result = from_config(OptimizerConfig(**SECTIONS[0]), Tiny().parameters())
    optimizers, schedulers = result
    assert isinstance(optimizers[0], torch.optim.AdamW)
    assert set(schedulers[0]) == {"scheduler", "interval", "frequency", "name"}
    assert schedulers[0]["interval"] == "step"


def test_plateau_carries_monitor():
    [_], [sched] = from_config(OptimizerConfig(**SECTIONS[1]), Tiny().parameters())
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (sched["interval"], sched["monitor"]) == ("epoch", "val_loss")


def test_generator_is_read_once_and_model_size_found():
    model = Tiny()
    cfg = OptimizerConfig(class_name="noam", learning_rate=2.0, warmup_steps=10)
    [opt], [sched] = from_config(cfg, (p for p in model.parameters()))
    assert sum(len(g["params"]) for g in opt.param_groups) == 6
    # last dims: 16, 16, 16, 16, 16, 3 -> 16; lr at step 0 = 2 * 16^-0.5 * 10^-1.5
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * 16 ** -0.5 * 10 ** -1.5)
    assert resolve_for(cfg, model).model_size == 16


def test_explicit_model_size_wins():
    cfg = OptimizerConfig(class_name="noam", learning_rate=1.0, warmup_steps=4)
    [opt], _ = from_config(cfg, Tiny().parameters(), model_size=256)
    assert opt.param_groups[0]["lr"] == pytest.approx(256 ** -0.5 * 4 ** -1.5)


def test_frozen_parameters_are_left_out():
    model = Tiny()
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    opt = from_config(OptimizerConfig(class_name="sgd", learning_rate=0.1), model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == 2


def test_param_group_dicts_keep_their_lr_and_are_not_mutated():
    model = Tiny()
    groups = [{"params": model.encoder.parameters(), "lr": 1e-4, "name": "encoder"},
              {"params": list(model.head.parameters())}]
    snapshot = [dict(g) for g in groups]
    opt = from_config(OptimizerConfig(class_name="adam", learning_rate=1e-3), groups)
    assert [(g["name"], g["lr"], len(g["params"])) for g in opt.param_groups] == [
        ("encoder", 1e-4, 4), ("group1", 1e-3, 2)]
    assert [set(g) for g in groups] == [set(s) for s in snapshot]


def test_module_gets_named_encoder_group():
    cfg = OptimizerConfig(class_name="sgd", learning_rate=0.1, encoder_learning_rate=0.01)
    opt = from_config(cfg, Tiny())
    # SGD decays nothing here, so the groups are not split by weight decay
    assert [(g["name"], g["lr"], len(g["params"])) for g in opt.param_groups] == [("encoder", 0.01, 4), ("default", 0.1, 2)]
    decaying = from_config(cfg.model_copy(update={"weight_decay": 0.1}), Tiny())
    assert [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in decaying.param_groups] == [
        ("encoder", 0.01, 0.1, 2), ("encoder/no_decay", 0.01, 0.0, 2), ("default", 0.1, 0.1, 1),
        ("default/no_decay", 0.1, 0.0, 1)]


def test_encoder_lr_without_encoder_is_an_error():
    cfg = OptimizerConfig(class_name="sgd", learning_rate=0.1, encoder_learning_rate=0.01)
    with pytest.raises(ConfigError, match=r"^optimizer.encoder_learning_rate: 0.01 is set, but Linear has no 'encoder' submodule"):
        from_config(cfg, torch.nn.Linear(2, 2))


def test_encoder_lr_with_flat_parameters_warns(caplog):
    cfg = OptimizerConfig(class_name="sgd", learning_rate=0.1, encoder_learning_rate=0.01)
    with caplog.at_level(logging.WARNING, logger="kiwi_pipe_optim"):
        from_config(cfg, Tiny().parameters())
    assert "encoder_learning_rate is set but from_config got a flat parameter list" in caplog.text


def test_training_steps_falls_back_to_training_data_size():
    cfg = OptimizerConfig(class_name="adamw", learning_rate=1e-3, warmup_steps=0.2)
    [opt], [sched] = from_config(cfg, Tiny().parameters(), training_data_size=50)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched["scheduler"].step()
    assert lrs[10] == pytest.approx(1e-3) and opt.param_groups[0]["lr"] == 0.0


def test_unknown_step_count_is_a_clear_error():
    cfg = OptimizerConfig(class_name="adamw", learning_rate=1e-3)
    with pytest.raises(ConfigError, match=r"^optimizer.training_steps: required by the linear schedule and not known"):
        from_config(cfg, Tiny().parameters())


def test_empty_parameters():
    with pytest.raises(ValueError, match="parameters is empty"):
        from_config(OptimizerConfig(class_name="adam", learning_rate=1e-3), iter([]))


@pytest.mark.parametrize("implementation, flag", [("loop", ("foreach", False)), ("foreach", ("foreach", True)),
                                                  ("fused", ("fused", True)), ("auto", ("fused", True))])
def test_implementation_choice(implementation, flag):
    cfg = OptimizerConfig(class_name="adam", learning_rate=1e-3, implementation=implementation)
    opt = from_config(cfg, Tiny().parameters())
    assert opt.param_groups[0][flag[0]] is flag[1]


@pytest.mark.parametrize("name", ["averaged_sgd", "adadelta", "adamax", "rmsprop"])
def test_auto_uses_torch_default_where_there_is_no_fused_kernel(name):
    opt = from_config(OptimizerConfig(class_name=name, learning_rate=1e-3), Tiny().parameters())
    assert "fused" not in opt.defaults and opt.defaults.get("foreach") is None


def test_fused_matches_loop_numerically():
    torch.manual_seed(0)
    base = Tiny()
    results = {}
    for impl in ("loop", "auto"):
        model = Tiny()
        model.load_state_dict(base.state_dict())
        opt = from_config(OptimizerConfig(class_name="adamw", learning_rate=1e-2, implementation=impl,
                                          scheduler="none"), model.parameters())
        gen = torch.Generator().manual_seed(1)
        for _ in range(100):
            opt.zero_grad()
            x = torch.randn(8, 16, generator=gen)
            model.head(model.encoder(x)).pow(2).mean().backward()
            opt.step()
        results[impl] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (results["loop"] - results["auto"]).abs().max() <= 1e-5


@pytest.mark.parametrize("class_name, implementation, used", [
    ("adam", "auto", "fused"), ("adamax", "auto", "loop"), ("adam", "foreach", "foreach"), ("adam", "loop", "loop"),
])
def test_the_kernel_used_is_reported(class_name, implementation, used):
    cfg = OptimizerConfig(class_name=class_name, learning_rate=1e-3, implementation=implementation)
    assert implementation_of(from_config(cfg, Tiny().parameters())) == used

