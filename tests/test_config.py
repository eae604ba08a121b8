import logging
import math

import pytest

import torch

from kiwi_pipe_optim import ConfigError, OptimizerConfig, from_config, load_config
from kiwi_pipe_optim.lint import lint

ALL_OPTIMIZERS = "adadelta, adafactor, adagrad, adam, adamax, adamw, averaged_sgd, lbfgs, muon, nadam, noam, radam, rmsprop, rprop, sgd, sparse_adam, or 'package.module:ClassName'"
ALL_KEYS = (
    "class_name, learning_rate, encoder_learning_rate, warmup_steps, training_steps, learning_rate_decay, "
    "learning_rate_decay_start, load, scheduler, weight_decay, weight_decay_exclude, options, implementation, monitor, mode, "
    "power, final_lr_ratio, timescale, warmup_start_lr, min_lr, decay_steps, decay_shape, cycle_steps, cycle_mult, "
    "step_size, milestones, phases, param_groups, layer_decay"
)


def parse(**fields):
    return OptimizerConfig.parse(fields)


def problems(**fields):
    with pytest.raises(ConfigError) as info:
        OptimizerConfig.parse(fields)
    return str(info.value).splitlines()


# -- OpenKiwi's own sections ---------------------------------------------------------------------

def test_openkiwi_adamw_section():
    cfg = parse(class_name="adamw", learning_rate="1e-5", warmup_steps=0.1, training_steps=12000)
    assert cfg.learning_rate == 1e-5
    assert cfg.warmup_steps == 0.1 and isinstance(cfg.warmup_steps, float)
    resolved = cfg.resolve()
    assert (resolved.name, resolved.interval, resolved.warmup_steps, resolved.training_steps) == (
        "linear", "step", 1200, 12000)


def test_openkiwi_plateau_section():
    cfg = parse(class_name="adam", learning_rate=0.001, learning_rate_decay=0.6, learning_rate_decay_start=2)
    resolved = cfg.resolve()
    assert (resolved.name, resolved.interval, resolved.factor, resolved.patience) == ("plateau", "epoch", 0.6, 2)


def test_openkiwi_plain_adam_section():
    cfg = parse(class_name="adam", learning_rate=0.001)
    assert cfg.schedule_name == "none"
    assert cfg.learning_rate_decay == 1.0 and cfg.learning_rate_decay_start == 2


# -- warmup_steps casting ------------------------------------------------------------------------

@pytest.mark.parametrize("given, expected, kind", [
    (0, 0.0, float), (0.25, 0.25, float), ("0.5", 0.5, float), (1.0, 1.0, float),
    (2, 2, int), (4000, 4000, int), (4000.0, 4000, int), ("4e3", 4000, int), ("1_000", 1000, int),
])
def test_cast_steps(given, expected, kind):
    cfg = parse(class_name="adam", learning_rate=1e-3, scheduler="constant", warmup_steps=given)
    assert cfg.warmup_steps == expected and type(cfg.warmup_steps) is kind


@pytest.mark.parametrize("written", [1, "1"])
def test_warmup_one_is_whole_run_and_warns(written):
    cfg = parse(class_name="adamw", learning_rate=1e-3, warmup_steps=written, training_steps=100)
    assert cfg.warmup_steps == 1.0 and cfg.resolve().warmup_steps == 100
    assert [f.message[:36] for f in lint(cfg)] == ["1 means a fraction of 1.0: warm-up o"]


def test_warmup_one_point_zero_does_not_warn():
    assert lint(parse(class_name="adamw", learning_rate=1e-3, warmup_steps=1.0, training_steps=100)) == []


def test_bad_warmup_longer_than_training():
    assert problems(class_name="adamw", learning_rate=1e-3, warmup_steps=5000, training_steps=1000) == [
        "optimizer.warmup_steps: 5000 steps is longer than training_steps (1000); "
        "use at most 1000 steps, or a fraction in [0, 1]"
    ]


