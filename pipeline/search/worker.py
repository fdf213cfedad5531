"""A worker of a distributed search: asks the chief for trials, trains them, reports back.

The worker finds its chief as keras-tuner's workers do, through
KERASTUNER_TUNER_ID (a name unique among the workers), KERASTUNER_ORACLE_IP
and KERASTUNER_ORACLE_PORT. It learns the search's settings from the chief,
loads the same dataset from its own data directory (checked against the
chief's fingerprint), and trains each trial exactly as a one-machine search
would (the same seed per trial id). Its model files go to the chief with the
trial's result; the worker's own directory is scratch.

Every call to the chief waits at most ``chief_timeout_s`` for it to answer,
so a worker outlives a chief restart but never hangs on a chief that is gone.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import keras_tuner
from keras_tuner.src import protos
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import trial as trial_module

from pipeline.datasets import load_dataset
from pipeline.errors import UserError
from pipeline.search.builder import SparseHyperModel
from pipeline.search.chief import GRPC_OPTIONS, SERVICE, data_fingerprint, pack_files, to_proto
from pipeline.search.oracle import RandomOracle
from pipeline.search.run import make_budget
from pipeline.search.tuner import SparseTuner

ENVIRONMENT = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
IDLE_POLL_S = 2.0
RETRY_S = 2.0


class ChiefClient:
    """Our worker's side of the chief's service (keras-tuner's calls and ours), with bounded waits.

    Stands in for the tuner's oracle, as keras-tuner's own OracleClient does.
    """

    def __init__(self, address: str, tuner_id: str, chief_timeout_s: float, objective, max_trials: int):
        self.address = address
        self.tuner_id = tuner_id
        self.timeout = chief_timeout_s
        self.objective = objective
        self.max_trials = max_trials
        channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
        self.stub = protos.get_service_grpc().OracleStub(channel)
        self._ours = {name: channel.unary_unary(f"/{SERVICE}/{name}") for name in ("Run", "Heartbeat", "Files")}
        self.current: str | None = None  # the trial this worker is on, for its heartbeats

    def _call(self, method, request, what: str, timeout: float | None = None):
        """One call, retried while the chief cannot be reached, for at most the chief timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            try:
                return method(request, wait_for_ready=True, timeout=max(1.0, left))
            except grpc.RpcError as exc:
                code = exc.code()
                retry = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retry or time.monotonic() >= deadline:
                    detail = "did not answer" if retry else f"answered {code.name}: {exc.details()}"
                    raise UserError(f"the chief at {self.address} {detail} ({what}, waited up to "
                                    f"{self.timeout:g} s): check it runs, or give a longer --chief-timeout") from None
                time.sleep(RETRY_S)

    def hello(self) -> dict[str, Any]:
        """The search's settings, as the chief holds them."""
        return json.loads(self._call(self._ours["Run"], b"{}", "asking for the search"))

    def heartbeat(self) -> None:
        """Tells the chief this worker is alive and still on its trial; errors are the next beat's problem."""
        body = json.dumps({"tuner_id": self.tuner_id, "trial_id": self.current}).encode()
        try:
            self._ours["Heartbeat"](body, timeout=10)
        except grpc.RpcError:
            pass

    def send_files(self, trial_id: str, folder: Path) -> None:
        """Sends a trial's model files to the chief."""
        files = {f.name: f.read_bytes() for f in sorted(folder.glob("model_*")) if f.is_file()}
        if files:
            self._call(self._ours["Files"], pack_files(trial_id, files), f"sending trial {trial_id}'s models")

    # keras-tuner's Oracle calls, as BaseTuner makes them
    def get_space(self):  # noqa: D102
        response = self._call(self.stub.GetSpace, protos.get_service().GetSpaceRequest(), "GetSpace")
        return hp_module.HyperParameters.from_proto(response.hyperparameters)

    def update_space(self, hyperparameters) -> None:  # noqa: D102
        self._call(self.stub.UpdateSpace,
                   protos.get_service().UpdateSpaceRequest(hyperparameters=to_proto(hyperparameters)),
                   "UpdateSpace")

    def create_trial(self, tuner_id: str):
        """The next trial; while the chief says wait (IDLE), asks again every few seconds."""
        while True:
            response = self._call(self.stub.CreateTrial,
                                  protos.get_service().CreateTrialRequest(tuner_id=tuner_id), "CreateTrial")
            trial = trial_module.Trial.from_proto(response.trial)
            if trial.status != trial_module.TrialStatus.IDLE:
                return trial
            time.sleep(IDLE_POLL_S)

    def update_trial(self, trial_id: str, metrics: dict, step: int = 0):  # noqa: D102
        response = self._call(self.stub.UpdateTrial, protos.get_service().UpdateTrialRequest(
            trial_id=trial_id, metrics=metrics, step=step), "UpdateTrial")
        return trial_module.Trial.from_proto(response.trial)

    def end_trial(self, trial) -> None:  # noqa: D102
        self._call(self.stub.EndTrial, protos.get_service().EndTrialRequest(trial=to_proto(trial)),
                   f"ending trial {trial.trial_id}")

    def get_trial(self, trial_id: str):  # noqa: D102
        response = self._call(self.stub.GetTrial, protos.get_service().GetTrialRequest(trial_id=trial_id),
                              "GetTrial")
        return trial_module.Trial.from_proto(response.trial)


class WorkerTuner(SparseTuner):
    """SparseTuner whose trials come from the chief: beats while it trains, sends its models when done."""

    def __init__(self, *args, heartbeat_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.heartbeat_s = heartbeat_s
        self._beating = threading.Event()

    def on_trial_begin(self, trial) -> None:  # noqa: D102
        client: ChiefClient = self.oracle
        client.current = trial.trial_id
        self._beating.set()
        threading.Thread(target=self._beat, args=(trial.trial_id,), daemon=True).start()
        print(f"trial {trial.trial_id}: training", flush=True)

    def _beat(self, trial_id: str) -> None:
        while self._beating.is_set() and self.oracle.current == trial_id:
            self.oracle.heartbeat()
            time.sleep(self.heartbeat_s)

    def on_trial_end(self, trial) -> None:  # noqa: D102
        folder = Path(self.get_trial_dir(trial.trial_id))
        try:
            self.oracle.send_files(trial.trial_id, folder)
            super().on_trial_end(trial)
        finally:
            self._beating.clear()
            self.oracle.current = None
        shutil.rmtree(folder, ignore_errors=True)
        print(f"trial {trial.trial_id}: {trial.status.lower()}", flush=True)


def run_worker(data_dir: str | None, work_dir: Path, chief_timeout_s: float = 600.0,
               threads: int = 0, parent_pid: int = 0) -> int:
    """Runs trials for the chief named in the environment until it says stop; returns trials run.

    ``parent_pid``: the local chief that started this worker; the worker ends
    within a second of that process's death (a restarted chief starts its own).
    """
    if parent_pid:
        threading.Thread(target=_end_with_parent, args=(parent_pid,), daemon=True).start()
    missing = [name for name in ENVIRONMENT if not os.environ.get(name)]
    if missing:
        raise UserError(f"{', '.join(missing)} not set: a worker needs KERASTUNER_TUNER_ID=<unique name>, "
                        "KERASTUNER_ORACLE_IP=<the chief's host> and KERASTUNER_ORACLE_PORT=<its port>")
    tuner_id = os.environ["KERASTUNER_TUNER_ID"]
    if "chief" in tuner_id:
        raise UserError(f"KERASTUNER_TUNER_ID {tuner_id!r} names the chief: give each worker another name "
                        "(worker0, worker1, ...)")
    port = os.environ["KERASTUNER_ORACLE_PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"KERASTUNER_ORACLE_PORT {port!r} is not a port: give the number the chief printed")
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{port}"
    objective = keras_tuner.Objective("error", "min")
    client = ChiefClient(address, tuner_id, chief_timeout_s, objective, 0)
    hello = client.hello()
    run = hello["run"]
    data = load_dataset(run["dataset"], data_dir)
    if data_fingerprint(data) != hello["fingerprint"]:
        raise UserError(f"dataset {run['dataset']!r} from --data-dir {data_dir} is not the chief's (its training "
                        "and validation splits differ): give this worker the same dataset files")
    print(f"{tuner_id}: {run['dataset']} on {run['board']}, {hello['trials']} trials of {run['epochs']} "
          f"epochs, chief {address}", flush=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    tuner = WorkerTuner(RandomOracle(objective=objective, max_trials=hello["trials"], seed=run["seed"]),
                        SparseHyperModel(data.input_shape, data.num_classes), data, run["epochs"],
                        make_budget(run), run["seed"], heartbeat_s=hello["heartbeat_s"],
                        min_accuracy=float(run.get("min_accuracy") or 0.0),
                        directory=str(work_dir), project_name="search")
    client.max_trials = hello["trials"]
    tuner.oracle = client  # in place of keras-tuner's OracleClient: bounded waits, heartbeats, model files
    ran = []
    tuner.on_trial_done = lambda: ran.append(1)
    tuner.search(verbose=0)
    print(f"{tuner_id}: the chief says the search is over; {len(ran)} trial(s) run here", flush=True)
    return len(ran)


def _end_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    print(f"the chief (pid {parent_pid}) has gone: this worker stops too", flush=True)
    os._exit(3)
