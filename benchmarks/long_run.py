"""A long run through the stage: does logging and checkpointing cost the same late as early?

A tiny model with 8 param groups trains for ``--steps`` optimizer steps (default 200,000) through
``kiwi_pipe_optim.integrations.stage.run``, with MLflow (sqlite) receiving every LR every step
and a checkpoint every 100 steps, while the module logs 3 metrics of its own per step. Printed,
each with its target: seconds per 1,000 steps late in the run / early in it, peak memory growth
from step 10,000 to the end, a checkpoint save late / early, and the stage's steps per second /
Lightning's with no logger on the same module (measured side by side, best of ``--rounds``).
Steps per second are the training loop's, from train start to train end on both sides, as in
``benchmarks/run.py``; the whole ``run()`` against the whole ``fit()`` (the stage's MLflow run
set-up, its final send and its outputs included) is printed for reference.
Exits 1 when a figure misses.

    python benchmarks/long_run.py                 # about 10 minutes on 2 cores
    python benchmarks/long_run.py --steps 40000   # a quicker look
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as L
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

GROUPS = 8
PROBE: dict[str, list] = {"window": [], "rss": [], "saves": []}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class Tiny(L.LightningModule):
    """8 layers, one param group each; logs 3 metrics of its own every step."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(GROUPS))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x

    def training_step(self, batch, batch_idx):
        (x,) = batch
        out = self(x)
        loss = out.pow(2).mean()
        self.log("mean_out", out.mean())
        self.log("max_out", out.max())
        self.log("loss_ratio", loss / (loss + 1))
        return loss


class Probe(Tiny):
    """Tiny, timing every 1,000 steps, its memory, and every checkpoint save."""

    def on_train_start(self):
        save = self.trainer.save_checkpoint

        def timed(*args, **kwargs):
            started = time.perf_counter()
            save(*args, **kwargs)
            PROBE["saves"].append((self.trainer.global_step, time.perf_counter() - started))

        self.trainer.save_checkpoint = timed
        self._last = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        step = self.trainer.global_step
        if step % 1000 == 0:
            now = time.perf_counter()
            PROBE["window"].append((step, now - self._last))
            PROBE["rss"].append((step, rss_mb()))
            self._last = now


class Data:
    """A plain data class, as the stage takes: 1,000 random rows in batches of 10."""

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(1000, 4, generator=torch.Generator().manual_seed(0))),
                          batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(0))


def params(steps: int, model: str) -> dict:
    rules = [{"name": f"g{i}", "match": f"layers.{i}", "lr_scale": 1.0 - i / 10} for i in range(GROUPS - 1)]
    return {
        "data": {"class_path": "long_run:Data"},
        "model": {"class_path": f"long_run:{model}"},
        "trainer": {"max_steps": steps, "enable_progress_bar": False,
                    "enable_model_summary": False, "limit_val_batches": 0, "accelerator": "cpu"},
        "optimizer": {"class_name": "adamw", "learning_rate": 1e-3, "warmup_steps": 0.01, "weight_decay": 0.01,
                      "param_groups": rules},
        "mlflow": {"experiment_name": "long-run"},
        "checkpoint": {"every_n_steps": 100},
    }


class Clock(L.Callback):
    """Times the training loop (train start to train end), as the stage's own ``steps_per_second``."""

    def on_train_start(self, trainer, pl_module):
        self.started = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.rate = trainer.global_step / (time.perf_counter() - self.started)


def stage_run(steps: int, model: str, workdir: Path) -> tuple[float, float]:
    """Steps per second of the training loop, and of the whole ``run`` (MLflow run, outputs)."""
    from kiwi_pipe_optim.integrations.stage import run

    workdir.mkdir(parents=True)
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params(steps, model), sort_keys=False))
    started = time.perf_counter()
    loop = run(path, workdir)["steps_per_second"]
    return loop, steps / (time.perf_counter() - started)


def lightning_run(steps: int) -> tuple[float, float]:
    """Steps per second of the training loop, and of the whole ``fit``."""
    from kiwi_pipe_optim import OptimizerConfig
    from kiwi_pipe_optim.integrations.lightning import attach_config

    module = Tiny()
    attach_config(module, OptimizerConfig(**params(steps, "Tiny")["optimizer"]))
    clock = Clock()
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        accelerator="cpu", deterministic=True, callbacks=[clock])
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=Data().train_dataloader())
    return clock.rate, steps / (time.perf_counter() - started)


def row(figure: str, value: float, target: str, ok: bool) -> bool:
    print(f"{figure:<70} {value:>8.3f}  {target:<8} {'PASS' if ok else 'MISS'}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--compare-steps", type=int, default=20_000, help="steps of each throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    sys.modules.setdefault("long_run", sys.modules[__name__])
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "mlflow", "kiwi_pipe_optim"):
        logging.getLogger(name).setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="kiwi-long-run-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")  # not the checkout's store
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, {GROUPS} groups")

    stage_run(args.steps, "Probe", root / "long")
    window = [seconds for step, seconds in PROBE["window"] if step > 1000]
    tenth = max(1, len(window) // 10)
    early, late = statistics.median(window[:tenth]), statistics.median(window[-tenth:])
    rss = PROBE["rss"]
    base = next((mb for step, mb in rss if step >= 10_000), rss[0][1])
    growth = max(mb for _, mb in rss) - base
    saves = [seconds for _, seconds in PROBE["saves"]]
    save_early, save_late = statistics.median(saves[5:25]), statistics.median(saves[-20:])

    ours, plain = [], []
    for i in range(args.rounds):  # interleaved: a busy neighbour slows whichever runs, not one side
        ours.append(stage_run(args.compare_steps, "Tiny", root / f"compare{i}"))
        plain.append(lightning_run(args.compare_steps))
    (loop, whole), (plain_loop, plain_whole) = (max(r[0] for r in ours), max(r[1] for r in ours)), \
        (max(r[0] for r in plain), max(r[1] for r in plain))

    print(f"{'figure':<70} {'value':>8}  {'target':<8} verdict")
    results = [
        row("seconds per 1,000 steps, last 10% / first 10% of the run", late / early, "<= 1.1", late / early <= 1.1),
        row("peak RSS growth from step 10,000 to the end (MB)", growth, "<= 50", growth <= 50),
        row(f"checkpoint save at the end / early ({save_late * 1000:.1f} / {save_early * 1000:.1f} ms)",
            save_late / save_early, "<= 1.2", save_late / save_early <= 1.2),
        row(f"stage steps/s / Lightning no logger ({loop:.0f} / {plain_loop:.0f}), 3 metrics of its own",
            loop / plain_loop, ">= 0.95", loop / plain_loop >= 0.95),
    ]
    print(f"{'(reference) the same, whole run: stage run() / Lightning fit() (' + f'{whole:.0f} / {plain_whole:.0f})':<70}"
          f" {whole / plain_whole:>8.3f}", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
