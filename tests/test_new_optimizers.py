"""Optimizers beyond OpenKiwi's ten: any class by import path, Muon with its AdamW half, layer-wise LR decay."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kiwi_pipe_optim import ConfigError, OptimizerConfig, from_config, optimizer_class
from kiwi_pipe_optim.muon import MuonWithAdamW
from kiwi_pipe_optim.param_groups import assign, block_layers, named_groups, table
from tests.custom_optimizers import SignSGD

ROOT = Path(__file__).resolve().parents[1]
SIGN = "tests.custom_optimizers:SignSGD"


def parse(**section):
    return OptimizerConfig.parse(section)


def errors(**section):
    with pytest.raises(ConfigError) as e:
        parse(**section)
    return str(e.value).splitlines()


# -- any optimizer by import path ------------------------------------------------------------


def test_an_import_path_builds_the_class_with_its_options():
    config = parse(class_name=SIGN, learning_rate=0.01, weight_decay=0.1, options={"momentum": 0.9})
    model = nn.Linear(4, 2)
    optimizer = from_config(config, model)
    assert type(optimizer) is SignSGD and optimizer_class(SIGN) is SignSGD
    assert [(g["name"], g["lr"], g["momentum"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("default", 0.01, 0.9, 0.1), ("default/no_decay", 0.01, 0.9, 0.0)]
    before = model.weight.detach().clone()
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.weight)


def test_a_wrong_option_of_an_import_path_lists_its_signatures_options():
    assert errors(class_name=SIGN, learning_rate=0.01, options={"betas": [0.9, 0.99], "momentun": 0.9}) == [
        f"optimizer.options.betas: not an option of {SIGN}; {SIGN} accepts: momentum, nesterov",
        f"optimizer.options.momentun: not an option of {SIGN} (did you mean 'momentum'?); {SIGN} accepts: "
        f"momentum, nesterov",
    ]
    assert errors(class_name=SIGN, learning_rate=0.01, options={"nesterov": "yes"}) == [
        "optimizer.options.nesterov: 'yes' is not a boolean; use true or false"]


@pytest.mark.parametrize("path, message", [
    ("tests.no_such_module:Opt", "cannot import 'tests.no_such_module' (ModuleNotFoundError: No module named "
                                 "'tests.no_such_module'); give 'package.module:ClassName' importable from the "
                                 "repository root"),
    ("tests.custom_optimizers:Nope", "'tests.custom_optimizers' has no attribute 'Nope'; name a "
                                     "torch.optim.Optimizer subclass"),
    ("torch.nn:Linear", "'torch.nn' is not a torch.optim.Optimizer subclass: 'Linear'; name a torch.optim.Optimizer "
                        "subclass"),
])
def test_an_import_path_that_names_no_optimizer_is_one_line(path, message):
    assert errors(class_name=path, learning_rate=0.01) == [f"optimizer.class_name: {message}"]


def test_validate_imports_just_that_module(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"optimizer:\n  class_name: '{SIGN}'\n  learning_rate: 0.01\n  options:\n    momentum: 2x\n")
    result = subprocess.run([sys.executable, "-m", "kiwi_pipe_optim.cli", "validate", "--optimizer-only",
                             str(params)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"{params}:5: optimizer.options.momentum: '2x' is not a number; use a number"]
    assert "lightning" not in result.stderr.lower()


# -- Muon with its AdamW half ----------------------------------------------------------------


class SmallTransformer(nn.Module):
    def __init__(self, vocab=16, width=16, depth=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, x):
        return self.head(self.norm(self.encoder(self.embed(x))))


def muon_config(**extra):
    return parse(class_name="muon", learning_rate=0.02, warmup_steps=2, training_steps=20, scheduler="cosine",
                 **extra)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = SmallTransformer()
    where = {a.parameter: (a.group, a.lr, a.muon) for a in assign(model, muon_config())}
    muon = sorted(n for n, (_, _, m) in where.items() if m)
    assert muon == sorted(f"encoder.layers.{i}.{w}" for i in range(2) for w in (
        "self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"))
    assert where["embed.weight"] == ("default/adamw", pytest.approx(0.002), False)
    assert where["head.weight"] == ("default/adamw", pytest.approx(0.002), False)
    assert where["norm.weight"][2] is False and where["encoder.layers.0.linear1.bias"][2] is False
    assert where["encoder.layers.0.linear1.weight"] == ("default", 0.02, True)
    [optimizer], [scheduler] = from_config(muon_config(), model)
    assert type(optimizer) is MuonWithAdamW
    names = [g["name"] for g in optimizer.param_groups]
    assert names == ["default", "default/adamw", "default/adamw/no_decay"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.1, 0.0]
    assert {id(p) for g in optimizer.muon.param_groups for p in g["params"]} == {
        id(p) for n, p in model.named_parameters() if n in muon}


def test_without_an_embedding_the_input_layer_and_position_table_go_to_adamw():
    class Projected(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(3, 8)
            self.position = nn.Parameter(torch.zeros(5, 8))
            self.hidden = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
            self.out = nn.Linear(8, 2)

    where = {a.parameter: a.muon for a in assign(Projected(), muon_config())}
    assert sorted(n for n, m in where.items() if m) == ["hidden.0.weight", "hidden.2.weight"]


def test_a_rule_overrides_where_a_group_goes():
    config = muon_config(param_groups=[{"name": "ffn", "match": "*.linear1", "muon": False}])
    where = {a.parameter: (a.group, a.muon) for a in assign(SmallTransformer(), config)}
    assert where["encoder.layers.1.linear1.weight"] == ("ffn/adamw", False)
    assert where["encoder.layers.1.linear2.weight"] == ("default", True)
    bad = muon_config(param_groups=[{"name": "norms", "match": "norm", "muon": True}])
    with pytest.raises(ConfigError, match=r"^optimizer.param_groups.0.muon: true, but 'norm.weight' has shape \[16\]; "
                                          r"Muon updates 2-D matrices only$"):
        assign(SmallTransformer(), bad)
    assert errors(class_name="adam", learning_rate=1e-3, param_groups=[{"name": "a", "match": "x", "muon": True}]) == [
        "optimizer.param_groups.0.muon: only class_name muon splits groups between Muon and AdamW; remove the key "
        "for adam"]


def test_a_flat_parameter_list_is_split_by_shape():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = from_config(parse(class_name="muon", learning_rate=0.02, options={"adamw_lr_ratio": 0.5}),
                            model.parameters())
    assert [(g["name"], g["lr"], len(g["params"])) for g in optimizer.param_groups] == [
        ("default", 0.02, 2), ("default/adamw", 0.01, 2)]


def _train(model, optimizer, scheduler, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 16, (4, 6), generator=g)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_muon_resumes_both_halves_exactly():
    torch.manual_seed(0)
    straight = SmallTransformer()
    resumed = SmallTransformer()
    resumed.load_state_dict(straight.state_dict())
    [opt], [sched] = from_config(muon_config(), straight)
    _train(straight, opt, sched["scheduler"], 10, seed=1)

    [opt1], [sched1] = from_config(muon_config(), resumed)
    _train(resumed, opt1, sched1["scheduler"], 5, seed=1)
    saved = {"opt": opt1.state_dict(), "sched": sched1["scheduler"].state_dict(), "model": resumed.state_dict()}
    fresh = SmallTransformer()
    fresh.load_state_dict(saved["model"])
    [opt2], [sched2] = from_config(muon_config(), fresh)
    opt2.load_state_dict(saved["opt"])
    sched2["scheduler"].load_state_dict(saved["sched"])
    assert opt2.muon.state is opt2.state and opt2.adamw.param_groups[0] is opt2.param_groups[1]
    assert all("momentum_buffer" in opt2.state[p] for g in opt2.muon.param_groups for p in g["params"])
    assert all("exp_avg" in opt2.state[p] for g in opt2.adamw.param_groups for p in g["params"])
    g = torch.Generator().manual_seed(1)
    for _ in range(5):  # the same batches the straight run saw in its second half
        torch.randint(0, 16, (4, 6), generator=g)
    for _ in range(5):
        x = torch.randint(0, 16, (4, 6), generator=g)
        loss = nn.functional.cross_entropy(fresh(x).flatten(0, 1), x.flatten())
        opt2.zero_grad()
        loss.backward()
        opt2.step()
        sched2["scheduler"].step()
    for (name, a), b in zip(straight.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


def test_muon_options_are_checked():
    assert errors(class_name="muon", learning_rate=0.02, options={"adjust_lr_fn": "rms", "ns_steps": 2.5}) == [
        "optimizer.options.adjust_lr_fn: 'rms' is not one of: original, match_rms_adamw, null",
        "optimizer.options.ns_steps: 2.5 is not a whole number >= 1",
    ]


# -- layer-wise LR decay ---------------------------------------------------------------------


class FourBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(4))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)


def test_layer_decay_on_four_blocks():
    config = parse(class_name="adamw", learning_rate=1e-3, layer_decay=0.5, weight_decay=0.0)
    layers, depth = block_layers(FourBlocks())
    assert depth == 4
    assert layers["embed.weight"] == 0 and layers["blocks.2.1.weight"] == 3 and layers["head.bias"] == 5
    lrs = {a.parameter: a.lr for a in assign(FourBlocks(), config)}
    assert lrs["embed.weight"] == pytest.approx(1e-3 * 0.5 ** 5)
    for i in range(4):
        assert lrs[f"blocks.{i}.1.weight"] == pytest.approx(1e-3 * 0.5 ** (4 - i))
    assert lrs["norm.weight"] == lrs["head.weight"] == 1e-3
    groups = named_groups(FourBlocks(), config)
    assert [g["name"] for g in groups] == [f"default/layer_{i}" for i in range(6)]
    assert "blocks.3.1.weight  8x8    default/layer_4" in table(assign(FourBlocks(), config))


def test_layer_decay_needs_blocks():
    config = parse(class_name="adamw", learning_rate=1e-3, layer_decay=0.75)
    with pytest.raises(ConfigError, match=r"^optimizer.layer_decay: Linear has no list of blocks"):
        assign(nn.Linear(3, 3), config)
    assert errors(class_name="adamw", learning_rate=1e-3, layer_decay=1.5) == [
        "optimizer.layer_decay: 1.5 is outside (0, 1]; use a factor in (0, 1] such as 0.75"]


def test_lbfgs_takes_one_group():
    assert errors(class_name="lbfgs", learning_rate=0.5, param_groups=[{"name": "w", "match": "weight"}]) == [
        "optimizer.param_groups: lbfgs takes one param group; remove param_groups, or choose another optimizer"]
    model = nn.Linear(2, 2)
    groups = [{"params": [model.weight], "name": "w"}, {"params": [model.bias], "name": "b"}]
    with pytest.raises(ConfigError, match=r"^optimizer.class_name: lbfgs takes one param group, and these parameters "
                                          r"form 2 \(w, b\)"):
        from_config(parse(class_name="lbfgs", learning_rate=0.5), groups)


def test_the_issue_s_muon_wsd_section_validates():
    config = parse(class_name="muon", learning_rate=0.02, warmup_steps=100, training_steps=1000, scheduler="wsd")
    [optimizer], [scheduler] = from_config(config, SmallTransformer())
    assert scheduler["name"] == "wsd" and type(optimizer) is MuonWithAdamW


def test_kiwi_optim_validate_accepts_the_muon_wsd_section(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("optimizer:\n  class_name: muon\n  learning_rate: 0.02\n  warmup_steps: 100\n"
                      "  training_steps: 1000\n  scheduler: wsd\n")
    result = subprocess.run([sys.executable, "-m", "kiwi_pipe_optim.cli", "validate", "--optimizer-only",
                             str(params)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "class_name: muon" in result.stdout and "scheduler: wsd" in result.stdout
