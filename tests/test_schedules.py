"""Expected LRs at chosen steps, computed from each schedule's formula, against a real optimizer."""

import math
import pickle

import pytest
import torch

from kiwi_pipe_optim import OptimizerConfig, from_config, get_noam_decay_schedule
from kiwi_pipe_optim.schedules import SCHEDULE_SPECS, evaluate, multiplier

LR = 0.01
W, T = 10, 110


def noam_formula(step, warmup, d):
    s = step + 1
    return d ** -0.5 * min(s ** -0.5, s * warmup ** -1.5)


def warm(step):
    return step / W


# schedule name, extra config, {step: expected multiplier}
TABLES = [
    ("constant", {}, {0: 0.0, 3: 0.3, 10: 1.0, 50: 1.0, 200: 1.0}),
    ("linear", {}, {0: 0.0, 5: 0.5, 10: 1.0, 35: 0.75, 60: 0.5, 109: 0.01, 110: 0.0, 150: 0.0}),
    ("linear", {"final_lr_ratio": 0.1}, {10: 1.0, 60: 0.55, 110: 0.1, 140: 0.1}),
    ("cosine", {}, {0: 0.0, 5: 0.5, 10: 1.0, 35: 0.5 * (1 + math.cos(math.pi * 0.25)), 60: 0.5, 110: 0.0, 130: 0.0}),
    ("cosine", {"final_lr_ratio": 0.2}, {60: 0.2 + 0.8 * 0.5, 110: 0.2}),
    ("polynomial", {"power": 2.0}, {5: 0.5, 10: 1.0, 60: 0.25, 85: 0.0625, 110: 0.0}),
    ("polynomial", {"power": 0.5, "final_lr_ratio": 0.5}, {60: 0.5 + 0.5 * 0.5 ** 0.5, 110: 0.5}),
    ("inverse_sqrt", {}, {0: 0.0, 5: 0.5, 10: 1.0, 40: 0.5, 90: math.sqrt(10 / 90), 1000: 0.1}),
    # sqrt(timescale / (step - warmup + timescale)): halved 3 timescales after warm-up
    ("inverse_sqrt", {"timescale": 40}, {5: 0.5, 10: 1.0, 130: 0.5, 370: math.sqrt(40 / 400)}),
    ("noam", {"model_size": 64}, {s: noam_formula(s, W, 64) for s in (0, 1, 5, 9, 10, 50, 109, 500)}),
]


def build(schedule, extra):
    model_size = extra.pop("model_size", None)
    cfg = OptimizerConfig(class_name="sgd", learning_rate=LR, scheduler=schedule, warmup_steps=W,
                          training_steps=T, **extra)
    model = torch.nn.Linear(3, 2)
    [opt], [sched] = from_config(cfg, model, model_size=model_size)
    return model, opt, sched["scheduler"]


def lr_after(opt, sched, steps):
    for _ in range(steps):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


@pytest.mark.parametrize("schedule, extra, table", TABLES, ids=[f"{t[0]}-{i}" for i, t in enumerate(TABLES)])
def test_lr_table(schedule, extra, table):
    _, opt, sched = build(schedule, dict(extra))
    done = 0
    for step, factor in sorted(table.items()):
        lr = lr_after(opt, sched, step - done)
        done = step
        assert lr == pytest.approx(LR * factor, rel=1e-12, abs=1e-15), f"step {step}"


@pytest.mark.parametrize("schedule, extra, table", TABLES, ids=[f"{t[0]}-{i}" for i, t in enumerate(TABLES)])
def test_state_dict_round_trip_halfway(schedule, extra, table):
    _, opt, sched = build(schedule, dict(extra))
    lr_after(opt, sched, 37)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    reference = [lr_after(opt, sched, 1) for _ in range(40)]

    _, opt2, sched2 = build(schedule, dict(extra))
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert [lr_after(opt2, sched2, 1) for _ in range(40)] == reference