def test_bad_warmup_not_steps_nor_fraction():
    assert problems(class_name="adamw", learning_rate=1e-3, warmup_steps=2.5) == [
        "optimizer.warmup_steps: 2.5 is neither a whole number of steps nor a fraction in [0, 1]; "
        "use a whole number of steps, or a fraction in [0, 1] of training_steps"
    ]


def test_bad_warmup_negative():
    assert problems(class_name="adamw", learning_rate=1e-3, warmup_steps=-3) == [
        "optimizer.warmup_steps: -3 is not a step count; "
        "use a whole number of steps, or a fraction in [0, 1] of training_steps"
    ]


def test_warmup_longer_than_run_found_at_resolve():
    cfg = parse(class_name="adamw", learning_rate=1e-3, warmup_steps=500)
    with pytest.raises(ConfigError, match=r"^optimizer.warmup_steps: 500 steps is longer than training_steps \(100\)"):
        cfg.resolve(training_steps=100)


# -- numbers -------------------------------------------------------------------------------------

def test_yaml11_string_floats_accepted():
    cfg = parse(class_name="sgd", learning_rate="1e-06", encoder_learning_rate="3E-5", weight_decay="1e-2",
                options={"momentum": "0.9"})
    assert (cfg.learning_rate, cfg.encoder_learning_rate, cfg.weight_decay) == (1e-6, 3e-5, 0.01)
    assert cfg.options == {"momentum": 0.9}


def test_nan_learning_rate():
    assert problems(class_name="adam", learning_rate=float("nan")) == [
        "optimizer.learning_rate: nan is not a finite number; use a positive float such as 0.001"
    ]


@pytest.mark.parametrize("value, message", [
    (math.inf, "optimizer.learning_rate: inf is not a finite number; use a positive float such as 0.001"),
    ("inf", "optimizer.learning_rate: inf is not a finite number; use a positive float such as 0.001"),
    (-0.1, "optimizer.learning_rate: -0.1 is not positive; use a positive float such as 0.001"),
    (0, "optimizer.learning_rate: 0 is not positive; use a positive float such as 0.001"),
    ("fast", "optimizer.learning_rate: 'fast' is not a number; use a positive float such as 0.001"),
    (True, "optimizer.learning_rate: True is not a number; use a positive float such as 0.001"),
    ([1], "optimizer.learning_rate: [1] is not a number; use a positive float such as 0.001"),
])
def test_bad_learning_rate(value, message):
    assert problems(class_name="adam", learning_rate=value) == [message]


def test_negative_steps_rejected():
    assert problems(class_name="adamw", learning_rate=1e-3, training_steps=-5) == [
        "optimizer.training_steps: -5 is below 1; use a whole number of optimizer steps >= 1"
    ]


# -- names and keys ------------------------------------------------------------------------------

def test_unknown_optimizer():
    assert problems(class_name="adamx", learning_rate=1e-3) == [
        f"optimizer.class_name: unknown optimizer 'adamx' (did you mean 'adamax'?); choose one of: {ALL_OPTIMIZERS}"
    ]


def test_extra_key():
    assert problems(class_name="adam", learning_rate=1e-3, learnig_rate=3) == [
        f"optimizer.learnig_rate: unknown key (did you mean 'learning_rate'?); allowed keys: {ALL_KEYS}"
    ]


def test_missing_required_fields():
    assert problems() == [
        f"optimizer.class_name: required; choose one of: {ALL_OPTIMIZERS}",
        "optimizer.learning_rate: required; use a positive float such as 0.001",
    ]


def test_every_field_problem_reported_at_once():
    lines = problems(class_name="adamx", learning_rate=float("nan"), warmup_steps=-1, mode="up", typo=1)
    assert [line.split(":")[0] for line in lines] == [
        "optimizer.class_name", "optimizer.learning_rate", "optimizer.warmup_steps", "optimizer.mode", "optimizer.typo"]


