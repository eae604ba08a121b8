"""The sweep's MLflow parent run: the trials' runs nest under it in the UI, and it holds the
study's best values and plots.

One per study, whoever starts it: its id is recorded in the study, so a resumed sweep or a
worker on another machine reopens the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ...errors import ConfigError, Problem
from ...params_file import problems_from, read_params
from ..stage.params import MlflowParams
from ..tracking.run import ensure_experiment, source_tags
from ..tracking.store import check_reachable, client_for, is_remote, retrying, tracking_uri
from ..study.storage import claim_lock


class ParentRun:
    def __init__(self, client: Any, uri: str, run_id: str):
        self.client, self.uri, self.run_id = client, uri, run_id

    def close_child(self, run_id: str, state: str) -> None:
        """Tag a trial's run with how the trial ended; a run its stage left RUNNING is KILLED."""
        with contextlib.suppress(Exception):  # gone from the store: nothing left to tag
            retrying(self.client.set_tag, run_id, "optuna.state", state)
            if retrying(self.client.get_run, run_id).info.status == "RUNNING":
                retrying(self.client.set_terminated, run_id, "KILLED")

    def metric_of(self, run_id: str, metric: str) -> float | None:
        with contextlib.suppress(Exception):
            return retrying(self.client.get_run, run_id).data.metrics.get(metric)
        return None

    def record_best(self, study: Any, spec: Any) -> None:
        """The best trial's values as tags (``best.<key>``, which change as the study goes on,
        where params could not) and its metric as ``best_<metric>``, one step per trial."""
        try:
            best = study.best_trial
        except ValueError:
            return  # no trial has finished
        tags = {f"best.{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in best.params.items()}
        tags.update({"best.trial": str(best.number), "best.dvc_exp": best.user_attrs.get("kiwi.dvc_exp", ""),
                     "best.mlflow_run": best.user_attrs.get("kiwi.mlflow_run_id", "")})
        for key, value in tags.items():
            retrying(self.client.set_tag, self.run_id, key, value)
        finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))
        retrying(self.client.log_metric, self.run_id, f"best_{spec.metric}", float(best.value), step=finished)

    def log_artifact(self, path: Path, folder: str) -> None:
        retrying(self.client.log_artifact, self.run_id, str(path), folder)

    def end(self, status: str) -> None:
        retrying(self.client.set_terminated, self.run_id, status)


def parent_run(sweep: Any, attr: str, reopen: bool = True) -> ParentRun | None:
    """The study's parent run, created by the first worker and reopened by every later one;
    None when the params turn MLflow off. ``reopen``: mark it RUNNING again (a sweep that goes
    on; ``--show`` only reads).

    Raises:
        ConfigError: the params' ``mlflow`` section, or a store that cannot be reached.
    """
    data, _ = read_params(sweep.params_path)
    try:
        mlflow = MlflowParams.model_validate(data.get("mlflow") or {})
    except ValidationError as e:
        raise ConfigError(problems_from(e, MlflowParams, "mlflow")).with_source(str(sweep.params_path)) from None
    if not mlflow.enabled:
        return None
    uri = tracking_uri(mlflow.tracking_uri, sweep.root)
    field = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "mlflow.tracking_uri"
    check_reachable(uri, field)
    try:
        client = client_for(uri)
        experiment = ensure_experiment(client, uri, mlflow.experiment_name,
                                       None if is_remote(uri) else sweep.root / "mlartifacts")
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 (said in one line)
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(Problem(field, f"cannot open the MLflow store at {uri} ({reason})")) from None
    spec = sweep.spec
    with claim_lock(sweep.storage_url, spec.name):
        run_id = sweep.study.user_attrs.get(attr)
        if run_id:
            try:
                found = retrying(client.get_run, run_id)
                if found.info.lifecycle_stage == "deleted":
                    run_id = None
                elif reopen and found.info.status != "RUNNING":  # resumed: running again until the last trial
                    retrying(client.update_run, run_id, status="RUNNING")
            except Exception:  # noqa: BLE001 (gone, or another store: a new parent)
                run_id = None
        if not run_id:
            tags = {**source_tags("kiwi-optim sweep"), "optuna.study": spec.name, "kiwi.sweep": spec.name}
            run_id = retrying(client.create_run, experiment, run_name=spec.name, tags=tags).info.run_id
            params = {"sweep.metric": spec.metric, "sweep.direction": spec.direction, "sweep.trials": str(spec.trials),
                      "sweep.sampler": spec.sampler, "sweep.pruner": spec.pruner.name,
                      "sweep.seed": str(spec.seed)}
            params.update({f"space.{k}": json.dumps(d.model_dump(mode="json", by_alias=True, exclude_none=True))
                           for k, d in spec.space.items()})
            for key, value in params.items():
                retrying(client.log_param, run_id, key, value[:6000])
            sweep.study.set_user_attr(attr, run_id)
    return ParentRun(client, uri, run_id)
