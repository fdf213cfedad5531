"""The chief of a distributed search: serves the Oracle to workers and writes every result.

Workers speak keras-tuner's own gRPC protocol to the chief (CreateTrial,
UpdateTrial, EndTrial, ...; they find it through KERASTUNER_TUNER_ID,
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT), plus three calls of ours on
the same server: ``Run`` (the search's settings and a fingerprint of its
data), ``Heartbeat`` (a worker is alive and still on its trial) and ``Files``
(a finished trial's model files, so the chief writes ``search/trial_<id>/``
itself and workers need no shared disk).

keras-tuner's own chief cannot lose a worker: a dead worker's trial stays
"running" for ever and the chief never exits. Here every worker holds a
lease renewed by its heartbeats; a worker whose lease runs out (or whose
local process exits) has its trial sent back for a retry under the same id,
or recorded as failed with the reason once its retries are spent.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC core logs a bind failure we report in one line
import grpc  # noqa: E402
from keras_tuner.src import protos
from keras_tuner.src.distribute.oracle_chief import OracleServicer
from keras_tuner.src.engine import trial as trial_module

from pipeline.errors import UserError
from pipeline.search.run import PreparedSearch, quiet_surrogates

SERVICE = "sparse_mcu.Chief"
MAX_MESSAGE_BYTES = 256 << 20  # a trial's model files travel in one message
GRPC_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
POLL_S = 1.0
STOP_GRACE_S = 15.0  # after the last trial, how long idle workers get to hear "stop"
RUNNING = trial_module.TrialStatus.RUNNING


@dataclasses.dataclass(frozen=True)
class ChiefSettings:
    """How the chief serves and when it gives up on a worker.

    Attributes:
        host: address to listen on (0.0.0.0 for workers on other machines).
        port: port to listen on; 0 picks a free one (local workers only).
        workers: local worker processes to start beside the chief.
        worker_timeout_s: a worker silent this long (no heartbeat, no call) is lost.
        idle_timeout_s: with trials left and no worker heard from for this long, stop.
        threads: TensorFlow threads per local worker (0: the cores shared out).
    """

    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 2
    worker_timeout_s: float = 60.0
    idle_timeout_s: float = 900.0
    threads: int = 0


def to_proto(obj):
    """``obj.to_proto()`` without keras-tuner 1.4.8's stray print (conditions.Parent.to_proto prints
    its first value each time a conditional hyperparameter is sent)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return obj.to_proto()


def data_fingerprint(data) -> str:
    """sha256 of a dataset's training and validation splits: workers must train on the chief's data."""
    digest = hashlib.sha256()
    for array in (data.x_train, data.y_train, data.x_val, data.y_val):
        digest.update(array.tobytes())
    return digest.hexdigest()


def pack_files(trial_id: str, files: dict[str, bytes]) -> bytes:
    """A trial's files as one message: a length-prefixed JSON header, then the contents."""
    header = json.dumps({"trial_id": trial_id, "files": [[n, len(b)] for n, b in files.items()]}).encode()
    return struct.pack("<I", len(header)) + header + b"".join(files.values())


def unpack_files(message: bytes) -> tuple[str, dict[str, bytes]]:
    """The inverse of :func:`pack_files`."""
    (size,) = struct.unpack_from("<I", message)
    header = json.loads(message[4:4 + size])
    files, at = {}, 4 + size
    for name, length in header["files"]:
        files[name] = message[at:at + length]
        at += length
    return header["trial_id"], files


