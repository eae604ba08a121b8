"""Does logging every step to MLflow slow the training stage down? Target: >= 0.95x.

Runs the real stage in this process on the default digits task, alternating MLflow on (sqlite
store in a temp dir) and off, and prints the ratio of their training throughput (steps per
second from the start of training to its end, validation and logging flushes included).

    python benchmarks/logging_overhead.py [--repeats 3] [--epochs 10]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def stage_throughput(params: dict, workdir: Path) -> float:
    from kiwi_pipe_optim.integrations.stage import run

    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    metrics = run(path, workdir)
    return metrics["steps_per_second"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--model", default="kiwi_pipe_optim.examples.digits:DigitsTransformer")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["model"] = {"class_path": args.model, "init_args": {}}
    base["trainer"].update(max_epochs=args.epochs, enable_progress_bar=False, enable_model_summary=False)
    results: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for repeat in range(args.repeats + 1):  # the first round warms caches and creates the store
            for mode in ("on", "off"):
                params = {**base, "mlflow": {**base["mlflow"], "enabled": mode == "on"}}
                sps = stage_throughput(params, Path(tmp))
                if repeat:
                    results[mode].append(sps)
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    ratio = on / off
    verdict = "PASS" if ratio >= 0.95 else "MISS"
    print(f"stage steps/s, MLflow logging every step: {on:8.1f}")
    print(f"stage steps/s, logging off:              {off:8.1f}")
    print(f"ratio on/off: {ratio:.3f}x  (target >= 0.95x)  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
