"""SpArSe's multi-objective Bayesian optimisation as a keras-tuner Oracle.

Random scalarisation (Paria et al. 2019, as used by SpArSe): every trial
draws fresh weights lambda from the simplex and proposes the candidate that
minimises the Chebyshev scalarisation ``max_k lambda_k f_k``. Only the error
is unknown before training, so only it has a surrogate (a Gaussian process
over the encoded hyperparameters and the exact log MS and log WM, scored by
its lower confidence bound);
model size and working memory are computed exactly for every candidate, and
a candidate that breaks the budget is never proposed.

The normalised objectives, shared with the hypervolume, all lie in [0, 1]
for a feasible model above the accuracy floor: ``error / (1 - floor)``,
``log(MS) / log(flash budget)`` and ``log(WM) / log(RAM budget)``. Scaling the
error to the span above the floor is what makes a point of accuracy near the
top weigh about as much as halving a model: with the default floor on a
two-class problem (80 %), one point is 0.05 on the error axis and halving MS
on a 1.5 MB flash budget is 0.049 on the size axis. Without a floor (floor 0)
one point was 0.01, and the search was pulled toward tiny, useless models.

The floor is a constraint like RAM and flash (``floor - accuracy <= 0``); before
training, the surrogate's predictive distribution says how likely a candidate
is to clear it, and a candidate that is unlikely to is not proposed.
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
# the default accuracy floor: this fraction of the way from chance (the largest class's share) to 100 %
FLOOR_FRACTION_ABOVE_CHANCE = 0.6
# a candidate is proposed only when the surrogate gives it at least this chance of clearing the floor
FLOOR_CONFIDENCE = 0.1
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
    * A trial that was running when the process died is run again on reload
      even when only its own file says so: a trial's file is written before
      the oracle's, and keras-tuner retries only the oracle's ongoing trials,
      so a chief killed between the two writes left that trial running forever
      and the search one trial short.
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
        """keras-tuner's end_trial; when it stops the search, the trial is saved as ended first.

        keras-tuner saves the oracle before it takes the trial off the ongoing
        list, so a process killed right after a trial ended came back with that
        trial still "ongoing" and ran it again; the oracle is saved once more here.
        """
        try:
            super().end_trial(trial)
            self.save()
        except RuntimeError:
            ended = self.trials[trial.trial_id]
            self._save_trial(ended)
            self.save()
            for tuner_id, ongoing in list(self.ongoing_trials.items()):
                if ongoing.trial_id == ended.trial_id:
                    self.ongoing_trials.pop(tuner_id)
            raise

    def reload(self) -> None:  # noqa: D102
        super().reload()  # the oracle's ongoing trials go to the retry queue
        for trial_id, trial in self.trials.items():  # started in its own file, not yet in the oracle's
            if trial.status == trial_module.TrialStatus.RUNNING and trial_id not in self._retry_queue:
                self._retry_queue.append(trial_id)
                if trial_id not in self.start_order:
                    self.start_order.append(trial_id)

    def set_state(self, state: dict) -> None:  # noqa: D102
        super().set_state(state)
        # an oracle saved by keras-tuner between a trial's end and its leaving the ongoing list
        self.ongoing_trials = {tuner_id: t for tuner_id, t in self.ongoing_trials.items()
                               if t.status == trial_module.TrialStatus.RUNNING}


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


def default_min_accuracy(labels: np.ndarray) -> float:
    """The default accuracy floor for a dataset: 60 % of the way from chance to perfect.

    Chance is the share of the most frequent class among ``labels`` (the
    training labels), what a model that always answers that class scores.
    """
    counts = np.bincount(np.asarray(labels).astype(int).ravel())
    chance = float(counts.max() / counts.sum())
    return round(chance + FLOOR_FRACTION_ABOVE_CHANCE * (1.0 - chance), 4)


def check_min_accuracy(value: float) -> float:
    """Returns ``value`` when it is an accuracy floor from 0 up to (not including) 1; UserError otherwise."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value < 1.0):
        raise UserError(f"--min-accuracy {value} is not allowed: give a fraction from 0 (no floor) up to "
                        "but not including 1, e.g. 0.8, or leave it out for the dataset's default")
    return float(value)


