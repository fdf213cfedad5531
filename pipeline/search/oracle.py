"""SpArSe's multi-objective Bayesian optimisation as a keras-tuner Oracle.

Random scalarisation (Paria et al. 2019, as used by SpArSe): every trial
draws fresh weights lambda from the simplex and proposes the candidate that
minimises the Chebyshev scalarisation ``max_k lambda_k f_k``. Only the error
is unknown before training, so only it has a surrogate (a Gaussian process
over the encoded hyperparameters, scored by its lower confidence bound);
model size and working memory are computed exactly for every candidate, and
a candidate that breaks the budget is never proposed.

The normalised objectives, shared with the hypervolume, all lie in [0, 1]
for a feasible model: ``error``, ``log(MS) / log(flash budget)`` and
``log(WM) / log(RAM budget)``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import keras_tuner
import numpy as np
from keras_tuner.engine import trial as trial_module

from pipeline.errors import UserError

# values -> {"model_size_bytes": .., "working_memory_bytes": .., "feasible": bool}
CostFunction = Callable[[Mapping[str, Any]], dict]
OBJECTIVES = ("error", "model_size", "working_memory")
MAX_SEED = 2**32 - 1
# keras-tuner seeds each random value with a counter that starts at the seed and steps by one, so
# seeds n and n + 1 drew the same candidates one value apart; each seed gets its own stretch instead
SEED_STREAM_SPACING = 2**20


def check_seed(seed: int) -> int:
    """Returns ``seed`` when it is a whole number from 0 to 2^32 - 1; UserError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed} is not allowed: give a whole number from 0 to {MAX_SEED:,}")
    return seed


class ReproducibleOracle(keras_tuner.Oracle):
    """What every optimiser of ours adds to a keras-tuner Oracle.

    * The seed given is the seed used. keras-tuner does ``seed or random``,
      so seed 0 became a different random seed every run; here it is pinned
      after the base class has run (and, for keras-tuner's Bayesian oracle,
      its random state and GP are made again from it).
    * Seeds give disjoint random streams: keras-tuner's counter started at the
      seed, so the random candidates of seeds 5 and 6 were the same ones,
      shifted by one value; here seed n starts at n x 2^20 (seed 0 unchanged).
    * Trial ids are plain decimal strings ("0", "1", ... "19"), whatever
      ``max_trials`` is. keras-tuner pads them to the width of max_trials,
      so a resumed search with more trials mixed "3" and "05". A run whose
      ids are already padded (made before this rule) keeps its width.
    * A trial that ends the search (too many consecutive failures) is still
      recorded as ended: keras-tuner raises before it saves the trial.
    * When every trial has been handed out but another tuner still runs one,
      a tuner that asks is told to wait (IDLE), not to stop, so that a trial
      whose worker died (sent back for a retry) still finds a worker.
    """

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, seed=check_seed(seed), **kwargs)
        self.seed = seed
        self._seed_state = seed * SEED_STREAM_SPACING
        if hasattr(self, "_make_gpr"):  # keras_tuner.oracles.BayesianOptimizationOracle
            self._random_state = np.random.RandomState(seed)
            self.gpr = self._make_gpr()

    def next_trial_id(self) -> str:
        """The id the next new trial gets."""
        width = max((len(t) for t in self.trials if len(t) > 1 and t.startswith("0")), default=1)
        return f"{len(self.trials):0{width}d}"

    @keras_tuner.synchronized
    def create_trial(self, tuner_id: str) -> trial_module.Trial:
        """keras-tuner's create_trial with our trial ids (see the class docstring)."""
        if tuner_id in self.ongoing_trials:
            return self.ongoing_trials[tuner_id]
        self.tuner_ids.add(tuner_id)
        if self._retry_queue:
            return super().create_trial(tuner_id)
        trial_id = self.next_trial_id()
        if self.max_trials and len(self.trials) >= self.max_trials:
            # Every trial is handed out. While another tuner still runs one, this tuner waits
            # (IDLE) instead of leaving: that trial may come back for a retry if its worker dies.
            busy = any(other != tuner_id for other in self.ongoing_trials)
            status = trial_module.TrialStatus.IDLE if busy else trial_module.TrialStatus.STOPPED
            response = {"status": status, "values": None}
        else:
            response = self.populate_space(trial_id)
        hyperparameters = self.hyperparameters.copy()
        hyperparameters.values = response.get("values") or {}
        trial = trial_module.Trial(hyperparameters=hyperparameters, trial_id=trial_id,
                                   status=response["status"])
        if trial.status == trial_module.TrialStatus.RUNNING:
            self._record_values(trial)
            self.ongoing_trials[tuner_id] = trial
            self.trials[trial_id] = trial
            self.start_order.append(trial_id)
            self._save_trial(trial)
            self.save()
            self._display.on_trial_begin(trial)
        elif trial.status == trial_module.TrialStatus.STOPPED:
            self.tuner_ids.discard(tuner_id)
        return trial

    @keras_tuner.synchronized
    def end_trial(self, trial: trial_module.Trial) -> None:
        """keras-tuner's end_trial; when it stops the search, the trial is saved as ended first."""
        try:
            super().end_trial(trial)
        except RuntimeError:
            ended = self.trials[trial.trial_id]
            self._save_trial(ended)
            self.save()
            for tuner_id, ongoing in list(self.ongoing_trials.items()):
                if ongoing.trial_id == ended.trial_id:
                    self.ongoing_trials.pop(tuner_id)
            raise


