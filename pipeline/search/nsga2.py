"""Optuna's NSGA-II sampler as a keras-tuner Oracle, for comparing optimisers on equal terms.

The sampler sees our search space (keras-tuner's conditional parameters asked
define-by-run: a parameter is asked only when its parents make it active),
the same trial function, and the same named objectives as the hypervolume:
``error / (1 - floor)``, ``log MS / log flash`` and ``log WM / log RAM``.
Constraints follow Optuna's convention (<= 0 feasible): the resource budget
(``1 - feasible``) and the accuracy floor (``floor - accuracy``), so the floor
steers its selection as it steers our oracle's proposals.

The study lives in memory; a resumed search tells it the ended trials again,
in trial order, before asking for the next one.
"""
from __future__ import annotations

import warnings

import keras_tuner
import optuna
from keras_tuner.engine import hyperparameters as hp_module
from keras_tuner.engine import trial as trial_module

from pipeline.search.oracle import OBJECTIVES, ReproducibleOracle, normalised_objectives

CONSTRAINTS_ATTR = "constraints"


def population_size(trials: int) -> int:
    """NSGA-II's generation size for a budget of ``trials``: about a third of it, from 4 to 50."""
    return max(4, min(50, trials // 3))


def _distribution(hp) -> optuna.distributions.BaseDistribution:
    """Optuna's distribution for one keras-tuner hyperparameter."""
    if isinstance(hp, hp_module.Boolean):
        return optuna.distributions.CategoricalDistribution([False, True])
    if isinstance(hp, hp_module.Choice):
        return optuna.distributions.CategoricalDistribution(list(hp.values))
    if isinstance(hp, hp_module.Int):
        return optuna.distributions.IntDistribution(hp.min_value, hp.max_value, step=hp.step or 1)
    if isinstance(hp, hp_module.Float):
        log = hp.sampling == "log"
        return optuna.distributions.FloatDistribution(hp.min_value, hp.max_value, log=log)
    raise TypeError(f"hyperparameter {hp.name!r} of type {type(hp).__name__} has no Optuna distribution")


def _suggest(asked: optuna.Trial, hp):
    """Asks ``asked`` for a value of ``hp`` over its Optuna distribution."""
    d = _distribution(hp)
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return asked.suggest_categorical(hp.name, d.choices)
    if isinstance(d, optuna.distributions.IntDistribution):
        return asked.suggest_int(hp.name, d.low, d.high, step=d.step)
    return asked.suggest_float(hp.name, d.low, d.high, log=d.log)


def _constraints(frozen: optuna.trial.FrozenTrial) -> list[float]:
    return list(frozen.user_attrs.get(CONSTRAINTS_ATTR, [1.0, 1.0]))


class NSGA2Oracle(ReproducibleOracle):
    """Optuna's multi-objective NSGA-II sampler proposing our candidates.

    Args:
        max_flash: model-size budget in bytes (normalises log MS).
        max_ram: working-memory budget in bytes (normalises log WM).
        min_accuracy: the accuracy floor, one of the sampler's constraints.
        **kwargs: passed to ReproducibleOracle (max_trials, seed, ...).
    """

    def __init__(self, max_flash: int, max_ram: int, min_accuracy: float = 0.0, **kwargs):
        super().__init__(objective=keras_tuner.Objective("error", "min"), **kwargs)
        self.max_flash = max_flash
        self.max_ram = max_ram
        self.min_accuracy = min_accuracy
        self._study: optuna.Study | None = None
        self._asked: dict[str, optuna.Trial] = {}

    def _make_study(self) -> optuna.Study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # constraints_func
        sampler = optuna.samplers.NSGAIISampler(population_size=population_size(self.max_trials or 20),
                                                seed=self.seed, constraints_func=_constraints)
        study = optuna.create_study(directions=["minimize"] * len(OBJECTIVES), sampler=sampler)
        study.set_metric_names(list(OBJECTIVES))
        ended = sorted((t for t in self.trials.values() if t.status in (
            trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.FAILED)), key=lambda t: int(t.trial_id))
        for trial in ended:  # a resumed search: ask again as before and tell what was found, in order
            asked, values = self._ask(study)
            record = self._record(trial)
            if values == {k: v for k, v in trial.hyperparameters.values.items() if k in values}:
                asked.set_user_attr(CONSTRAINTS_ATTR, record.user_attrs[CONSTRAINTS_ATTR])
                study.tell(asked, record.values, state=record.state)
            else:  # the sampler drew otherwise this time: the record itself is what it learns from
                study.tell(asked, state=optuna.trial.TrialState.FAIL)
                study.add_trial(record)
        return study

    def _ask(self, study: optuna.Study) -> tuple[optuna.Trial, dict]:
        """One candidate from the sampler, asked one active parameter at a time."""
        asked = study.ask()
        hps = self.hyperparameters.copy()
        hps.values = {}
        for hp in self.hyperparameters.space:
            if hps.is_active(hp):
                hps.values[hp.name] = _suggest(asked, hp)
        return asked, dict(hps.values)

    def populate_space(self, trial_id: str) -> dict:
        """Asks the sampler for the next candidate."""
        if self._study is None:
            self._study = self._make_study()
        asked, values = self._ask(self._study)
        self._asked[trial_id] = asked
        return {"status": trial_module.TrialStatus.RUNNING, "values": values}

    @keras_tuner.synchronized
    def end_trial(self, trial: trial_module.Trial) -> None:
        """Ends the trial in keras-tuner, then tells the sampler its objectives and constraints."""
        try:
            super().end_trial(trial)
        finally:
            ended = self.trials.get(trial.trial_id)
            asked = self._asked.pop(trial.trial_id, None)
            if ended is not None and ended.status != trial_module.TrialStatus.RUNNING and self._study is not None:
                record = self._record(ended)
                if asked is None:
                    self._study.add_trial(record)
                else:
                    asked.set_user_attr(CONSTRAINTS_ATTR, record.user_attrs[CONSTRAINTS_ATTR])
                    self._study.tell(asked, record.values, state=record.state)

    def _record(self, trial: trial_module.Trial) -> optuna.trial.FrozenTrial:
        """An ended keras-tuner trial as an Optuna trial: its active values, objectives and constraints."""
        values = trial.hyperparameters.values
        space = {hp.name: hp for hp in self.hyperparameters.space}
        params = {k: v for k, v in values.items() if k in space and v is not None}
        distributions = {k: _distribution(space[k]) for k in params}
        metric = lambda name: (trial.metrics.get_last_value(name)  # noqa: E731
                               if trial.metrics.exists(name) else None)
        if trial.status != trial_module.TrialStatus.COMPLETED or metric("error") is None:
            return optuna.trial.create_trial(params=params, distributions=distributions,
                                             state=optuna.trial.TrialState.FAIL,
                                             user_attrs={CONSTRAINTS_ATTR: [1.0, 1.0]})
        norm = normalised_objectives(metric("error"), metric("model_size_bytes"), metric("working_memory_bytes"),
                                     self.max_flash, self.max_ram, self.min_accuracy)
        accuracy_constraint = self.min_accuracy - (1.0 - metric("error"))
        constraints = [1.0 - float(metric("feasible") or 0.0), accuracy_constraint]
        return optuna.trial.create_trial(params=params, distributions=distributions,
                                         values=[norm[k] for k in OBJECTIVES],
                                         user_attrs={CONSTRAINTS_ATTR: constraints})

    def get_state(self) -> dict:  # noqa: D102
        state = super().get_state()
        state.update(max_flash=self.max_flash, max_ram=self.max_ram, min_accuracy=self.min_accuracy)
        return state

    def set_state(self, state: dict) -> None:  # noqa: D102
        super().set_state(state)
        self.max_flash = state["max_flash"]
        self.max_ram = state["max_ram"]
        self.min_accuracy = state["min_accuracy"]
        self._study = None  # rebuilt from the trials on the next proposal
