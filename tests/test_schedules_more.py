"""wsd, cosine_restarts, step, multistep, exponential, one_cycle and composed phases: LRs at chosen
steps from each formula, through a real optimizer; torch's own schedulers where they exist; a
state_dict round trip halfway; preview equal to stepping; one-line errors with dotted paths."""

import math
import pickle

import pytest
import torch

from kiwi_pipe_optim import ConfigError, OptimizerConfig, from_config
from kiwi_pipe_optim.lint import lint
from kiwi_pipe_optim.preview import curves
from kiwi_pipe_optim.schedules import DECAY_SCHEDULE, SCHEDULE_SPECS, evaluate, multiplier

LR = 0.01
W, T = 10, 110


def warm(step, start=0.0):
    return start + (1 - start) * step / W


def cos_half(p):
    return 0.5 * (1 + math.cos(math.pi * p))


def sgdr(step, cycle, mult, final=0.0):
    """Cycle by cycle, as torch counts them."""
    s, length = step - W, cycle
    while s >= length:
        s, length = s - length, length * mult
    return final + (1 - final) * cos_half(s / length)


def one_cycle_formula(step, peak, total, start=1 / 25, final=None):
    final = start / 1e4 if final is None else final
    if step <= peak:
        rise = step / peak if peak > 0 else 1.0  # a one-step rise: torch divides by zero, here it is the peak
        return 1 + (start - 1) / 2 * (math.cos(math.pi * rise) + 1)
    pct = min((step - peak) / (total - 1 - peak), 1.0)
    return final + (1 - final) / 2 * (math.cos(math.pi * pct) + 1)


PHASES3 = [{"scheduler": "constant", "steps": 20, "warmup_steps": 20},
           {"scheduler": "constant", "steps": 0.25},
           {"scheduler": "cosine", "final_lr_ratio": 0.1}]


def phases3(step):
    """20 steps of warm-up, 27.5 -> 28 steps at 1, then cosine to 0.1 over the 62 steps left."""
    if step < 20:
        return step / 20
    if step < 48:
        return 1.0
    return 0.1 + 0.9 * cos_half(min(step - 48, 61) / 62)


