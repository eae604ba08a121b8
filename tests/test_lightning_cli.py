"""LightningCLI names our logger and LR monitor by class_path, under both import names, on the
command line and in a config file; the run opens at its first use (a CLI that fails while being
built leaves none), carries MLflow's source tags, the CLI's config.yaml and, on request, the
checkpoints. Real ``LightningCLI`` runs of a tiny module, in this process, on a sqlite store."""

import getpass
import subprocess
import sys

import lightning.pytorch as L
import pytest
import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import lazy_instance
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from mlflow.tracking import MlflowClient
from pytorch_lightning.cli import LightningCLI as ClassicCLI
from torch.utils.data import DataLoader, TensorDataset

from kiwi_pipe_optim.integrations.lightning import KiwiLRMonitor, KiwiMLflowLogger, lr_monitor, mlflow_logger
from kiwi_pipe_optim.integrations.tracking.run import source_name

STEPS = 5


class _Tiny:
    """Two named param groups, a loss of its own (``my_loss``), and a step to fail at."""

    def __init__(self, hidden: int = 4, lr: float = 0.1, fail_at_step: int = -1):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden: {hidden} is below 1")
        self.save_hyperparameters()
        self.encoder = torch.nn.Linear(3, hidden)
        self.head = torch.nn.Linear(hidden, 1)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.hparams.fail_at_step:
            raise RuntimeError("the loss went up in smoke")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.head(self.encoder(x)), y)
        self.log("my_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD([{"params": self.encoder.parameters(), "name": "encoder"},
                                {"params": self.head.parameters(), "name": "head", "lr": self.hparams.lr / 10}],
                               lr=self.hparams.lr)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(32, 3, generator=g), torch.randn(32, 1, generator=g)), batch_size=4)


class TinyModule(_Tiny, L.LightningModule):
    pass


class ClassicTinyModule(_Tiny, pl.LightningModule):
    pass


FLAVORS = {  # the CLI, the module, where our classes are for it
    "lightning.pytorch": (LightningCLI, TinyModule, "kiwi_pipe_optim.integrations.lightning"),
    "pytorch_lightning": (ClassicCLI, ClassicTinyModule, "kiwi_pipe_optim.integrations.pytorch_lightning"),
}
QUIET = ["--trainer.max_steps=5", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.log_every_n_steps=1"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    """The working directory, where the logger makes each run's log_dir; pytest's own arguments
    out of LightningCLI's sight."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    return tmp_path


def named_on_the_command_line(package, uri, *more):
    return ["fit", *QUIET, f"--trainer.logger={package}.KiwiMLflowLogger",
            f"--trainer.logger.init_args.tracking_uri={uri}", f"--trainer.callbacks+={package}.KiwiLRMonitor", *more]


def named_in_a_config_file(package, uri, folder):
    config = {"trainer": {"max_steps": STEPS, "enable_progress_bar": False, "enable_model_summary": False,
                          "log_every_n_steps": 1,
                          "logger": {"class_path": f"{package}.KiwiMLflowLogger",
                                     "init_args": {"tracking_uri": uri, "run_name": "from-a-file"}},
                          "callbacks": [{"class_path": f"{package}.KiwiLRMonitor"}]}}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["fit", "--config", str(path)]


def runs(uri):
    client = MlflowClient(uri)
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def steps(client, run, key):
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.parametrize("how", ["command line", "config file"])
@pytest.mark.parametrize("flavor", FLAVORS)
def test_lightning_cli_names_the_logger_and_the_monitor(here, sqlite_uri, flavor, how):
    cli_class, module, package = FLAVORS[flavor]
    args = (named_on_the_command_line(package, sqlite_uri) if how == "command line"
            else named_in_a_config_file(package, sqlite_uri, here))
    cli = cli_class(module, args=args)
    assert type(cli.trainer.logger).__module__ == package
    client, [run] = runs(sqlite_uri)
    assert run.info.status == "FINISHED"
    for key in ("lr/encoder", "lr/head", "train_loss", "my_loss"):
        assert steps(client, run, key) == list(range(STEPS)), key
    assert client.get_metric_history(run.info.run_id, "lr/head")[0].value == pytest.approx(0.01)
    assert run.data.params["hidden"] == "4"
    # SaveConfigCallback wrote into the run's own log_dir, and the logger stored it
    assert cli.trainer.log_dir == str(here / ".kiwi-pipe-optim" / "lightning" / run.info.run_id)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "config")] == ["config/config.yaml"]
    stored = yaml.safe_load(open(client.download_artifacts(run.info.run_id, "config/config.yaml", str(here))))
    assert stored["trainer"]["logger"]["class_path"] == f"{package}.KiwiMLflowLogger"
    assert stored["trainer"]["callbacks"][0]["class_path"] == f"{package}.KiwiLRMonitor"


