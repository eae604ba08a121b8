import pytest
import torch
from torch import nn

from kiwi_pipe_optim import ConfigError, OptimizerConfig, from_config
from kiwi_pipe_optim.param_groups import assign, is_norm, named_groups, table


class ScaleNorm(nn.Module):  # a user's norm layer, recognised by its class name
    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleDict({"proj": nn.Linear(4, 8), "norm": nn.LayerNorm(8), "bn": nn.BatchNorm1d(8)})
        self.head = nn.Sequential(nn.Linear(8, 8), ScaleNorm(8), nn.Linear(8, 2, bias=False))


RULES = [
    {"name": "encoder", "match": "encoder", "lr_scale": 0.1},
    {"name": "out", "match": "head.2.*", "lr": 0.5, "weight_decay": 0.2},
]


def config(**extra):
    return OptimizerConfig(class_name="adamw", learning_rate=1e-2, weight_decay=0.05, param_groups=RULES, **extra)


def test_assignment_table():
    rows = [(a.parameter, a.group, a.lr, a.weight_decay) for a in assign(Model(), config())]
    assert rows == [
        ("encoder.proj.weight", "encoder", pytest.approx(1e-3), 0.05),
        ("encoder.proj.bias", "encoder", pytest.approx(1e-3), 0.0),
        ("encoder.norm.weight", "encoder", pytest.approx(1e-3), 0.0),
        ("encoder.norm.bias", "encoder", pytest.approx(1e-3), 0.0),
        ("encoder.bn.weight", "encoder", pytest.approx(1e-3), 0.0),
        ("encoder.bn.bias", "encoder", pytest.approx(1e-3), 0.0),
        ("head.0.weight", "default", 1e-2, 0.05),
        ("head.0.bias", "default", 1e-2, 0.0),
        ("head.1.scale", "default", 1e-2, 0.0),
        ("head.2.weight", "out", 0.5, 0.2),
    ]


def test_torch_groups_split_by_weight_decay_and_keep_names():
    groups = named_groups(Model(), config())
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in groups] == [
        ("encoder", 0.05, 1), ("encoder/no_decay", 0.0, 5), ("out", 0.2, 1), ("default", 0.05, 1),
        ("default/no_decay", 0.0, 2)]
    opt = from_config(config(scheduler="none"), Model())
    assert sum(len(g["params"]) for g in opt.param_groups) == 10


def test_first_match_wins():
    rules = [{"name": "biases", "match": "*.bias", "lr": 1.0}, {"name": "encoder", "match": "encoder", "lr": 2.0}]
    cfg = OptimizerConfig(class_name="sgd", learning_rate=0.1, param_groups=rules)
    groups = {a.parameter: a.group for a in assign(Model(), cfg)}
    assert groups["encoder.proj.bias"] == "biases" and groups["encoder.proj.weight"] == "encoder"


def test_rule_matching_nothing_is_an_error_naming_it():
    rules = RULES + [{"name": "decoder", "match": "decoder.*", "lr": 1.0}]
    cfg = OptimizerConfig(class_name="sgd", learning_rate=0.1, param_groups=rules)
    with pytest.raises(ConfigError) as info:
        assign(Model(), cfg)
    assert str(info.value) == (
        "optimizer.param_groups.2.match: rule 'decoder' (decoder.*) matches no trainable parameter of Model "
        "(an earlier rule may take them); names look like: encoder.proj.weight, encoder.proj.bias, "
        "encoder.norm.weight, encoder.norm.bias")


def test_rule_validation():
    with pytest.raises(ConfigError) as info:
        OptimizerConfig.parse({"class_name": "sgd", "learning_rate": 0.1, "encoder_learning_rate": 0.01,
                               "param_groups": [{"name": "a", "match": "x", "lr": 1, "lr_scale": 2},
                                                {"name": "default", "match": "y"}]})
    assert str(info.value).splitlines() == [
        "optimizer.param_groups.0.lr_scale: give lr or lr_scale, not both",
    ]
    with pytest.raises(ConfigError) as info:
        OptimizerConfig.parse({"class_name": "sgd", "learning_rate": 0.1, "encoder_learning_rate": 0.01,
                               "param_groups": [{"name": "a", "match": "x"}, {"name": "a", "match": "y"}]})
    assert str(info.value).splitlines() == [
        "optimizer.param_groups.1.name: 'a' is used twice (the parameters no rule matches form 'default'); "
        "give every rule its own name",
        "optimizer.encoder_learning_rate: set together with param_groups; use a rule "
        "{name: encoder, match: encoder, lr: ...} instead",
    ]


def test_norm_detection():
    assert is_norm(nn.LayerNorm(2)) and is_norm(nn.GroupNorm(1, 2)) and is_norm(nn.BatchNorm2d(2))
    assert is_norm(nn.InstanceNorm1d(2)) and is_norm(ScaleNorm(2)) and not is_norm(nn.Linear(2, 2))


def test_table_text():
    text = table(assign(Model(), config()))
    assert text.splitlines()[0].split() == ["parameter", "shape", "group", "lr", "weight_decay"]
    assert "head.2.weight        2x8    out      0.5    0.2" in text


def test_group_names_are_unique_as_lightnings_lr_monitor_requires(tmp_path):
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

    from kiwi_pipe_optim.integrations.lightning import attach_config

    model = BoringModel()
    attach_config(model, OptimizerConfig(class_name="adamw", learning_rate=1e-3, weight_decay=0.1, scheduler="none"))
    trainer = L.Trainer(max_steps=2, callbacks=[LearningRateMonitor()], logger=L.loggers.CSVLogger(str(tmp_path)),
                        enable_progress_bar=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, BoringDataModule())
    names = [g["name"] for g in trainer.optimizers[0].param_groups]
    assert names == ["default", "default/no_decay"] and len(set(names)) == len(names)