# schedule, extra config (warmup W and training_steps T unless given), {step: expected multiplier}
TABLES = [
    ("wsd", {}, {0: 0.0, 5: 0.5, 10: 1.0, 60: 1.0, 99: 1.0, 102: 1 - math.sqrt(3 / 11), 109: 1 - math.sqrt(10 / 11),
                 110: 0.0, 150: 0.0}),
    ("wsd", {"decay_steps": 20, "decay_shape": "linear", "final_lr_ratio": 0.1},
     {89: 1.0, 90: 1.0, 100: 0.55, 105: 0.1 + 0.9 * 0.25, 110: 0.1, 200: 0.1}),
    ("wsd", {"decay_steps": 0.2, "decay_shape": "cosine", "min_lr": 0.002, "warmup_start_lr": 0.002},
     {0: 0.2, 5: 0.6, 10: 1.0, 88: 1.0, 99: 0.2 + 0.8 * cos_half(11 / 22), 110: 0.2}),
    ("cosine_restarts", {"cycle_steps": 20},
     {0: 0.0, 5: 0.5, 10: 1.0, 20: 0.5, 29: cos_half(19 / 20), 30: 1.0, 45: cos_half(15 / 20), 500: cos_half(10 / 20)}),
    ("cosine_restarts", {"cycle_steps": 20, "cycle_mult": 2, "final_lr_ratio": 0.1},
     {10: 1.0, 29: sgdr(29, 20, 2, 0.1), 30: 1.0, 50: 0.55, 69: sgdr(69, 20, 2, 0.1), 70: 1.0, 110: 0.55,
      150: 1.0}),
    ("cosine_restarts", {"cycle_steps": 8, "cycle_mult": 1.5, "min_lr": 0.001},
     {s: sgdr(s, 8, 1.5, 0.1) for s in (10, 17, 18, 29, 30, 47, 48, 100, 137)}),
    ("step", {"step_size": 25, "learning_rate_decay": 0.5},
     {0: 0.0, 5: 0.5, 10: 1.0, 34: 1.0, 35: 0.5, 59: 0.5, 60: 0.25, 85: 0.125, 200: 0.5 ** 7}),
    ("step", {"step_size": 25, "learning_rate_decay": 0.5, "min_lr": 0.002}, {60: 0.25, 85: 0.2, 500: 0.2}),
    ("multistep", {"milestones": [30, 0.5], "learning_rate_decay": 0.1},
     {5: 0.5, 10: 1.0, 29: 1.0, 30: 0.1, 54: 0.1, 55: 0.01, 109: 0.01, 300: 0.01}),
    ("exponential", {"learning_rate_decay": 0.9}, {5: 0.5, 10: 1.0, 11: 0.9, 30: 0.9 ** 20, 110: 0.9 ** 100}),
    ("exponential", {"learning_rate_decay": 0.5, "step_size": 10, "min_lr": 0.001, "warmup_start_lr": 0.001},
     {0: 0.1, 5: 0.55, 10: 1.0, 15: 0.5 ** 0.5, 30: 0.25, 35: 0.5 ** 2.5, 40: 0.125, 45: 0.1, 60: 0.1, 500: 0.1}),
    ("one_cycle", {"warmup_steps": None}, {s: one_cycle_formula(s, 32, T) for s in (0, 1, 16, 31, 32, 33, 70, 108,
                                                                                   109, 130)}),
    ("one_cycle", {"warmup_start_lr": 0.001, "min_lr": 1e-5},
     {s: one_cycle_formula(s, 9, T, 0.1, 1e-3) for s in (0, 4, 9, 10, 60, 109, 140)}),
    ("phases", {"warmup_steps": None, "phases": PHASES3},
     {s: phases3(s) for s in (0, 7, 19, 20, 47, 48, 70, 109, 150)}),
]
IDS = [f"{t[0]}-{i}" for i, t in enumerate(TABLES)]


def config(schedule, extra, lr=LR, **more):
    fields = {"class_name": "sgd", "learning_rate": lr, "scheduler": schedule, "warmup_steps": W,
              "training_steps": T, **extra, **more}
    return OptimizerConfig.parse({k: v for k, v in fields.items() if v is not None})


def build(cfg, model=None):
    [opt], [sched] = from_config(cfg, model or torch.nn.Linear(3, 2))
    return opt, sched["scheduler"]


def lr_after(opt, sched, steps):
    for _ in range(steps):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


@pytest.mark.parametrize("schedule, extra, table", TABLES, ids=IDS)
def test_lr_table(schedule, extra, table):
    opt, sched = build(config(schedule, extra))
    done = 0
    for step, factor in sorted(table.items()):
        lr = lr_after(opt, sched, step - done)
        done = step
        assert lr == pytest.approx(LR * factor, rel=1e-12, abs=1e-15), f"step {step}"


@pytest.mark.parametrize("schedule, extra, table", TABLES, ids=IDS)
def test_state_dict_round_trip_halfway(schedule, extra, table):
    cfg = config(schedule, extra)
    opt, sched = build(cfg)
    uninterrupted = [lr_after(opt, sched, 1) for _ in range(150)]

    opt, sched = build(cfg)
    first = [lr_after(opt, sched, 1) for _ in range(55)]
    saved = pickle.dumps((opt.state_dict(), sched.state_dict()))
    opt2, sched2 = build(cfg)
    saved_opt, saved_sched = pickle.loads(saved)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert first + [lr_after(opt2, sched2, 1) for _ in range(95)] == uninterrupted


