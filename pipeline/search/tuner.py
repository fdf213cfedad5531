"""The trial loop: a keras-tuner BaseTuner whose run_trial measures the shipped model.

One trial: decode the values; compute exact MS/WM of the pruned architecture
and stop there if it breaks the budget (never trained); otherwise train,
prune, convert to int8, and read every objective back from the flatbuffer:
MS and WM from its weights and tensors, the arena from host TFLite Micro,
and the int8 accuracy by running the validation set through TFLite Micro.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from keras_tuner.engine import base_tuner
from keras_tuner.engine import trial as trial_module
from keras_tuner.errors import FailedTrialError

from pipeline.compress import tflite_model
from pipeline.compress.training import TrainingSettings, finetune_candidate, train_candidate
from pipeline.datasets import Dataset
from pipeline.deploy.engine_costs import EngineCost
from pipeline.errors import UserError
from pipeline.search import costs, early_stopping
from pipeline.search.architecture import decode, plan
from pipeline.search.latency import load_latency_model
from pipeline.search.oracle import normalised_objectives

MODEL_FILE = "model_int8.tflite"
KERAS_FILE = "model_float.h5"  # HDF5: the .keras format cannot reload QAT models


@dataclasses.dataclass(frozen=True)
class Budget:
    """Resource budget, in bytes: the model's (WM, MS) and, with an engine, the whole board's."""

    max_ram: int
    max_flash: int
    engine: EngineCost | None = None  # what the engine adds on the board; None: the model alone
    board_ram: int = 0
    board_flash: int = 0
    core: str = ""  # the board's core: predicts the AOT engine's instructions per inference
    max_latency_instructions: int = 0  # --max-latency-ms at the board's clock; 0: no latency budget


def analytical_costs(values: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int,
                     budget: Budget) -> dict:
    """Exact MS and WM of a candidate after its pruning targets, and whether it fits the budget.

    See :func:`resource_costs` for the constraints; the AOT arena
    (:func:`pipeline.search.costs.arena_plan`, at least WM) is only worked out when
    WM itself fits.
    """
    arch, compression = decode(values, input_shape, num_classes)
    graph = costs.graph_from_plan(plan(arch.with_channel_keep(compression.block_channel_keep)),
                                  compression)
    return resource_costs(graph, budget)


def resource_costs(graph: costs.ResourceGraph, budget: Budget, flatbuffer: bytes | None = None) -> dict:
    """MS, WM, the AOT arena and the whole firmware's flash and RAM, with named constraints.

    Constraints follow Optuna's convention (<= 0 is feasible): ``model_size``
    (MS against --max-flash), ``working_memory`` (the AOT arena, at least WM,
    against --max-ram) and, with an engine, ``board_flash`` and ``board_ram``:
    the weights as that engine stores them plus the activations plus its
    measured fixed costs (:mod:`pipeline.deploy.engine_costs`) against the board;
    with a core, ``predicted_instructions`` of the AOT engine per inference
    (:mod:`pipeline.search.latency`: from the generator's layout of ``flatbuffer``, the
    converted model, when given; else estimated from the graph) and, with a latency
    budget, ``latency``.
    """
    ms = costs.model_size_bytes(graph)
    wm, order = costs.best_schedule(graph)  # solved once: WM and the order the arena is planned over
    schedule = (order, *costs.arena_plan(graph, order)) if wm <= budget.max_ram else None
    arena = schedule[1] if schedule else wm
    constraints = {"model_size": ms - budget.max_flash, "working_memory": arena - budget.max_ram}
    found = {"model_size_bytes": ms, "working_memory_bytes": wm, "aot_arena_bytes": arena}
    if budget.engine is not None:
        aot = budget.engine.engine == "aot"
        ops, channels = costs.operator_count(graph), costs.output_channels(graph)
        weights = costs.aot_weight_bytes(graph) if aot else costs.dense_weight_bytes(graph)
        found["firmware_flash_bytes"] = budget.engine.flash_needed(weights, ops, channels)
        found["firmware_ram_bytes"] = budget.engine.ram_needed(arena if aot else wm, ops, channels)
        constraints |= {"board_flash": found["firmware_flash_bytes"] - budget.board_flash,
                        "board_ram": found["firmware_ram_bytes"] - budget.board_ram}
    if budget.core:
        model = load_latency_model()
        try:
            found["predicted_instructions"] = (model.instructions(graph, budget.core, schedule) if flatbuffer is None
                                               else model.model_instructions(flatbuffer, budget.core))
        except UserError:  # an operator the AOT engine lacks (a TFLM-only model): the graph's estimate
            found["predicted_instructions"] = model.instructions(graph, budget.core, schedule)
        if budget.max_latency_instructions:
            constraints["latency"] = found["predicted_instructions"] - budget.max_latency_instructions
    return found | {"constraints": constraints, "feasible": all(c <= 0 for c in constraints.values())}


class SparseTuner(base_tuner.BaseTuner):
    """Runs trials for any oracle (sparse, random, kt-bayes) and reports every objective by name.

    Args:
        oracle: the search algorithm.
        hypermodel: a SparseHyperModel (declares the space).
        dataset: the data; only its train and validation splits are used.
        epochs: epoch budget of one trial.
        budget: the board's resource budget.
        seed: base seed; trial i trains with seed + i.
        on_trial_done: called after every trial (writes results, moves the progress bar).
        min_accuracy: the accuracy floor (its constraint in the metrics; see the oracle).
        early_stop: stop hopeless trials at their rungs (:mod:`pipeline.search.early_stopping`);
            needs the oracle in this process.
        morphism_epochs: fine-tuning epochs of a morphed child (the oracle's third stage).
        **kwargs: directory and project_name for keras-tuner.
    """

    def __init__(self, oracle, hypermodel, dataset: Dataset, epochs: int, budget: Budget, seed: int,
                 on_trial_done: Callable[[], None] | None = None, min_accuracy: float = 0.0,
                 early_stop: bool = False, morphism_epochs: int = 1, **kwargs):
        self.dataset = dataset
        self.epochs = epochs
        self.budget = budget
        self.seed = seed
        self.on_trial_done = on_trial_done
        self.min_accuracy = min_accuracy
        self.early_stop = early_stop
        self.morphism_epochs = morphism_epochs
        self.trials_budget = 0  # the trials asked for; early stopping's saved epochs add to it
        super().__init__(oracle, hypermodel=hypermodel, **kwargs)

    def update_allowance(self, trials: int | None = None) -> None:
        """Sets the oracle's trial budget: ``trials`` plus the trials stopped trials' saved epochs pay for."""
        if trials is not None:
            self.trials_budget = trials
        stopped = [t.metrics.get_last_value("stopped_at_epoch") for t in self.oracle.trials.values()
                   if t.metrics.exists("stopped_at_epoch")]
        self.oracle.max_trials = early_stopping.trial_allowance(self.trials_budget, self.epochs,
                                                                [int(e) for e in stopped])

    def _populate_initial_space(self) -> None:
        """Declares the whole space at once (every conditional parameter included)."""
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def _try_run_and_update_trial(self, trial, *args, **kwargs) -> None:
        """As keras-tuner's, but a failed trial keeps a one-line reason, not a traceback."""
        try:
            self._run_and_update_trial(trial, *args, **kwargs)
            trial.status = trial_module.TrialStatus.COMPLETED
        except FailedTrialError as exc:
            trial.status = trial_module.TrialStatus.FAILED
            trial.message = str(exc)

    def on_trial_end(self, trial) -> None:
        """Ends the trial in the oracle, then rewrites the results, even when the oracle stops the search."""
        try:
            super().on_trial_end(trial)
        finally:
            if self.trials_budget:
                self.update_allowance()
            if self.on_trial_done:
                self.on_trial_done()

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        """Trains and measures one candidate; returns named metrics for the oracle."""
        started = time.monotonic()
        values = trial.hyperparameters.values
        data = self.dataset
        analytic = analytical_costs(values, data.input_shape, data.num_classes, self.budget)
        if not analytic["feasible"]:
            predicted = {k: analytic[k] for k in ("predicted_instructions",) if k in analytic}
            return self._metrics(1.0, analytic["model_size_bytes"], analytic["working_memory_bytes"],
                                 feasible=False, seconds=time.monotonic() - started, **predicted)
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        try:
            arch, compression = decode(values, data.input_shape, data.num_classes)
            rung_accuracies: dict[str, float] = {}
            seed = (self.seed + int(trial.trial_id)) % 2**32
            morph = getattr(self.oracle, "morphs", {}).get(trial.trial_id)
            if morph is not None:
                model = self._morphed_child(morph, values, compression, seed)
            else:
                settings = TrainingSettings.from_values(values, self.epochs)
                hook = self._rung_check(analytic, rung_accuracies) if self.early_stop else None
                model = train_candidate(arch, compression, settings, data.x_train, data.y_train, seed=seed,
                                        after_epoch=hook)
            float_accuracy = float(model.evaluate(data.x_val, data.y_val, verbose=0)[1])
            flatbuffer = tflite_model.convert_int8(model, data.x_train, seed=self.seed)
            (trial_dir / MODEL_FILE).write_bytes(flatbuffer)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save")
                model.save(trial_dir / KERAS_FILE, save_format="h5")
            arena = tflite_model.smallest_arena(flatbuffer)
            outputs = tflite_model.tflm_run(flatbuffer, tflite_model.quantize_inputs(flatbuffer, data.x_val),
                                            arena_bytes=arena)
        except early_stopping.Stopped as stop:
            return self._metrics(1.0 - stop.accuracy, analytic["model_size_bytes"],
                                 analytic["working_memory_bytes"], feasible=False,
                                 seconds=time.monotonic() - started, stopped_at_epoch=float(stop.epoch),
                                 **rung_accuracies)
        except MemoryError as exc:
            raise FailedTrialError(f"out of memory: {exc}") from exc
        except FailedTrialError:
            raise
        except Exception as exc:  # a degenerate candidate: record why and go on
            raise FailedTrialError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        int8_accuracy = float(np.mean(outputs.argmax(axis=1) == data.y_val))
        measured = resource_costs(tflite_model.resource_graph(flatbuffer), self.budget, flatbuffer)
        ms, wm = measured["model_size_bytes"], measured["working_memory_bytes"]
        firmware = {k: measured[k] for k in ("firmware_flash_bytes", "firmware_ram_bytes", "predicted_instructions")
                    if k in measured}
        return self._metrics(1.0 - int8_accuracy, ms, wm, feasible=measured["feasible"],
                             aot_arena_bytes=measured["aot_arena_bytes"], **firmware,
                             seconds=time.monotonic() - started, float_accuracy=float_accuracy,
                             int8_accuracy=int8_accuracy, sparsity=tflite_model.kernel_sparsity(flatbuffer),
                             flatbuffer_bytes=len(flatbuffer), arena_bytes=arena,
                             analytical_model_size_bytes=analytic["model_size_bytes"],
                             analytical_working_memory_bytes=analytic["working_memory_bytes"],
                             **rung_accuracies)

    def _morphed_child(self, morph: dict, values: dict, compression, seed: int):
        """The child of a morphism, built from its parent's trained weights and fine-tuned."""
        from pipeline.search import morphism
        from pipeline.search.builder import load_float_model

        data = self.dataset
        parent_dir = Path(self.get_trial_dir(morph["parent"]))
        parent_values = self.oracle.trials[morph["parent"]].hyperparameters.values
        _, parent_nodes = morphism.narrow_plan(parent_values, data.input_shape, data.num_classes)
        child_arch, child_nodes = morphism.narrow_plan(values, data.input_shape, data.num_classes)
        change = morphism.Morphism(morph["kind"], morph["block"], morph["layer"], morph["side"], values)
        weights = morphism.morph_weights(morphism.trained_weights(load_float_model(parent_dir / KERAS_FILE),
                                                                 parent_nodes),
                                         parent_nodes, child_nodes, change, seed)
        child = morphism.build_with_weights(child_arch, weights)
        settings = TrainingSettings.from_values(values, self.morphism_epochs)
        return finetune_candidate(child, child_arch, compression, settings, data.x_train, data.y_train, seed)

    def _rung_check(self, analytic: dict, record: dict[str, float]):
        """The after-epoch hook of early stopping: at each rung, measure, record, and stop if hopeless."""
        checks = set(early_stopping.rungs(self.epochs))
        data = self.dataset

        def after_epoch(epoch: int, model) -> None:
            if epoch not in checks:
                return
            accuracy = float(model.evaluate(data.x_val, data.y_val, verbose=0, batch_size=256)[1])
            record[early_stopping.rung_metric(epoch)] = accuracy
            ended = [{name: t.metrics.get_last_value(name) for name in t.metrics.metrics}
                     for t in self.oracle.trials.values() if t.status == trial_module.TrialStatus.COMPLETED]
            if early_stopping.hopeless(accuracy, analytic["model_size_bytes"], analytic["working_memory_bytes"],
                                       early_stopping.rung_records(ended, epoch)):
                raise early_stopping.Stopped(epoch, accuracy)

        return after_epoch

    def _metrics(self, error: float, ms: int, wm: int, feasible: bool, seconds: float,
                 **extra: float) -> dict[str, float]:
        norm = normalised_objectives(error, ms, wm, self.budget.max_flash, self.budget.max_ram,
                                     self.min_accuracy)
        # keras-tuner's stock BayesianOptimization minimises this weighted sum; a model that breaks
        # the budget pays 10, one below the accuracy floor (or stopped early) pays 1
        floor = 1.0 - error - self.min_accuracy
        weighted = norm["error"] + 0.5 * norm["model_size"] + 0.5 * norm["working_memory"]
        stopped = "stopped_at_epoch" in extra
        penalty = 10.0 if not (feasible or stopped) else (1.0 if stopped or floor < 0 else 0.0)
        return {"error": error, "accuracy": 1.0 - error, "model_size_bytes": float(ms),
                "working_memory_bytes": float(wm), "feasible": float(feasible),
                "weighted_sum": weighted + penalty, "seconds": seconds,
                **extra}