def test_unknown_schedule():
    assert problems(class_name="adam", learning_rate=1e-3, scheduler="cosin") == [
        "optimizer.scheduler: unknown schedule 'cosin' (did you mean 'cosine'?); choose one of: "
        "constant, cosine, cosine_restarts, exponential, inverse_sqrt, linear, multistep, noam, none, one_cycle, phases, plateau, polynomial, step, wsd"
    ]


# -- optimizer options ---------------------------------------------------------------------------

def test_options_checked_against_the_chosen_optimizer():
    assert problems(class_name="adam", learning_rate=1e-3, options={"momentum": 0.9, "betas": [0.9, 1.5]}) == [
        "optimizer.options.momentum: not an option of adam; adam accepts: amsgrad, betas, decoupled_weight_decay, "
        "eps, maximize",
        "optimizer.options.betas: 1.5 is outside [0, 1); use a number such as 0.9",
    ]


def test_options_lr_and_fused_are_fields_elsewhere():
    assert problems(class_name="sgd", learning_rate=1e-3, options={"lr": 0.1, "fused": True}) == [
        "optimizer.options.lr: set it as optimizer.learning_rate, not as an option",
        "optimizer.options.fused: chosen by optimizer.implementation (auto, fused, foreach, loop)",
    ]


def test_noam_presets_and_user_options():
    cfg = parse(class_name="noam", learning_rate=2, warmup_steps=4000, options={"eps": "1e-8"})
    assert cfg.optimizer_kwargs() == {"lr": 2.0, "betas": (0.9, 0.98), "eps": 1e-8}


def test_sparse_adam_has_no_weight_decay():
    assert problems(class_name="sparse_adam", learning_rate=1e-3, weight_decay=0.01) == [
        "optimizer.weight_decay: sparse_adam has no weight decay; remove the key"
    ]


# -- schedule choice -----------------------------------------------------------------------------

@pytest.mark.parametrize("fields, schedule", [
    ({"class_name": "noam", "warmup_steps": 10}, "noam"),
    ({"class_name": "adamw"}, "linear"),
    ({"class_name": "sgd", "learning_rate_decay": 0.5}, "plateau"),
    ({"class_name": "sgd", "learning_rate_decay": 1.0}, "none"),
    ({"class_name": "sgd", "learning_rate_decay": 0.0}, "none"),
    ({"class_name": "adamw", "scheduler": "cosine"}, "cosine"),
    ({"class_name": "adamw", "scheduler": "none"}, "none"),
])
def test_schedule_choice(fields, schedule):
    assert parse(learning_rate=1e-3, **fields).schedule_name == schedule


def test_explicit_plateau_needs_a_reducing_factor():
    assert problems(class_name="adam", learning_rate=1e-3, scheduler="plateau") == [
        "optimizer.learning_rate_decay: 1.0 does not reduce the LR; the plateau scheduler needs a factor "
        "in (0, 1) such as 0.5"
    ]


def test_noam_needs_warmup():
    assert problems(class_name="noam", learning_rate=1.0) == [
        "optimizer.warmup_steps: required by the noam schedule; use a step count such as 4000"
    ]


def test_warmup_on_a_schedule_without_one_warns_once(caplog):
    """Validation returns the finding instead of logging it; from_config logs it once per config."""
    with caplog.at_level(logging.WARNING, logger="kiwi_pipe_optim"):
        cfg = parse(class_name="adam", learning_rate=1e-3, learning_rate_decay=0.5, warmup_steps=10)
        assert caplog.messages == []
        assert [str(f) for f in lint(cfg)] == [
            "warning: optimizer.warmup_steps: 10 is not used by the plateau schedule; remove it or choose a "
            "schedule with warm-up: constant, cosine, cosine_restarts, exponential, inverse_sqrt, linear, multistep, noam, one_cycle, polynomial, step, wsd"
        ]
        model = torch.nn.Linear(2, 2)
        from_config(cfg, model)
        from_config(cfg, model)
    assert caplog.messages == [
        "optimizer.warmup_steps: 10 is not used by the plateau schedule; remove it or choose a schedule with "
        "warm-up: constant, cosine, cosine_restarts, exponential, inverse_sqrt, linear, multistep, noam, one_cycle, polynomial, step, wsd"
    ]