class Chief:
    """The search's oracle behind a gRPC server, with worker leases.

    Args:
        search: a search set up in its output directory.
        settings: how to serve.
        log: where progress lines go.
    """

    def __init__(self, search: PreparedSearch, settings: ChiefSettings, log=sys.stdout):
        self.search = search
        self.oracle = search.oracle
        self.settings = settings
        self.log = log
        self.lock = threading.RLock()
        self.started = time.monotonic()
        self.last_seen: dict[str, float] = {}
        self.last_worker_at = self.started
        self.failure: UserError | None = None
        self.exhausted = False

    # -- what workers call -------------------------------------------------------------------
    def seen(self, tuner_id: str) -> None:
        """Renews a worker's lease."""
        with self.lock:
            self.last_seen[tuner_id] = self.last_worker_at = time.monotonic()

    def create_trial(self, tuner_id: str) -> trial_module.Trial:
        """The next trial for a worker (or STOPPED once the search is over or has failed)."""
        self.seen(tuner_id)
        with self.lock, quiet_surrogates():
            if self.failure is not None:
                self.oracle.tuner_ids.discard(tuner_id)
                return trial_module.Trial(self.oracle.get_space(), status=trial_module.TrialStatus.STOPPED)
            trial = self.oracle.create_trial(tuner_id)
            if trial.status == RUNNING:
                self._say(f"trial {trial.trial_id}: started on {tuner_id}")
            elif trial.status == trial_module.TrialStatus.STOPPED:
                self.exhausted = True  # every trial handed out, or the oracle has nothing left to propose
            return trial

    def heartbeat(self, tuner_id: str, trial_id: str | None) -> dict[str, Any]:
        """A worker's "still alive, still on trial_id"; re-adopts a trial a restarted chief queued for retry."""
        self.seen(tuner_id)
        with self.lock:
            queue = self.oracle._retry_queue
            if trial_id and tuner_id not in self.oracle.ongoing_trials and trial_id in queue:
                queue.remove(trial_id)
                trial = self.oracle.trials[trial_id]
                trial.status = RUNNING
                self.oracle.ongoing_trials[tuner_id] = trial
                self.oracle.save()
                self._say(f"trial {trial_id}: still running on {tuner_id} (kept after the chief's restart)")
        return {"ok": True}

    def write_files(self, message: bytes) -> None:
        """Writes a running trial's model files into search/trial_<id>/."""
        trial_id, files = unpack_files(message)
        with self.lock:
            if not self._open(trial_id):
                return  # a second run's copy of a trial that has ended already
            folder = Path(self.search.tuner.get_trial_dir(trial_id))
            for name, content in files.items():
                if Path(name).name != name or not name.startswith("model_"):
                    continue  # only the trial's model files, never a path
                tmp = folder / f".{name}.part"
                tmp.write_bytes(content)
                tmp.replace(folder / name)

    def end_trial(self, trial: trial_module.Trial, tuner_id: str = "") -> None:
        """Ends a trial reported by a worker; a second report of an ended trial is ignored."""
        with self.lock, quiet_surrogates():
            if not self._open(trial.trial_id):
                self._say(f"trial {trial.trial_id}: a second result ignored (the trial had ended)")
                return
            if trial.trial_id in self.oracle._retry_queue:
                self.oracle._retry_queue.remove(trial.trial_id)
            self._end(trial)

    # -- the chief's own bookkeeping ---------------------------------------------------------
    def _open(self, trial_id: str) -> bool:
        """A trial still waiting for its result: running, or given up on but not yet run again
        (a worker thought lost that reports after all is taken at its word)."""
        record = self.oracle.trials.get(trial_id)
        return record is not None and (record.status == RUNNING or trial_id in self.oracle._retry_queue)

    def lose(self, tuner_id: str, reason: str) -> None:
        """Gives up on a worker: its trial goes back for a retry (or fails once retries are spent)."""
        with self.lock, quiet_surrogates():
            self.oracle.tuner_ids.discard(tuner_id)
            self.last_seen.pop(tuner_id, None)
            ongoing = self.oracle.ongoing_trials.get(tuner_id)
            if ongoing is None:
                return
            lost = trial_module.Trial(ongoing.hyperparameters.copy(), trial_id=ongoing.trial_id,
                                      status=trial_module.TrialStatus.INVALID)
            lost.message = f"worker {tuner_id} was lost mid-trial: {reason}"
            self._end(lost)
            again = ongoing.trial_id in self.oracle._retry_queue
            self._say(f"trial {ongoing.trial_id}: {lost.message}; "
                      + ("it will run again" if again else "recorded as failed (no retries left)"))

    def _end(self, trial: trial_module.Trial) -> None:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # keras-tuner's "Trial N failed 1 times" line
                self.oracle.end_trial(trial)
        except RuntimeError as exc:
            if "consecutive failures" not in str(exc):
                raise
            self.failure = self.search.stopped_by_failures(exc)
        rows = self.search.write_results()
        ended = self.oracle.trials[trial.trial_id]
        if ended.status != RUNNING and trial.trial_id not in self.oracle._retry_queue:
            row = next((r for r in rows if r["trial_id"] == trial.trial_id), None)
            status = row["status"] if row else ended.status.lower()
            self._say(f"trial {trial.trial_id}: {status}; {len(rows)}/{self.search.trials} ended; "
                      f"{self.search.summary(rows)}")

    def reap(self) -> None:
        """Loses every worker whose lease has run out."""
        now = time.monotonic()
        with self.lock:
            for tuner_id in set(self.oracle.ongoing_trials) | set(self.oracle.tuner_ids):
                since = self.last_seen.get(tuner_id, self.started)
                if now - since > self.settings.worker_timeout_s:
                    self.lose(tuner_id, f"no word from it for {now - since:.0f} s "
                                        f"(--worker-timeout {self.settings.worker_timeout_s:g})")

    def done(self) -> bool:
        """Every trial has ended (none running, none waiting for a retry), or the search failed."""
        with self.lock:
            if self.failure is not None:
                return True
            oracle = self.oracle
            return ((self.exhausted or len(oracle.trials) >= self.search.trials) and not oracle.ongoing_trials
                    and not oracle._retry_queue)

    def _say(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()


class _Servicer(OracleServicer):
    """keras-tuner's Oracle service, routed through the Chief's leases and bookkeeping."""

    def __init__(self, chief: Chief):
        super().__init__(chief.oracle)
        self.chief = chief

    def GetSpace(self, request, context):  # noqa: N802 (gRPC method names)
        return protos.get_service().GetSpaceResponse(hyperparameters=to_proto(self.oracle.get_space()))

    def GetTrial(self, request, context):  # noqa: N802
        return protos.get_service().GetTrialResponse(trial=to_proto(self.oracle.get_trial(request.trial_id)))

    def CreateTrial(self, request, context):  # noqa: N802
        trial = self.chief.create_trial(request.tuner_id)
        return protos.get_service().CreateTrialResponse(trial=to_proto(trial))

    def UpdateTrial(self, request, context):  # noqa: N802
        with self.chief.lock:
            record = self.oracle.trials.get(request.trial_id)
            if not self.chief._open(request.trial_id):  # a late report of an ended trial
                trial = record or trial_module.Trial(self.oracle.get_space(), trial_id=request.trial_id)
            else:
                trial = self.oracle.update_trial(request.trial_id, dict(request.metrics), step=request.step)
        return protos.get_service().UpdateTrialResponse(trial=to_proto(trial))

    def EndTrial(self, request, context):  # noqa: N802
        self.chief.end_trial(trial_module.Trial.from_proto(request.trial))
        return protos.get_service().EndTrialResponse()


def _extra_handlers(chief: Chief, hello: dict[str, Any]) -> grpc.GenericRpcHandler:
    """Our three calls beside keras-tuner's: JSON in, JSON out (Files: packed bytes in)."""

    def run(request: bytes, context) -> bytes:
        return json.dumps(hello).encode()

    def heartbeat(request: bytes, context) -> bytes:
        body = json.loads(request)
        return json.dumps(chief.heartbeat(body["tuner_id"], body.get("trial_id"))).encode()

    def files(request: bytes, context) -> bytes:
        chief.write_files(request)
        return b"{}"

    handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in
                (("Run", run), ("Heartbeat", heartbeat), ("Files", files))}
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def serve(search: PreparedSearch, settings: ChiefSettings, log=sys.stdout) -> list[dict[str, Any]]:
    """Serves the search until every trial has ended; starts and watches ``settings.workers`` local workers.

    Returns:
        The rows of trials.csv.

    Raises:
        UserError: the port cannot be bound, every worker is gone, or the
            search stopped after consecutive failures.
    """
    chief = Chief(search, settings, log)
    search.oracle.verbose = 0  # keras-tuner's trial tables: the chief prints one line per trial instead
    hello = {"run": search.run, "trials": search.trials, "fingerprint": data_fingerprint(search.data),
             "heartbeat_s": max(1.0, settings.worker_timeout_s / 4)}
    # no SO_REUSEPORT: a second chief on the same port must fail, not share the port with the first
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=GRPC_OPTIONS + [("grpc.so_reuseport", 0)])
    protos.get_service_grpc().add_OracleServicer_to_server(_Servicer(chief), server)
    server.add_generic_rpc_handlers((_extra_handlers(chief, hello),))
    try:
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    except RuntimeError:
        port = 0
    if not port:
        raise UserError(f"cannot listen on {settings.host}:{settings.port} (in use, or not an address of this "
                        "machine): give another --port, or --port 0 for any free one")
    server.start()
    chief._say(f"chief: serving {search.out} on {settings.host}:{port} "
               f"(workers: KERASTUNER_ORACLE_IP=<this host> KERASTUNER_ORACLE_PORT={port} "
               "KERASTUNER_TUNER_ID=<unique name> python -m pipeline worker)")
    search.tuner.save()  # tuner and oracle state: a restarted chief reloads them
    search.write_results()
    local = _start_workers(search, settings, port, chief) if settings.workers else {}
    try:
        _watch(chief, local)
    finally:
        deadline = time.monotonic() + STOP_GRACE_S
        while chief.done() and time.monotonic() < deadline and chief.oracle.tuner_ids \
                and any(p.poll() is None for p, _ in local.values()):
            time.sleep(0.2)  # idle workers hear "stop" on their next ask
        _stop_workers(local)
        server.stop(grace=1)
    if chief.failure is not None:
        raise chief.failure
    rows = search.write_results()
    chief._say(f"done: {len(rows)} trials in {search.out}; {search.summary(rows)}")
    return rows