class RandomOracle(ReproducibleOracle, keras_tuner.oracles.RandomSearchOracle):
    """keras-tuner's random search with our seed, trial ids and failure records."""


class KerasTunerBayesianOracle(ReproducibleOracle, keras_tuner.oracles.BayesianOptimizationOracle):
    """keras-tuner's BayesianOptimization with our seed, trial ids and failure records.

    Its optimum of the acquisition can repeat a trial already handed out
    (two workers asking before anything new has finished); such a proposal
    is replaced by a random one, as keras-tuner's random phase never repeats.
    """

    def populate_space(self, trial_id: str) -> dict:  # noqa: D102
        response = super().populate_space(trial_id)
        values = response.get("values")
        if values is not None and self._duplicate(values):
            return self._random_populate_space()
        return response


def normalised_objectives(error: float, model_size_bytes: float, working_memory_bytes: float,
                          max_flash: int, max_ram: int) -> dict[str, float]:
    """The three minimised objectives on a common [0, 1] scale (for feasible models)."""
    return {"error": float(error),
            "model_size": math.log(max(model_size_bytes, 1)) / math.log(max_flash),
            "working_memory": math.log(max(working_memory_bytes, 1)) / math.log(max_ram)}


class SparseOracle(ReproducibleOracle):
    """Random-scalarisation Bayesian optimisation with exact resource objectives.

    Args:
        cost_fn: computes a candidate's MS, WM and feasibility from its values.
        max_flash: model-size budget in bytes.
        max_ram: working-memory budget in bytes.
        num_initial_points: random feasible trials before the surrogate is used.
        num_candidates: random feasible candidates scored per proposal.
        kappa: exploration weight of the lower confidence bound on the error.
        **kwargs: passed to ReproducibleOracle (max_trials, seed, ...).
    """

    def __init__(self, cost_fn: CostFunction, max_flash: int, max_ram: int,
                 num_initial_points: int = 3, num_candidates: int = 300, kappa: float = 1.0,
                 **kwargs):
        super().__init__(objective=keras_tuner.Objective("error", "min"), **kwargs)
        self.cost_fn = cost_fn
        self.max_flash = max_flash
        self.max_ram = max_ram
        self.num_initial_points = num_initial_points
        self.num_candidates = num_candidates
        self.kappa = kappa
        self.last_lambda: list[float] | None = None

    def populate_space(self, trial_id: str) -> dict:
        """Proposes the next trial's values (random at first, then by scalarised BO)."""
        self.update_space(self.hyperparameters)
        done = self._finished_feasible()
        if len(done) < self.num_initial_points:
            values = self._random_feasible()
        else:
            values = self._propose(done, int(trial_id))
        if values is None:
            return {"status": trial_module.TrialStatus.STOPPED, "values": None}
        return {"status": trial_module.TrialStatus.RUNNING, "values": values}

    def _finished_feasible(self) -> list[trial_module.Trial]:
        return [t for t in self.trials.values()
                if t.status == trial_module.TrialStatus.COMPLETED and t.metrics.exists("feasible")
                and t.metrics.get_last_value("feasible") > 0]

    def _random_feasible(self, attempts: int = 200) -> dict | None:
        last = None
        for _ in range(attempts):
            values = self._random_values()
            if values is None:
                return last
            last = values
            if self.cost_fn(values)["feasible"]:
                return values
        return last

    def _propose(self, done: list[trial_module.Trial], index: int) -> dict | None:
        rng = np.random.default_rng([self.seed, index])
        weights = rng.dirichlet(np.ones(len(OBJECTIVES)))
        self.last_lambda = [float(w) for w in weights]
        x = np.array([self._encode(t.hyperparameters.values) for t in done])
        y = np.array([t.metrics.get_last_value("error") for t in done])
        surrogate = _fit_gp(x, y, seed=int(rng.integers(1 << 31)))
        candidates, encoded, costs = [], [], []
        for _ in range(self.num_candidates):
            values = self._random_values()
            if values is None:
                break
            cost = self.cost_fn(values)
            if cost["feasible"]:
                candidates.append(values)
                encoded.append(self._encode(values))
                costs.append(cost)
        if not candidates:
            return self._random_feasible()
        mean, std = surrogate.predict(np.array(encoded), return_std=True)
        best, best_score = None, math.inf
        for values, mu, sigma, cost in zip(candidates, mean, std, costs):
            f = normalised_objectives(max(0.0, mu - self.kappa * sigma), cost["model_size_bytes"],
                                      cost["working_memory_bytes"], self.max_flash, self.max_ram)
            score = max(w * f[k] for w, k in zip(weights, OBJECTIVES))
            if score < best_score:
                best, best_score = values, score
        return best

    def _encode(self, values: Mapping[str, Any]) -> list[float]:
        """Hyperparameters to [0, 1]^d; an inactive parameter encodes as 0."""
        out = []
        for hp in self.hyperparameters.space:
            if hp.name in values and values[hp.name] is not None:
                out.append(float(hp.value_to_prob(values[hp.name])))
            else:
                out.append(0.0)
        return out

    def get_state(self) -> dict:  # noqa: D102
        state = super().get_state()
        state.update(num_initial_points=self.num_initial_points, num_candidates=self.num_candidates,
                     kappa=self.kappa, max_flash=self.max_flash, max_ram=self.max_ram,
                     last_lambda=self.last_lambda)
        return state

    def set_state(self, state: dict) -> None:  # noqa: D102
        super().set_state(state)
        self.num_initial_points = state["num_initial_points"]
        self.num_candidates = state["num_candidates"]
        self.kappa = state["kappa"]
        self.max_flash = state["max_flash"]
        self.max_ram = state["max_ram"]
        self.last_lambda = state["last_lambda"]


def _fit_gp(x: np.ndarray, y: np.ndarray, seed: int):
    """A Matern-5/2 GP with a noise term on the observed errors."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = ConstantKernel(1.0) * Matern(length_scale=np.ones(x.shape[1]), nu=2.5) + WhiteKernel(1e-3)
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=seed,
                                  n_restarts_optimizer=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on a handful of points
        gp.fit(x, y)
    return gp
