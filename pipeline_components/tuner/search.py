"""The search: KerasTuner's oracles (random search, Bayesian optimisation, Hyperband) with a
trial budget and a time budget, run in one process or as KerasTuner's chief and workers.

    one process: run_search(request)                      oracle and trials here
    a group:     chief:   run_chief(request, port)        the oracle behind a gRPC server; it
                                                          writes the results when all are done
                 workers: run_worker(request)             trials, asking the chief for each
                          (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT)

The time budget: no trial starts after `tuner.max_minutes` from the start of the search (the
oracle answers STOPPED); trials already running finish. KerasTuner's own state (oracle.json, one
folder per trial with its best weights) lives in `request.work_dir`, which every process of a
group reads and writes (Hyperband continues a trial from another's checkpoint); results.py
writes the output from the oracle's trials.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import time
from concurrent import futures
from typing import Any

import keras_tuner

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.features import files
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.tuner import cost, launch, results
from pipeline_components.tuner.config import OBJECTIVES, SearchSpace, TunerConfig
from pipeline_components.tuner.trials import FeatureTrials, HeadHyperModel, ImageTrials, Trials

log = logging.getLogger(__name__)

PROJECT = "search"  # KerasTuner's project folder under work_dir
NO_SPACE = (
    "tuner.space: no search space configured (tuner.space={} searches the default one:"
    " learning_rate, dropout, units, optimizer, batch_size)"
)

_Oracle: Any = keras_tuner.Oracle  # Any: keras_tuner ships no types


class Budget(_Oracle):
    """An oracle that stops handing out trials after its deadline, and times every trial."""

    deadline: float | None = None
    stopped_by_time = False

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        if self.deadline is not None and time.time() >= self.deadline:
            self.stopped_by_time = True
            return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}
        return dict(super().populate_space(trial_id))

    def create_trial(self, tuner_id: str) -> Any:
        trial = super().create_trial(tuner_id)
        if trial.status == keras_tuner.engine.trial.TrialStatus.RUNNING:
            self.timing().setdefault(trial.trial_id, {"start": time.time(), "tuner": tuner_id})
        return trial

    def end_trial(self, trial: Any) -> None:
        super().end_trial(trial)
        clock = self.timing().setdefault(trial.trial_id, {})
        clock["end"] = time.time()
        ended = self.trials.get(trial.trial_id, trial)
        log.info(
            "trial %s (%s) %s: %s = %s in %.1fs",
            trial.trial_id,
            clock.get("tuner"),
            ended.status,
            self.objective.name,
            "-" if ended.score is None else f"{ended.score:.4f}",
            clock["end"] - clock.get("start", clock["end"]),
        )

    def timing(self) -> dict[str, dict[str, Any]]:
        """{trial_id: {"start", "end", "tuner"}} of the trials this oracle handed out."""
        if "_timing" not in self.__dict__:
            self._timing: dict[str, dict[str, Any]] = {}
        return self._timing


class RandomOracle(Budget, keras_tuner.oracles.RandomSearchOracle):
    pass


class BayesianOracle(Budget, keras_tuner.oracles.BayesianOptimizationOracle):
    pass


class HyperbandOracle(Budget, keras_tuner.oracles.HyperbandOracle):
    pass


class HeadTuner(keras_tuner.Tuner):
    """KerasTuner's Tuner, trials without TensorBoard."""

    def _configure_tensorboard_dir(self, callbacks: list, trial: Any, execution: int = 0) -> None:
        """Trials have no TensorBoard callback to patch; KerasTuner would import tensorboard
        (not a dependency of TensorFlow 2.21) to look for one."""


class HyperbandTuner(keras_tuner.Hyperband):
    """Hyperband's trial logic (epochs per round, continuing a trial from its checkpoint) with
    an oracle made here."""

    def __init__(self, oracle: Any, hypermodel: Any, **kwargs: Any) -> None:
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    _configure_tensorboard_dir = HeadTuner._configure_tensorboard_dir


@dataclasses.dataclass
class Request:
    """One search: what it tunes, on what, and where it writes. Every process of a group makes
    the same one from the same command line (tuner/executor.py)."""

    trainer: TrainerConfig
    tuner: TunerConfig
    output_dir: str
    work_dir: str
    features_dir: str | None = None  # trials on these features ...
    examples_dir: str | None = None  # ... or on these images

    @property
    def space(self) -> SearchSpace:
        if self.tuner.space is None:
            raise PipelineError(NO_SPACE)
        return self.tuner.space


def trials_for(request: Request) -> Trials:
    """The trials' data: the features when given; else the images (when features cannot be
    cached, or none were made)."""
    if request.features_dir:
        manifest = files.read_manifest(request.features_dir)
        return FeatureTrials(manifest, request.trainer, request.tuner)
    if not request.examples_dir:
        raise PipelineError("tuner: give the features or the examples to tune on")
    return ImageTrials(request.examples_dir, request.trainer, request.tuner)


def why_images(config: TrainerConfig) -> str:
    """Why trials run on images: what keeps the features from being cached."""
    return config.features_blocker() or "no features were given"


# KerasTuner's Gaussian process is its only use of scikit-learn and scipy (about 200 MB), so
# they are the `bayesian` extra, not dependencies of the image; KerasTuner imports them lazily.
BAYESIAN_MODULES = ("sklearn", "scipy")