def _watch(chief: Chief, local: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    """The chief's loop: reaps lost workers, notices local ones that exit, stops when all is done."""
    exited: dict[str, str] = {}
    while not chief.done():
        time.sleep(POLL_S)
        for tuner_id, (proc, log_path) in local.items():
            if tuner_id not in exited and proc.poll() is not None:
                exited[tuner_id] = _exit_reason(proc.returncode)
                chief._say(f"{tuner_id}: {exited[tuner_id]} (its log: {log_path})")
                chief.lose(tuner_id, f"its process {exited[tuner_id]}")
        chief.reap()
        if chief.done():
            break
        silent = time.monotonic() - chief.last_worker_at
        if local and len(exited) == len(local) and silent > chief.settings.worker_timeout_s:
            detail = ", ".join(f"{t} {r}" for t, r in exited.items())
            raise UserError(f"all {len(local)} local workers stopped before the search ended ({detail}; logs in "
                            f"{chief.search.out / 'workers'}): run the same command again to resume")
        if silent > chief.settings.idle_timeout_s:
            raise UserError(f"no worker has been heard from for {silent:.0f} s (--idle-timeout "
                            f"{chief.settings.idle_timeout_s:g}) with trials left: start workers, or run the "
                            "same command again later to resume")


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _start_workers(search: PreparedSearch, settings: ChiefSettings, port: int,
                   chief: Chief) -> dict[str, tuple[subprocess.Popen, Path]]:
    """Starts ``settings.workers`` worker processes on this machine, each logging to OUT/workers/<id>.log."""
    logs = search.out / "workers"
    logs.mkdir(exist_ok=True)
    threads = settings.threads or max(1, (os.cpu_count() or 1) // settings.workers)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "[::]") else settings.host
    procs = {}
    for index in range(settings.workers):
        tuner_id = f"worker{index}"
        env = os.environ | {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": host,
                            "KERASTUNER_ORACLE_PORT": str(port)}
        work = Path(tempfile.mkdtemp(prefix=f"sparse-{tuner_id}-"))
        log_path = logs / f"{tuner_id}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker", "--data-dir", search.run["data_dir"],
                 "--work-dir", str(work), "--threads", str(threads), "--remove-work-dir",
                 "--parent-pid", str(os.getpid())],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs[tuner_id] = (proc, log_path)
        chief._say(f"{tuner_id}: started, pid {proc.pid}, {threads} TensorFlow thread(s)")
    return procs


def _stop_workers(local: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    for proc, _ in local.values():
        if proc.poll() is None:
            proc.terminate()
    for proc, _ in local.values():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