@pytest.mark.parametrize("schedule, extra, table", TABLES, ids=IDS)
def test_vectorised_curve_equals_stepping_and_pickles(schedule, extra, table):
    cfg = config(schedule, extra)
    opt, sched = build(cfg)
    stepped = [opt.param_groups[0]["lr"]] + [lr_after(opt, sched, 1) for _ in range(199)]
    assert (LR * evaluate(cfg.resolve(), 200)).tolist() == pytest.approx(stepped, rel=1e-12, abs=1e-15)
    fn = multiplier(cfg.resolve())
    clone = pickle.loads(pickle.dumps(fn))
    assert [clone(s) for s in range(0, 200, 7)] == [fn(s) for s in range(0, 200, 7)]


# -- the same as torch's own schedulers ----------------------------------------------------------

@pytest.mark.parametrize("mult", [1, 2, 3])
@pytest.mark.parametrize("warmup", [0, 7])
def test_cosine_restarts_equals_torch_after_warmup(mult, warmup):
    cfg = OptimizerConfig(class_name="sgd", learning_rate=0.1, scheduler="cosine_restarts", cycle_steps=13,
                          cycle_mult=mult, final_lr_ratio=0.05, warmup_steps=warmup)
    opt, sched = build(cfg)
    ours = ([opt.param_groups[0]["lr"]] + [lr_after(opt, sched, 1) for _ in range(warmup + 699)])[warmup:]
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(ref_opt, T_0=13, T_mult=mult, eta_min=0.005)
    theirs = [ref_opt.param_groups[0]["lr"]] + [lr_after(ref_opt, ref, 1) for _ in range(699)]
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    curve = 0.1 * evaluate(cfg.resolve(), torch.arange(warmup, warmup + 700, dtype=torch.float64))
    assert curve.tolist() == pytest.approx(theirs, rel=1e-12, abs=1e-15)


def test_cosine_restarts_with_a_fractional_mult_restarts_where_the_cycles_add_up():
    cfg = OptimizerConfig(class_name="sgd", learning_rate=1.0, scheduler="cosine_restarts", cycle_steps=10,
                          cycle_mult=1.5, warmup_steps=W)
    curve = evaluate(cfg.resolve(), 400)
    assert curve.tolist() == pytest.approx([warm(s) if s < W else sgdr(s, 10, 1.5) for s in range(400)],
                                           rel=1e-12, abs=1e-15)
    # cycles of 10, 15, 22.5, 33.75: restarts at W + 10, 25, 47.5 (between steps), 81.25
    assert [s for s in range(W + 1, 400) if curve[s] > curve[s - 1]][:3] == [W + 10, W + 25, W + 48]


@pytest.mark.parametrize("warmup, total, extra, torch_args", [
    (None, 1000, {}, {"pct_start": 0.3}),
    (50, 200, {}, {"pct_start": 0.25}),
    (0.125, 40, {}, {"pct_start": 0.125}),
    (0, 40, {}, {"pct_start": 0.0}),
    (30, 120, {"warmup_start_lr": 0.02, "min_lr": 1e-4}, {"pct_start": 0.25, "div_factor": 5.0,
                                                          "final_div_factor": 200.0}),
    (30, 120, {"final_lr_ratio": 0.01}, {"pct_start": 0.25, "final_div_factor": 4.0}),
])
def test_one_cycle_equals_torch_step_by_step(warmup, total, extra, torch_args):
    fields = {"class_name": "sgd", "learning_rate": 0.1, "scheduler": "one_cycle", "training_steps": total, **extra}
    cfg = OptimizerConfig.parse({**fields, **({} if warmup is None else {"warmup_steps": warmup})})
    assert cfg.resolve().warmup_steps == torch_args["pct_start"] * total  # torch's phases end at whole steps
    opt, sched = build(cfg)
    ours = [opt.param_groups[0]["lr"]] + [lr_after(opt, sched, 1) for _ in range(total - 1)]
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.1, total_steps=total, anneal_strategy="cos",
                                              cycle_momentum=False, three_phase=False, **torch_args)
    theirs = [ref_opt.param_groups[0]["lr"]] + [lr_after(ref_opt, ref, 1) for _ in range(total - 1)]
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    # torch's off-by-one: the peak is at warmup - 1 and the end at total - 1, where it then stays
    peak = cfg.resolve().warmup_steps - 1
    assert peak < 0 or ours[peak] == pytest.approx(0.1, rel=1e-12)
    assert lr_after(opt, sched, 5) == pytest.approx(theirs[-1], rel=1e-12)