def check_bayesian(config: TunerConfig) -> None:
    """A one-line error when Bayesian optimisation is asked for without its modules."""
    if config.algorithm != "bayesian":
        return
    missing = [m for m in BAYESIAN_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise PipelineError(
            f"tuner.algorithm: bayesian needs {' and '.join(missing)} (pip install"
            " '.[bayesian]' in this repository), or use random or hyperband"
        )


def make_oracle(config: TunerConfig, deadline: float | None) -> Any:
    objective = keras_tuner.Objective(config.objective, OBJECTIVES[config.objective])
    oracle: Any
    if config.algorithm == "hyperband":
        # iterations without end: the trial and time budgets end the search
        oracle = HyperbandOracle(
            objective,
            max_epochs=config.epochs,
            factor=config.hyperband_factor,
            hyperband_iterations=None,
            seed=config.seed,
        )
        oracle.max_trials = config.max_trials
    elif config.algorithm == "bayesian":
        check_bayesian(config)
        oracle = BayesianOracle(objective, max_trials=config.max_trials, seed=config.seed)
    else:
        oracle = RandomOracle(objective, max_trials=config.max_trials, seed=config.seed)
    oracle.deadline = deadline
    return oracle


def make_tuner(request: Request, trials: Trials, *, chief: bool, deadline: float | None) -> Any:
    """A KerasTuner tuner over the head's space. The chief (or the only process) starts the
    search afresh in work_dir; a worker joins it."""
    config = request.tuner
    hypermodel = HeadHyperModel(trials, request.space, request.trainer, config.seed)
    oracle = make_oracle(config, deadline)
    cls = HyperbandTuner if config.algorithm == "hyperband" else HeadTuner
    return cls(
        oracle=oracle,
        hypermodel=hypermodel,
        directory=request.work_dir,
        project_name=PROJECT,
        overwrite=chief,
    )


def deadline_of(config: TunerConfig) -> float | None:
    return time.time() + config.max_minutes * 60 if config.max_minutes else None


def search_kwargs(config: TunerConfig) -> dict[str, Any]:
    return {"epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch, "verbose": 0}


def run_search(request: Request) -> dict[str, Any]:
    """The whole search in this process; writes the output; returns the summary."""
    started = time.time()
    trials = trials_for(request)
    log_start(request, trials, workers=1)
    tuner = make_tuner(request, trials, chief=True, deadline=deadline_of(request.tuner))
    tuner.search(**search_kwargs(request.tuner))
    return finish(request, trials, tuner.oracle, started, workers=1)


def run_worker(request: Request) -> None:
    """Trials for the chief named by the environment (launch.py), until it says stop."""
    if launch.role() != "worker":
        raise PipelineError(f"tuner worker: {launch.TUNER_ID} does not name a worker")
    trials = trials_for(request)
    tuner = make_tuner(request, trials, chief=False, deadline=None)
    tuner.search(**search_kwargs(request.tuner))
    log.info("tuner worker %s: no trials left", os.environ[launch.TUNER_ID])


def run_chief(
    request: Request, port: int, workers: int, host: str = "0.0.0.0", poll: float = 0.5
) -> dict[str, Any]:
    """The oracle of a group behind KerasTuner's gRPC service on `host:port`, until every trial
    is handed out and every worker has been told to stop; then the output."""
    from keras_tuner.src.distribute import oracle_chief

    started = time.time()
    trials = trials_for(request)
    log_start(request, trials, workers=workers)
    tuner = make_tuner(request, trials, chief=True, deadline=deadline_of(request.tuner))
    oracle = tuner.oracle
    server, servicer = serve(oracle, host, port)
    try:
        # KerasTuner's own loop (oracle_chief.start_server) polls every 20 s once stopping
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll)
    finally:
        server.stop(grace=2)
    return finish(request, trials, oracle, started, workers=workers)


def serve(oracle: Any, host: str, port: int) -> tuple[Any, Any]:
    """KerasTuner's OracleServicer on a gRPC server (as oracle_chief.start_server builds it)."""
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if not server.add_insecure_port(f"{host}:{port}"):
        raise PipelineError(f"tuner chief: cannot listen on {host}:{port}")
    server.start()
    log.info("tuner chief: the oracle listens on %s:%d", host, port)
    return server, servicer


def log_start(request: Request, trials: Trials, workers: int) -> None:
    config = request.tuner
    budget = f"{config.max_trials} trials" + (
        f" or {config.max_minutes:g} min" if config.max_minutes else ""
    )
    log.info(
        "tuning %s: %s search, %s, %d epochs a trial, %d worker(s), on %s",
        config.objective,
        config.algorithm,
        budget,
        config.epochs,
        workers,
        "the backbone features (streamed)"
        if trials.mode == "features"
        else f"images ({why_images(request.trainer)}: the backbone runs every step)",
    )


def finish(
    request: Request, trials: Trials, oracle: Any, started: float, workers: int
) -> dict[str, Any]:
    """Write the output from the oracle's trials; remove KerasTuner's work_dir."""
    rows = results.trial_rows(oracle, request.tuner, request.space, request.trainer)
    if not any(r["status"] == "COMPLETED" for r in rows):
        raise PipelineError(
            f"tuner: no trial completed ({len(rows)} ran; see the log for their errors)"
        )
    summary = {
        "algorithm": request.tuner.algorithm,
        "objective": request.tuner.objective,
        "direction": OBJECTIVES[request.tuner.objective],
        "mode": trials.mode,
        "workers": workers,
        "trials": len(rows),
        "completed": sum(r["status"] == "COMPLETED" for r in rows),
        "max_trials": request.tuner.max_trials,
        "max_minutes": request.tuner.max_minutes,
        "stopped_by": "time" if oracle.stopped_by_time else "trials",
        "seconds": round(time.time() - started, 3),
    }
    if isinstance(trials, ImageTrials):
        why = why_images(request.trainer)
        summary["images"] = cost.image_cost(trials.examples_dir, request.trainer, rows, why)
    out = results.write_results(request.output_dir, rows, summary, request.tuner)
    fsutil.rmtree(request.work_dir)
    return out
