import inspect

import pytest
import torch

from kiwi_pipe_optim import OPTIMIZERS_MAPPING, list_optimizers, list_schedules, optimizer_class, optimizer_name
from kiwi_pipe_optim.specs import OPTIMIZER_SPECS

from kiwi_pipe_optim.muon import MuonWithAdamW

SEED_NAMES = ["sgd", "averaged_sgd", "adam", "noam", "sparse_adam", "adamw", "adagrad", "adadelta", "adamax", "rmsprop"]
NEWER = ["nadam", "radam", "adafactor", "rprop", "lbfgs", "muon"]
TORCH_CLASSES = sorted(n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
                       and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != "Optimizer")


def test_mapping_has_the_seed_names_and_torchs_newer_ones():
    assert sorted(OPTIMIZERS_MAPPING) == sorted(SEED_NAMES + NEWER) == list_optimizers()
    assert OPTIMIZERS_MAPPING["noam"] is torch.optim.Adam
    assert OPTIMIZERS_MAPPING["averaged_sgd"] is torch.optim.ASGD
    assert OPTIMIZERS_MAPPING["muon"] is MuonWithAdamW


def test_every_optimizer_torch_ships_is_registered():
    """A torch upgrade that adds a class fails here until it has a spec."""
    registered = {spec.torch_class for spec in OPTIMIZER_SPECS.values()}
    assert [n for n in TORCH_CLASSES if n not in registered] == []


@pytest.mark.parametrize("name", SEED_NAMES + NEWER)
def test_class_and_name_round_trip(name):
    cls = optimizer_class(name)
    assert issubclass(cls, torch.optim.Optimizer)
    assert optimizer_name(cls) == ("adam" if name == "noam" else name)


@pytest.mark.parametrize("name", SEED_NAMES + NEWER)
def test_spec_options_match_the_real_signature(name):
    spec = OPTIMIZER_SPECS[name]
    signature = inspect.signature(OPTIMIZERS_MAPPING[name].__init__).parameters
    for option, option_spec in spec.options.items():
        assert option in signature, f"{name}: {option} is not a parameter of {spec.torch_class}"
        assert signature[option].default == option_spec.default, f"{name}.{option}"
    assert ("weight_decay" in signature) == spec.weight_decay
    assert ("fused" in signature) == spec.fused
    assert ("foreach" in signature) == spec.foreach
    for preset in spec.presets:
        assert preset in signature


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"^unknown optimizer 'sgdd' \(did you mean 'sgd'\?\); choose one of: adadelta, "):
        optimizer_class("sgdd")


def test_unknown_class():
    with pytest.raises(ValueError, match=r"^'Linear' is not a registered optimizer class; registered: ASGD, Adadelta"):
        optimizer_name(torch.nn.Linear)


def test_list_schedules():
    assert list_schedules() == ["constant", "cosine", "cosine_restarts", "exponential", "inverse_sqrt", "linear", "multistep", "noam", "none", "one_cycle", "phases", "plateau", "polynomial", "step", "wsd"]