def normalised_objectives(error: float, model_size_bytes: float, working_memory_bytes: float,
                          max_flash: int, max_ram: int, min_accuracy: float = 0.0) -> dict[str, float]:
    """The three minimised objectives on a common [0, 1] scale (for feasible models above the floor).

    The error is divided by the error the floor allows, ``1 - min_accuracy``,
    so a model at the floor scores 1 on that axis and one below it more.
    """
    return {"error": float(error) / (1.0 - min_accuracy),
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
        min_accuracy: the accuracy floor; once the surrogate is used, a candidate
            whose chance of clearing it is below FLOOR_CONFIDENCE is not proposed.
        morphism_trials: the length of the third stage: the last this many trials
            are network morphisms of Pareto models (:mod:`pipeline.search.morphism`).
        morphisms_of: a parent's values -> the morphisms it allows.
        **kwargs: passed to ReproducibleOracle (max_trials, seed, ...).
    """

    def __init__(self, cost_fn: CostFunction, max_flash: int, max_ram: int,
                 num_initial_points: int = 3, num_candidates: int = 300, kappa: float = 1.0,
                 min_accuracy: float = 0.0, morphism_trials: int = 0,
                 morphisms_of: Callable[[Mapping[str, Any]], list] | None = None, **kwargs):
        super().__init__(objective=keras_tuner.Objective("error", "min"), **kwargs)
        self.cost_fn = cost_fn
        self.max_flash = max_flash
        self.max_ram = max_ram
        self.num_initial_points = num_initial_points
        self.num_candidates = num_candidates
        self.kappa = kappa
        self.min_accuracy = min_accuracy
        self.morphism_trials = morphism_trials
        self.morphisms_of = morphisms_of
        self.morphs: dict[str, dict[str, Any]] = {}  # trial id -> its parent and morphism
        self._features_of: dict[str, list[float]] = {}  # trial id -> surrogate inputs (values are fixed)
        self.last_lambda: list[float] | None = None

    def populate_space(self, trial_id: str) -> dict:
        """Proposes the next trial's values (random at first, then by scalarised BO)."""
        self.update_space(self.hyperparameters)
        done = self._finished_feasible()
        values = None
        if len(done) < self.num_initial_points:
            values = self._random_feasible()
        elif self.morphism_trials and len(self.trials) >= (self.max_trials or 0) - self.morphism_trials:
            values = self._morph(trial_id)
        if values is None and len(done) >= self.num_initial_points:
            values = self._propose(done, int(trial_id))
        if values is None:
            return {"status": trial_module.TrialStatus.STOPPED, "values": None}
        return {"status": trial_module.TrialStatus.RUNNING, "values": values}

    def _morph(self, trial_id: str) -> dict | None:
        """The morphism stage: a random allowed morphism of a random Pareto model (None: none allowed)."""
        from pipeline.search import pareto

        trained = [t for t in self.trials.values() if t.status == trial_module.TrialStatus.COMPLETED
                   and t.metrics.exists("int8_accuracy") and t.metrics.get_last_value("feasible") > 0
                   and t.metrics.get_last_value("int8_accuracy") >= self.min_accuracy]
        points = [{k: t.metrics.get_last_value(k) for k in ("error", "model_size_bytes", "working_memory_bytes")}
                  for t in trained]
        mask = pareto.pareto_mask(points, ("error", "model_size_bytes", "working_memory_bytes"))
        parents = [t for t, on in zip(trained, mask) if on]
        rng = np.random.default_rng([self.seed, int(trial_id), 3])
        for parent in rng.permutation(np.array(parents, dtype=object)) if parents else []:
            allowed = [m for m in self.morphisms_of(parent.hyperparameters.values)
                       if self.cost_fn(m.values)["feasible"] and not self._duplicate(dict(m.values))]
            if allowed:
                chosen = allowed[int(rng.integers(len(allowed)))]
                self.morphs[trial_id] = {"parent": parent.trial_id, "kind": chosen.kind, "block": chosen.block,
                                         "layer": chosen.layer, "side": chosen.side}
                return dict(chosen.values)
        return None

    def _finished_feasible(self) -> list[trial_module.Trial]:
        """Trials whose error was measured: trained within the budget, or stopped early (their error then)."""
        return [t for t in self.trials.values()
                if t.status == trial_module.TrialStatus.COMPLETED and t.metrics.exists("feasible")
                and (t.metrics.get_last_value("feasible") > 0 or t.metrics.exists("stopped_at_epoch"))]

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
        x = np.array([self._trial_features(t) for t in done])
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
                encoded.append(self._features(values, cost))
                costs.append(cost)
        if not candidates:
            return self._random_feasible()
        mean, std = surrogate.predict(np.array(encoded), return_std=True)
        clears = _chance_below(1.0 - self.min_accuracy, mean, std)
        if self.min_accuracy > 0:  # the floor as a constraint; when no candidate is likely to clear
            keep = clears >= min(FLOOR_CONFIDENCE, float(clears.max()))  # it, the likeliest ones
            candidates = [c for c, k in zip(candidates, keep) if k]
            costs = [c for c, k in zip(costs, keep) if k]
            mean, std = mean[keep], std[keep]
        best, best_score = None, math.inf
        for values, mu, sigma, cost in zip(candidates, mean, std, costs):
            f = normalised_objectives(max(0.0, mu - self.kappa * sigma), cost["model_size_bytes"],
                                      cost["working_memory_bytes"], self.max_flash, self.max_ram,
                                      self.min_accuracy)
            score = max(w * f[k] for w, k in zip(weights, OBJECTIVES))
            if score < best_score:
                best, best_score = values, score
        return best

    def _trial_features(self, trial: trial_module.Trial) -> list[float]:
        """A finished trial's surrogate inputs, worked out once (its costs need the schedule solved)."""
        if trial.trial_id not in self._features_of:
            values = trial.hyperparameters.values
            self._features_of[trial.trial_id] = self._features(values, self.cost_fn(values))
        return self._features_of[trial.trial_id]

    def _features(self, values: Mapping[str, Any], cost: Mapping[str, Any]) -> list[float]:
        """The surrogate's inputs: the encoded values, then log MS and log WM as the objectives scale them.

        Accuracy depends on size far more directly than on any one
        hyperparameter, and both sizes are exact before training.
        """
        sizes = normalised_objectives(0.0, cost["model_size_bytes"], cost["working_memory_bytes"],
                                      self.max_flash, self.max_ram)
        return self._encode(values) + [sizes["model_size"], sizes["working_memory"]]

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
                     last_lambda=self.last_lambda, min_accuracy=self.min_accuracy,
                     morphism_trials=self.morphism_trials, morphs=self.morphs)
        return state

    def set_state(self, state: dict) -> None:  # noqa: D102
        super().set_state(state)
        self.num_initial_points = state["num_initial_points"]
        self.num_candidates = state["num_candidates"]
        self.kappa = state["kappa"]
        self.max_flash = state["max_flash"]
        self.max_ram = state["max_ram"]
        self.last_lambda = state["last_lambda"]
        self.min_accuracy = state.get("min_accuracy", 0.0)
        self.morphism_trials = state.get("morphism_trials", 0)
        self.morphs = state.get("morphs", {})


def _chance_below(limit: float, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """P(error <= limit) under the surrogate's normal predictive distribution, per candidate."""
    z = (limit - mean) / np.maximum(std, 1e-9)
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


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