def test_a_second_run_in_the_same_directory_gets_a_log_dir_of_its_own(here, sqlite_uri):
    """SaveConfigCallback refuses to overwrite a config.yaml: each run has its own folder."""
    for _ in range(2):
        LightningCLI(TinyModule, args=named_on_the_command_line("kiwi_pipe_optim.integrations.lightning", sqlite_uri))
    _, found = runs(sqlite_uri)
    assert [r.info.status for r in found] == ["FINISHED", "FINISHED"]
    assert len(list((here / ".kiwi-pipe-optim" / "lightning").glob("*/config.yaml"))) == 2


def test_runs_carry_mlflows_source_tags_and_the_commit(here, sqlite_uri):
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "start"], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    LightningCLI(TinyModule, args=named_on_the_command_line("kiwi_pipe_optim.integrations.lightning", sqlite_uri,
                                                            "--trainer.logger.init_args.tags={team: kiwi}"))
    _, [run] = runs(sqlite_uri)
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.name"] == source_name(sys.argv) != ""
    assert tags["mlflow.user"] == getpass.getuser()
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["team"] == "kiwi"


def test_the_stage_tags_its_runs_with_the_source_too(monkeypatch):
    from kiwi_pipe_optim.integrations.stage.tags import run_tags

    monkeypatch.setattr(sys, "argv", ["/venv/bin/kiwi-optim", "train"])
    tags = run_tags({"optimizer": {"class_name": "adamw"}}, L)
    assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == ("kiwi-optim train", "LOCAL")
    assert tags["mlflow.user"] and tags["kiwi.lightning_flavor"] == "lightning.pytorch"