def test_warmup_is_ignored_by_a_schedule_without_one():
    resolved = parse(class_name="sgd", learning_rate=0.1, warmup_steps=0.1).resolve()
    assert (resolved.name, resolved.warmup_steps, resolved.training_steps) == ("none", 0, None)


def test_decaying_schedule_needs_a_step_count():
    cfg = parse(class_name="adamw", learning_rate=1e-3)
    with pytest.raises(ConfigError) as info:
        cfg.resolve()
    assert str(info.value) == (
        "optimizer.training_steps: required by the linear schedule and not known; set optimizer.training_steps, "
        "or pass the run's step count (training_data_size)"
    )
    assert cfg.resolve(training_steps=50).training_steps == 50


def test_config_training_steps_wins_over_the_run():
    cfg = parse(class_name="adamw", learning_rate=1e-3, training_steps=80)
    assert cfg.resolve(training_steps=50).training_steps == 80


def test_plateau_monitor_cannot_be_empty():
    assert problems(class_name="adam", learning_rate=1e-3, learning_rate_decay=0.5, monitor="") == [
        "optimizer.monitor: '' is not a metric name; use the name the model logs, such as val_loss"
    ]


def test_config_is_frozen():
    cfg = parse(class_name="adam", learning_rate=1e-3)
    with pytest.raises(Exception):
        cfg.learning_rate = 3.0


def test_load_must_exist(tmp_path):
    missing = tmp_path / "nope.pt"
    assert problems(class_name="adam", learning_rate=1e-3, load=str(missing)) == [
        f"optimizer.load: '{missing}' does not exist; give a file written by kiwi_pipe_optim.save_state"
    ]


# -- params files --------------------------------------------------------------------------------

def test_load_config_names_file_and_line(write_params):
    path = write_params("data: {}\noptimizer:\n  class_name: adam\n  learning_rate: 1e-3\n  betas: [0.9, 0.9]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:5: optimizer.betas: unknown key; allowed keys: {ALL_KEYS}"


def test_load_config_yaml_syntax_error(write_params):
    path = write_params("optimizer:\n  class_name: adam\n learning_rate: [1e-3\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: invalid YAML: "):
        load_config(path)


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty; expected sections such as 'optimizer:'"),
    ("- a\n- b\n", "expected a mapping of sections at the top level, got list"),
    ("data: {}\n", "optimizer: missing section; add 'optimizer:' with class_name and learning_rate"),
    ("optimizer: adam\n", "optimizer: expected a mapping of optimizer fields, got str; "
                          "write at least 'class_name:' and 'learning_rate:' under it"),
])
def test_load_config_bad_files(write_params, text, message):
    path = write_params(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).split(": ", 1)[1] == message or str(info.value).endswith(message)


def test_load_config_binary_junk(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ConfigError, match=r"not a text file \(byte 0x89 at offset 0\)"):
        load_config(path)


def test_an_error_inside_a_list_names_its_own_line(write_params):
    path = write_params(
        "optimizer:\n  class_name: adamw\n  learning_rate: 0.001\n  param_groups:\n"
        "    - {name: a, match: x}\n    - name: b\n      match: y\n    - name: c\n      match: z\n      lr: -1\n"
        "    - name: d\n      match: [w, '']\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).splitlines() == [
        f"{path}:10: optimizer.param_groups.2.lr: -1 is not positive; use a positive float such as 0.001",
        f"{path}:12: optimizer.param_groups.3.match: ['w', ''] is not a glob; use a pattern such as 'encoder' or "
        "'*.bias', or a list",
    ]


def test_a_params_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("optimizer: {class_name: adam, learning_rate: 0.1}\n# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}: the file is 1,048,6\d\d bytes; a params file is at most "
                                          r"1,048,576$"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: is a directory; pass a YAML file$"):
        load_config(tmp_path)