@pytest.mark.parametrize("schedule, extra, table", TABLES, ids=[f"{t[0]}-{i}" for i, t in enumerate(TABLES)])
def test_vectorised_curve_equals_stepping(schedule, extra, table):
    _, opt, sched = build(schedule, dict(extra))
    stepped = [opt.param_groups[0]["lr"]] + [lr_after(opt, sched, 1) for _ in range(149)]
    cfg_extra = dict(extra)
    model_size = cfg_extra.pop("model_size", None)
    cfg = OptimizerConfig(class_name="sgd", learning_rate=LR, scheduler=schedule, warmup_steps=W,
                          training_steps=T, **cfg_extra)
    curve = LR * evaluate(cfg.resolve(model_size=model_size), 150)
    assert curve.tolist() == pytest.approx(stepped, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("schedule, extra, table", TABLES, ids=[f"{t[0]}-{i}" for i, t in enumerate(TABLES)])
def test_multiplier_pickles(schedule, extra, table):
    cfg_extra = dict(extra)
    model_size = cfg_extra.pop("model_size", None)
    cfg = OptimizerConfig(class_name="sgd", learning_rate=LR, scheduler=schedule, warmup_steps=W,
                          training_steps=T, **cfg_extra)
    fn = multiplier(cfg.resolve(model_size=model_size))
    clone = pickle.loads(pickle.dumps(fn))
    assert [clone(s) for s in range(0, 200, 7)] == [fn(s) for s in range(0, 200, 7)]


@pytest.mark.parametrize("warmup", [2, 4, 25, 4000])
def test_noam_peaks_at_warmup(warmup):
    cfg = OptimizerConfig(class_name="noam", learning_rate=2.0, warmup_steps=warmup)
    curve = evaluate(cfg.resolve(model_size=512), 3 * warmup + 10)
    # step is 0-based; s = step + 1 reaches warmup on the warmup-th optimizer step
    assert int(curve.argmax()) + 1 == warmup
    assert float(curve.max()) == pytest.approx(512 ** -0.5 * warmup ** -0.5)


def test_get_noam_decay_schedule_is_per_step():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=2.0)
    sched = get_noam_decay_schedule(opt, num_warmup_steps=4, model_size=16)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(7):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([2.0 * noam_formula(s, 4, 16) for s in range(8)])
    assert max(range(8), key=lrs.__getitem__) == 3


def test_get_noam_decay_schedule_rejects_bad_sizes():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=2.0)
    with pytest.raises(ValueError, match=r"^num_warmup_steps: 0 is not a step count; use an integer >= 1$"):
        get_noam_decay_schedule(opt, 0, 16)


def test_plateau_reduces_after_patience():
    cfg = OptimizerConfig(class_name="adam", learning_rate=0.001, learning_rate_decay=0.6, learning_rate_decay_start=2)
    [opt], [sched] = from_config(cfg, torch.nn.Linear(2, 2))
    assert sched["interval"] == "epoch" and sched["monitor"] == "val_loss"
    lrs = []
    for metric in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]:
        sched["scheduler"].step(metric)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 6e-4, 6e-4, 6e-4, 3.6e-4])


def test_million_step_curve_is_fast_enough_to_preview():
    cfg = OptimizerConfig(class_name="adamw", learning_rate=1e-3, warmup_steps=0.01, scheduler="cosine")
    curve = evaluate(cfg.resolve(training_steps=1_000_000), 1_000_000)
    assert curve.shape == (1_000_000,) and float(curve[10_000]) == 1.0 and float(curve[-1]) < 1e-9


# one_cycle matches torch's OneCycleLR, which ends a step earlier: tests/test_schedules_more.py.
@pytest.mark.parametrize("schedule", sorted(n for n, s in SCHEDULE_SPECS.items()
                                            if s.needs_training_steps and n != "one_cycle"))
@pytest.mark.parametrize("warmup", [0, W, T])
def test_past_the_last_step_the_lr_stays_at_the_end_value(schedule, warmup):
    cfg = OptimizerConfig(class_name="sgd", learning_rate=LR, scheduler=schedule, warmup_steps=warmup,
                          training_steps=T, final_lr_ratio=0.1)
    curve = evaluate(cfg.resolve(), torch.tensor([T - 1, T, T + 1, 2 * T, 100 * T], dtype=torch.float64))
    assert curve[0] > 0.1 and curve[1:].tolist() == [pytest.approx(0.1)] * 4
