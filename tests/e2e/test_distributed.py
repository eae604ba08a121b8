"""Two CPU processes under Lightning DDP (gloo): one MLflow run, the single-process LR curve."""

import json
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import sh, stage_in_process

# two training processes at once: alone on one xdist worker, not beside another test's processes
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("serial")]


def lr_histories(repo):
    c = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    [run] = runs
    assert run.info.status == "FINISHED"
    out = {}
    for group in ("default", "encoder"):
        history = c.get_metric_history(run.info.run_id, f"lr/{group}")
        out[group] = [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]
    return run, out


RECORDING = '''
import json

from kiwi_pipe_optim.examples.digits import DigitsTransformer


class RecordingDigits(DigitsTransformer):
    """Writes every loss it returns, with its optimizer step, to losses.<rank>.jsonl."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        with open(f"losses.{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps([self.global_step, loss.item()]) + "\\n")
        return loss
'''


def test_ddp_on_two_cpu_processes_logs_once_with_the_single_process_curve(repo_factory):
    # 320 training images split over 2 processes: 160 each, 3 batches of 64, 2 epochs -> 6 steps
    ddp = repo_factory({"trainer": {"devices": 2, "strategy": "ddp", "accelerator": "cpu"},
                        "model": {"class_path": "user_ddp:RecordingDigits"}}, name="ddp")
    (ddp / "user_ddp.py").write_text(RECORDING)
    result = sh([sys.executable, "stages/train.py"], ddp)
    assert result.stdout.count('"steps": 6') == 1  # only rank 0 reports
    run, histories = lr_histories(ddp)
    assert run.data.params["resolved.training_steps"] == "6"
    assert run.data.params["trainer.devices"] == "2"
    assert [s for s, _ in histories["default"]] == list(range(6))
    # the bundled module logs train_loss itself: ours, rank 0's returned loss per step, moves aside
    returned = [json.loads(line) for line in (ddp / "losses.0.jsonl").read_text().splitlines()]
    assert (ddp / "losses.1.jsonl").exists()
    c = MlflowClient(tracking_uri=f"sqlite:///{ddp / 'mlflow.db'}")
    ours = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, "kiwi/train_loss"))
    assert [s for s, _ in ours] == [s for s, _ in returned] == list(range(6))
    assert [v for _, v in ours] == pytest.approx([v for _, v in returned], rel=1e-6)

    # one process, 160 training images: the same 6 optimizer steps; DDP's launcher would start
    # this process again for its second rank, so only this run may train in the test's process
    single = repo_factory({"data": {"init_args": {"limit": 200}}}, name="single")
    result = stage_in_process(single)
    assert result.returncode == 0, result.stderr[-3000:]
    single_run, single_histories = lr_histories(single)
    assert single_run.data.params["resolved.training_steps"] == "6"
    assert histories == single_histories