def test_one_cycle_with_one_step_of_warmup_starts_at_the_peak():
    """torch divides by zero here (its rise would end at step 0); the rise is then no rise at all."""
    cfg = OptimizerConfig(class_name="sgd", learning_rate=0.1, scheduler="one_cycle", warmup_steps=0.025,
                          training_steps=40)
    curve = evaluate(cfg.resolve(), 40)
    assert cfg.resolve().warmup_steps == 1 and float(curve[0]) == 1.0
    assert curve.tolist() == pytest.approx([one_cycle_formula(s, 0, 40) for s in range(40)], rel=1e-12)


# -- composed phases -------------------------------------------------------------------------------

class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)


def test_three_phases_preview_equals_stepping_per_group():
    cfg = OptimizerConfig.parse({"class_name": "sgd", "learning_rate": 0.1, "encoder_learning_rate": 0.02,
                                 "scheduler": "phases", "training_steps": T, "phases": PHASES3})
    preview = curves(cfg, T + 40)
    assert preview.phase_starts == (20, 48) and [p.steps for p in preview.resolved.phases] == [20, 28, 62]
    opt, sched = build(cfg, Tiny())
    names = [g["name"] for g in opt.param_groups]
    stepped = {n: [] for n in names}
    for _ in range(T + 40):
        for name, group in zip(names, opt.param_groups):
            stepped[name].append(group["lr"])
        lr_after(opt, sched, 1)
    for name in names:
        assert preview.lrs[name].tolist() == pytest.approx(stepped[name], rel=1e-12, abs=1e-15)
    assert preview.lrs["default"].tolist() == pytest.approx([0.1 * phases3(s) for s in range(T + 40)], rel=1e-12)


def test_phases_are_resume_checked_like_any_previewable_schedule(tmp_path):
    from kiwi_pipe_optim.integrations.stage.checkpoint import check_restored_lrs

    cfg = OptimizerConfig.parse({"class_name": "sgd", "learning_rate": 0.1, "scheduler": "phases",
                                 "training_steps": T, "phases": PHASES3})
    opt, sched = build(cfg)
    lr_after(opt, sched, 60)
    check_restored_lrs(opt, cfg, cfg.resolve(), 60, tmp_path / "x.ckpt")
    changed = OptimizerConfig.parse({**cfg.model_dump(exclude_none=True),
                                     "phases": [PHASES3[0], {**PHASES3[1], "steps": 0.3}, PHASES3[2]]})
    with pytest.raises(ConfigError, match=r"restored lr/default = .* at step 60, .*\(phases schedule\)"):
        check_restored_lrs(opt, changed, changed.resolve(), 60, tmp_path / "x.ckpt")


def test_a_phase_reads_its_keys_as_the_same_schedule_alone():
    """A phase of `steps: n` runs on its own step count, with training_steps = n."""
    alone = config("wsd", {"decay_steps": 0.3, "warmup_start_lr": 0.001}, training_steps=80)
    phased = config("phases", {"warmup_steps": None, "phases": [
        {"scheduler": "constant", "steps": 30},
        {"scheduler": "wsd", "steps": 80, "warmup_steps": W, "decay_steps": 0.3, "warmup_start_lr": 0.001}]})
    expected = evaluate(alone.resolve(), 80)
    assert evaluate(phased.resolve(), torch.arange(30, 110, dtype=torch.float64)).tolist() == expected.tolist()
    # after the last phase its last value holds
    assert float(evaluate(phased.resolve(), torch.tensor([500.0], dtype=torch.float64))) == float(expected[-1])