def test_the_class_paths_load_only_their_own_lightning():
    code = ("import sys; import kiwi_pipe_optim.integrations.lightning as k; print(sorted(m for m in "
            "('lightning', 'pytorch_lightning', 'mlflow') if m in sys.modules)); "
            "import kiwi_pipe_optim.integrations.pytorch_lightning; print('lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "False"]


@pytest.mark.parametrize("argv, name", [
    (["stages/train.py", "--params", "params.yaml"], "stages/train.py"),
    (["/venv/bin/kiwi-optim", "train"], "kiwi-optim train"),
    (["/site-packages/kiwi_pipe_optim/cli/__main__.py", "train"], "kiwi-optim train"),
    (["/elsewhere/main.py", "fit"], "main.py"),
    (["/venv/lib/site-packages/pytest/__main__.py", "-q"], "python -m pytest"),
    (["/venv/bin/my-trainer", "fit"], "my-trainer"),
    (["-c"], "python"),
])
def test_the_source_name(here, argv, name):
    (here / "stages").mkdir()
    (here / "stages" / "train.py").touch()
    assert source_name(argv) == name


@pytest.mark.parametrize("bad, error", [
    (["--trainer.logger.init_args.log_checkpoints=sometimes"], SystemExit),  # refused by the parser
    (["--trainer.gradient_clip_algorithm=sideways"], Exception),  # by the Trainer, after the logger was built
    (["--model.hidden=0"], ValueError),  # by the module
])
def test_a_cli_that_fails_while_being_built_leaves_no_run(here, sqlite_uri, bad, error):
    with pytest.raises(error):
        LightningCLI(TinyModule, args=named_on_the_command_line("kiwi_pipe_optim.integrations.lightning",
                                                                sqlite_uri, *bad))
    assert runs(sqlite_uri)[1] == []


def test_the_run_opens_at_fit(here, sqlite_uri):
    cli = LightningCLI(TinyModule, run=False,
                       args=named_on_the_command_line("kiwi_pipe_optim.integrations.lightning", sqlite_uri)[1:])
    assert runs(sqlite_uri)[1] == []
    cli.trainer.fit(cli.model)
    assert [r.info.status for r in runs(sqlite_uri)[1]] == ["FINISHED"]


def test_a_fit_that_raises_ends_its_run_failed(here, sqlite_uri):
    with pytest.raises(RuntimeError, match="up in smoke"):
        LightningCLI(TinyModule, args=named_on_the_command_line("kiwi_pipe_optim.integrations.lightning",
                                                                sqlite_uri, "--model.fail_at_step=3"))
    client, [run] = runs(sqlite_uri)
    assert run.info.status == "FAILED"
    assert steps(client, run, "lr/encoder") == [0, 1, 2]


def test_instances_as_trainer_defaults(here, sqlite_uri):
    """jsonargparse refuses an instance as a default (it cannot be written into config.yaml), now
    without a run left RUNNING; ``lazy_instance`` is the way."""
    with pytest.raises(ValueError, match="lazy instance"):
        LightningCLI(TinyModule, args=["fit", *QUIET],
                     trainer_defaults={"logger": KiwiMLflowLogger(sqlite_uri), "callbacks": [KiwiLRMonitor()]})
    assert runs(sqlite_uri)[1] == []
    LightningCLI(TinyModule, args=["fit", *QUIET],
                 trainer_defaults={"logger": lazy_instance(KiwiMLflowLogger, tracking_uri=sqlite_uri, run_name="lazy"),
                                   "callbacks": [lazy_instance(KiwiLRMonitor)]})
    client, [run] = runs(sqlite_uri)
    assert (run.info.status, run.info.run_name) == ("FINISHED", "lazy")
    assert steps(client, run, "lr/encoder") == list(range(STEPS))


def fit(logger, *callbacks, module=None):
    trainer = L.Trainer(max_steps=STEPS, logger=logger, callbacks=[lr_monitor(), *callbacks], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module or TinyModule())
    return trainer


@pytest.mark.parametrize("which, stored", [
    ("none", set()),
    ("last", {"last.ckpt"}),
    ("best", "best"),
    ("all", {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"}),
])
def test_checkpoints_as_artifacts(here, sqlite_uri, which, stored):
    saver = ModelCheckpoint(every_n_train_steps=2, save_top_k=-1, monitor="my_loss", save_last=True)
    fit(KiwiMLflowLogger(sqlite_uri, log_checkpoints=which), saver)
    client, [run] = runs(sqlite_uri)
    found = {a.path.split("/", 1)[1] for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    if stored == "best":
        best = saver.best_model_path.rsplit("/", 1)[1]
        assert found == {best} and run.data.tags["kiwi.best_checkpoint"] == f"checkpoints/{best}"
    else:
        assert found == stored
    assert saver.dirpath == str(here / ".kiwi-pipe-optim" / "lightning" / run.info.run_id / "kiwi-pipe-optim"
                                / run.info.run_id / "checkpoints")


def test_log_checkpoints_is_checked():
    with pytest.raises(ValueError, match="^log_checkpoints: 'some' is none of none, last, best, all$"):
        KiwiMLflowLogger(log_checkpoints="some")


def test_the_factories_give_the_classes_and_a_trainer_alone_opens_no_run(here, sqlite_uri):
    logger = mlflow_logger(sqlite_uri, run_name="plain")
    assert type(logger) is KiwiMLflowLogger and type(lr_monitor()) is KiwiLRMonitor
    assert type(mlflow_logger(sqlite_uri, flavor="pytorch_lightning")).__module__ == \
        "kiwi_pipe_optim.integrations.pytorch_lightning"
    L.Trainer(max_steps=STEPS, logger=logger, callbacks=[lr_monitor()])
    assert runs(sqlite_uri)[1] == []


def test_values_logged_after_finalize_reopen_the_same_run(here, sqlite_uri):
    """As ``trainer.test`` after ``trainer.fit`` does: one run, ended again."""
    logger = KiwiMLflowLogger(sqlite_uri)
    fit(logger)
    logger.log_metrics({"after": 1.0}, step=STEPS)
    logger.finalize("success")
    client, [run] = runs(sqlite_uri)
    assert run.info.status == "FINISHED" and steps(client, run, "after") == [STEPS]
    assert logger.version == run.info.run_id