def test_a_last_phase_without_steps_and_without_a_decay_needs_no_run_length():
    cfg = OptimizerConfig.parse({"class_name": "sgd", "learning_rate": 0.1, "scheduler": "phases",
                                 "phases": [{"scheduler": "constant", "steps": 5, "warmup_steps": 5},
                                            {"scheduler": "exponential", "learning_rate_decay": 0.5}]})
    assert evaluate(cfg.resolve(), 8).tolist() == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.5, 0.25]


# -- validation ----------------------------------------------------------------------------------

def problems(**fields):
    with pytest.raises(ConfigError) as info:
        OptimizerConfig.parse({"class_name": "sgd", "learning_rate": 0.1, **fields})
    return str(info.value).splitlines()


def resolve_problems(**fields):
    with pytest.raises(ConfigError) as info:
        OptimizerConfig.parse({"class_name": "sgd", "learning_rate": 0.1, **fields}).resolve()
    return str(info.value).splitlines()


PHASE_NAMES = "constant, cosine, cosine_restarts, exponential, inverse_sqrt, linear, multistep, none, one_cycle, " \
              "polynomial, step, wsd"
WARMUP_USERS = "constant, cosine, cosine_restarts, exponential, inverse_sqrt, linear, multistep, one_cycle, " \
               "polynomial, step, wsd"


@pytest.mark.parametrize("fields, lines", [
    ({"scheduler": "phases", "phases": [{"scheduler": "constant", "steps": 10}, {"scheduler": "plateau"}]},
     ["optimizer.phases.1.scheduler: 'plateau' cannot be a phase (a phase's curve must follow from its own steps: no "
      f"nested phases, plateau or noam); choose one of: {PHASE_NAMES}"]),
    ({"scheduler": "phases", "phases": [{"scheduler": "constant", "steps": 10}, {"scheduler": "cosin"}]},
     ["optimizer.phases.1.scheduler: unknown schedule 'cosin' (did you mean 'cosine'?); choose one of: "
      f"{PHASE_NAMES}"]),
    ({"scheduler": "phases", "phases": [{"steps": 10}, {"scheduler": "cosine", "power": 2}]},
     [f"optimizer.phases.0.scheduler: required; choose one of: {PHASE_NAMES}",
      "optimizer.phases.1.power: not used by the cosine schedule; it applies to: polynomial"]),
    ({"scheduler": "phases", "phases": [{"scheduler": "constant"}, {"scheduler": "none", "warmup_steps": 3}]},
     ["optimizer.phases.0.steps: required for every phase but the last (which runs to the end); use a step count "
      "such as 1000, or a fraction in (0, 1] of training_steps",
      f"optimizer.phases.1.warmup_steps: not used by the none schedule; it applies to: {WARMUP_USERS}"]),
    ({"scheduler": "phases", "phases": [{"scheduler": "step", "steps": 10, "step_size": 3}, {"scheduler": "linear",
                                                                                           "stps": 4}]},
     ["optimizer.phases.1.stps: unknown key (did you mean 'steps'?); a phase's keys: scheduler, steps, warmup_steps, "
      "warmup_start_lr, final_lr_ratio, min_lr, power, timescale, decay_steps, decay_shape, cycle_steps, cycle_mult, "
      "step_size, milestones, learning_rate_decay"]),
    ({"scheduler": "phases", "phases": [{"scheduler": "step", "steps": 10, "step_size": 3}]},
     ["optimizer.phases.0.learning_rate_decay: 1.0 does not reduce the LR; the step schedule needs a factor in (0, 1) "
      "such as 0.5"]),
    ({"scheduler": "phases", "phases": [{"scheduler": "constant", "steps": 10, "warmup_steps": 20}, "cosine"]},
     ["optimizer.phases.1: 'cosine' is not a phase; write each as a mapping such as {scheduler: cosine, steps: 1000}"]),
    ({"scheduler": "phases"},
     ["optimizer.phases: required by the phases schedule; use a list such as [{scheduler: constant, steps: 1000, "
      "warmup_steps: 1000}, {scheduler: cosine}]"]),
    ({"scheduler": "cosine", "phases": [{"scheduler": "constant"}]},
     ["optimizer.phases: not used by the cosine schedule; it applies to: phases"]),
    ({"scheduler": "multistep", "learning_rate_decay": 0.5, "milestones": [100, 50, 200]},
     ["optimizer.milestones.1: 50 is not after the milestone before it (100); list the milestones in ascending "
      "order, each once"]),
    ({"scheduler": "multistep", "learning_rate_decay": 0.5, "milestones": [0.5, 400], "training_steps": 1000},
     ["optimizer.milestones.1: 400 is not after the milestone before it (0.5 (step 500 of 1000)); list the milestones "
      "in ascending order, each once"]),
    ({"scheduler": "multistep", "learning_rate_decay": 0.5, "milestones": [10, "soon", -3]},
     ["optimizer.milestones.1: 'soon' is not a number; use a whole number of steps, or a fraction in [0, 1] of "
      "training_steps",
      "optimizer.milestones.2: -3 is not a step count; use a whole number of steps, or a fraction in [0, 1] of "
      "training_steps"]),
    ({"scheduler": "multistep", "learning_rate_decay": 0.5},
     ["optimizer.milestones: required by the multistep schedule; use ascending steps such as [3000, 6000], or "
      "fractions of training_steps such as [0.5, 0.75]"]),
    ({"scheduler": "cosine", "training_steps": 100, "min_lr": 0.001, "final_lr_ratio": 0.1},
     ["optimizer.min_lr: 0.001 given together with final_lr_ratio (0.1); give one of them (final_lr_ratio = min_lr / "
      "learning_rate)"]),
    ({"scheduler": "linear", "min_lr": 0.5},
     ["optimizer.min_lr: 0.5 is not below learning_rate (0.1); use an end LR below the peak, such as 0.001"]),
    ({"scheduler": "cosine", "warmup_start_lr": 0.1},
     ["optimizer.warmup_start_lr: 0.1 is not below learning_rate (0.1); use a warm-up start below the peak, such as "
      "0.001"]),
    ({"scheduler": "plateau", "learning_rate_decay": 0.5, "warmup_start_lr": 0.01, "min_lr": 0.001},
     [f"optimizer.warmup_start_lr: not used by the plateau schedule; it applies to: {WARMUP_USERS}",
      "optimizer.min_lr: not used by the plateau schedule; it applies to: cosine, cosine_restarts, exponential, "
      "linear, multistep, one_cycle, polynomial, step, wsd"]),
    ({"scheduler": "step", "final_lr_ratio": 0.1, "step_size": 3, "learning_rate_decay": 0.5},
     ["optimizer.final_lr_ratio: not used by the step schedule; it applies to: cosine, cosine_restarts, linear, "
      "one_cycle, polynomial, wsd"]),
    ({"scheduler": "step"},
     ["optimizer.learning_rate_decay: 1.0 does not reduce the LR; the step scheduler needs a factor in (0, 1) such "
      "as 0.5",
      "optimizer.step_size: required by the step schedule; use the steps between two reductions, such as 1000"]),
    ({"scheduler": "cosine_restarts", "cycle_mult": 0.5},
     ["optimizer.cycle_mult: 0.5 is below 1; use a number >= 1 such as 2 (1: cycles of equal length)"]),
    ({"scheduler": "cosine_restarts", "cycle_steps": 2.5},
     ["optimizer.cycle_steps: 2.5 is not a whole number; use a whole number of steps >= 1 such as 1000"]),
    ({"scheduler": "cosine_restarts"},
     ["optimizer.cycle_steps: required by the cosine_restarts schedule; use the first cycle's length in steps, such "
      "as 1000"]),
    ({"scheduler": "wsd", "decay_shape": "sqrt", "decay_steps": -1},
     ["optimizer.decay_steps: -1 is not a step count; use a whole number of steps, or a fraction in [0, 1] of "
      "training_steps",
      "optimizer.decay_shape: unknown decay shape 'sqrt' (did you mean '1-sqrt'?); choose one of: 1-sqrt, cosine, "
      "linear"]),
    ({"scheduler": "cosine", "decay_steps": 100}, ["optimizer.decay_steps: not used by the cosine schedule; it applies "
                                                   "to: wsd"]),
])
def test_one_line_errors_with_dotted_paths(fields, lines):
    assert problems(**fields) == lines


@pytest.mark.parametrize("fields, lines", [
    ({"scheduler": "multistep", "learning_rate_decay": 0.5, "milestones": [10, 0.5]},
     ["optimizer.milestones.1: 0.5 is a fraction of training_steps, which is unknown; set optimizer.training_steps or "
      "give milestones in steps"]),
    ({"scheduler": "phases", "phases": [{"scheduler": "constant", "steps": 0.5}, {"scheduler": "constant"}]},
     ["optimizer.phases.0.steps: 0.5 is a fraction of training_steps, which is unknown; set optimizer.training_steps "
      "or give the phase's steps as a count"]),
    ({"scheduler": "phases", "phases": [{"scheduler": "constant", "steps": 10}, {"scheduler": "cosine"}]},
     ["optimizer.phases.1.steps: the cosine phase needs its length: give steps, or set optimizer.training_steps so "
      "that the last phase runs to the end of the run"]),
    ({"scheduler": "wsd"},
     ["optimizer.training_steps: required by the wsd schedule and not known; set optimizer.training_steps, or pass "
      "the run's step count (training_data_size)"]),
    ({"scheduler": "one_cycle"},
     ["optimizer.training_steps: required by the one_cycle schedule and not known; set optimizer.training_steps, or "
      "pass the run's step count (training_data_size)"]),
    ({"scheduler": "phases", "training_steps": 50, "phases": [{"scheduler": "constant", "steps": 60},
                                                              {"scheduler": "cosine"}]},
     ["optimizer.phases.1.steps: nothing is left for this phase: the phases before it take 60 steps and the run has "
      "50; give it steps, or shorten them"]),
])
def test_what_needs_the_run_length_says_so_at_resolve(fields, lines):
    assert resolve_problems(**fields) == lines


def test_counts_need_no_run_length():
    cfg = OptimizerConfig.parse({"class_name": "sgd", "learning_rate": 0.1, "scheduler": "multistep",
                                 "milestones": [3, 5], "learning_rate_decay": 0.5})
    assert cfg.resolve().milestones == (3, 5) and cfg.resolve().training_steps is None


def test_the_wsd_example_validates_and_builds():
    cfg = OptimizerConfig.parse({"class_name": "adamw", "learning_rate": 0.02, "warmup_steps": 100,
                                 "training_steps": 1000, "scheduler": "wsd"})
    r = cfg.resolve()
    assert (r.name, r.warmup_steps, r.decay_steps, r.decay_shape, r.final_lr_ratio) == ("wsd", 100, 100, "1-sqrt", 0.0)
    [opt], [sched] = from_config(cfg, torch.nn.Linear(3, 2))
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.LambdaLR) and sched["interval"] == "step"
    assert lr_after(opt, sched["scheduler"], 950) == pytest.approx(0.02 * (1 - math.sqrt(0.5)))


def test_resolved_values_are_concrete():
    r = config("multistep", {"milestones": [0.25, 0.5, 100], "learning_rate_decay": 0.5, "min_lr": 0.0005}).resolve()
    assert (r.milestones, r.final_lr_ratio, r.factor) == ((28, 55, 100), pytest.approx(0.05), 0.5)
    r = config("one_cycle", {"warmup_steps": None}).resolve()
    assert (r.warmup_steps, r.warmup_start, r.final_lr_ratio) == (33, 1 / 25, pytest.approx(4e-6))
    r = config("cosine_restarts", {"cycle_steps": 30, "cycle_mult": 2}).resolve()
    assert (r.cycle_steps, r.cycle_mult) == (30, 2.0)


def test_plateau_stays_openkiwis_schedule_for_a_decay_factor():
    assert DECAY_SCHEDULE == "plateau"
    cfg = OptimizerConfig.parse({"class_name": "sgd", "learning_rate": 0.1, "learning_rate_decay": 0.5})
    assert cfg.schedule_name == "plateau"
    assert {n for n, s in SCHEDULE_SPECS.items() if s.needs_decay_factor} == {"plateau", "step", "multistep",
                                                                             "exponential"}


def test_the_old_names_still_import_from_schedules():
    from kiwi_pipe_optim.schedules import (build_scheduler, constant, cosine, get_noam_decay_schedule,  # noqa: F401
                                           inverse_sqrt, linear, list_schedules, no_schedule, noam, polynomial)

    new = {"wsd", "cosine_restarts", "step", "multistep", "exponential", "one_cycle", "phases"}
    assert new <= set(list_schedules())


# -- lint ----------------------------------------------------------------------------------------

def findings(run_steps=None, **fields):
    return [str(f) for f in lint(OptimizerConfig.parse({"class_name": "sgd", "learning_rate": 0.1, **fields}),
                                 run_steps)]


def test_lint_decay_longer_than_the_run_after_warmup():
    assert findings(scheduler="wsd", warmup_steps=80, training_steps=100, decay_steps=50) == [
        "warning: optimizer.decay_steps: 50 steps is longer than the 20 steps after warm-up: the decay starts when "
        "warm-up ends and lasts 20 steps; use at most 20 steps, or a smaller fraction"]


def test_lint_a_milestone_beyond_the_run_and_one_in_warmup():
    assert findings(run_steps=200, scheduler="multistep", warmup_steps=20, learning_rate_decay=0.5,
                    milestones=[10, 150, 250]) == [
        "warning: optimizer.milestones.0: step 10 is within warm-up (20 steps): the LR is reduced as soon as warm-up "
        "ends; use a step after 20",
        "warning: optimizer.milestones.2: step 250 is at or beyond the end (200 steps): that reduction never happens; "
        "use a step below 200"]


def test_lint_a_cycle_and_a_step_beyond_the_run():
    assert findings(run_steps=100, scheduler="cosine_restarts", cycle_steps=150) == [
        "warning: optimizer.cycle_steps: the first cycle (150 steps) is longer than the 100 steps after warm-up: the "
        "LR never restarts nor reaches its end value; use at most 100 steps, or the cosine schedule"]
    assert findings(run_steps=100, scheduler="step", step_size=100, learning_rate_decay=0.5) == [
        "warning: optimizer.step_size: the first reduction would be at step 100, at or beyond the end (100 steps): "
        "the LR never decays; use fewer steps, such as 33"]


def test_lint_phases_longer_than_the_run_and_a_warmup_start_without_warmup():
    assert findings(scheduler="phases", training_steps=100, phases=[
        {"scheduler": "constant", "steps": 60, "warmup_start_lr": 0.01},
        {"scheduler": "linear", "steps": 60, "warmup_steps": 10}]) == [
        "warning: optimizer.phases.0.warmup_start_lr: 0.01 is not used without warm-up; set warmup_steps, or remove it",
        "warning: optimizer.phases: the phases add up to 120 steps but the run has 100: from phases.1 on they are cut "
        "short; shorten them, or let the last phase omit steps (the rest of the run)"]
    assert findings(scheduler="phases", training_steps=100, phases=PHASES3) == []
