"""The training loop's pieces on their own: the state's round trip through plain data, the step plan's
totals, the best-checkpoint keeper's decisions on scripted metric sequences (undefined values included),
the throughput meter with a fake clock, and where the loop leaves the state at the end of a run."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.train.meter import MeanLoss, Throughput
from tunelab.train.plan import StepPlan
from tunelab.train.state import LoopState
from tunelab.train.stopping import BestKeeper, is_minimised

# ---------------------------------------------------------------------------------------------
# LoopState: plain data a checkpoint can save


def test_state_round_trips_through_json():
    state = LoopState(step=12, epoch=1, batch_in_epoch=7, best_metric=0.8125, best_step=10,
                      best_metrics={"f1_macro": 0.8125, "loss": 0.5, "roc_auc_ovr": None,
                                    "per_class": {"a": {"f1": 0.75, "support": 4}}},
                      bad_evals=1, evals=3, evals_without_metric=1, last_eval_step=12, train_tokens=4096,
                      train_seconds=3.25)
    saved = json.loads(json.dumps(state.to_dict()))
    assert LoopState.from_dict(saved) == state
    assert LoopState.from_dict(LoopState().to_dict()) == LoopState()


def test_state_dict_is_a_copy():
    state = LoopState(best_metrics={"loss": 1.0})
    saved = state.to_dict()
    state.step, state.best_metrics["loss"] = 5, 0.5
    assert saved["step"] == 0 and saved["best_metrics"] == {"loss": 1.0}
    restored = LoopState.from_dict(saved)
    saved["best_metrics"]["loss"] = 2.0
    assert restored.best_metrics == {"loss": 1.0}


def test_state_from_dict_names_unknown_and_missing_keys():
    data = LoopState().to_dict()
    data.pop("epoch")
    data["stepz"] = 3
    with pytest.raises(ValueError, match=r"unknown keys \['stepz'\], missing keys \['epoch'\]"):
        LoopState.from_dict(data)


# ---------------------------------------------------------------------------------------------
# StepPlan: steps per epoch, total, warmup


@pytest.mark.parametrize("micro, kwargs, expected", [
    (10, dict(epochs=3), (10, 30, 0)),
    (10, dict(epochs=3, grad_accum=4), (3, 9, 0)),  # windows of 4, 4, 2
    (10, dict(epochs=0.5, grad_accum=3), (4, 2, 0)),  # fractional epochs round up
    (10, dict(epochs=2.05), (10, 21, 0)),
    (10, dict(epochs=3, max_steps=7), (10, 7, 0)),  # max_steps overrides epochs
    (10, dict(epochs=3, warmup_ratio=0.06), (10, 30, 1)),  # int(1.8): rounded down
    (10, dict(epochs=3, warmup_ratio=0.1, max_steps=25), (10, 25, 2)),  # a share of max_steps
    (10, dict(epochs=3, warmup_ratio=0.1, warmup_steps=5), (10, 30, 5)),  # warmup_steps overrides the ratio
    (10, dict(epochs=3, warmup_ratio=0.5, warmup_steps=0), (10, 30, 0)),  # ... also when 0
    (0, dict(epochs=3), (1, 3, 0)),  # at least one step per epoch
    (1, dict(epochs=0.01), (1, 1, 0)),  # at least one step
])
def test_plan_totals(micro, kwargs, expected):
    plan = StepPlan.make(micro, **kwargs)
    assert (plan.steps_per_epoch, plan.total, plan.warmup) == expected


def test_plan_windows_group_micro_batches_by_grad_accum():
    assert list(StepPlan.make(5, grad_accum=2).windows(range(5))) == [[0, 1], [2, 3], [4]]
    assert list(StepPlan.make(3).windows("abc")) == [["a"], ["b"], ["c"]]
    assert list(StepPlan.make(0, grad_accum=2).windows([])) == []


def test_plan_logs_every_n_and_at_the_last_step_and_evaluates_before_the_last():
    plan = StepPlan.make(10, max_steps=7, log_every=3, eval_every=2)
    assert [s for s in range(1, 8) if plan.logs_at(s)] == [3, 6, 7]
    assert [s for s in range(1, 8) if plan.evaluates_at(s)] == [2, 4, 6]  # step 7 is evaluated as a run's end
    assert not any(StepPlan.make(10, eval_every=None).evaluates_at(s) for s in range(1, 11))


# ---------------------------------------------------------------------------------------------
# BestKeeper: best checkpoint and patience


class _Weight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)


def script(metric: str, values: list, patience: int | None):
    """Feed `values` (one evaluation per step, the weight set to the step) to a keeper; its decisions."""
    state, said, model = LoopState(), [], _Weight()
    keeper = BestKeeper(state, metric, patience, say=said.append)
    decisions = []
    for step, value in enumerate(values, start=1):
        state.step = step
        with torch.no_grad():
            model.w.fill_(step)
        metrics = {"loss": 1.0, metric: value}
        decisions.append((keeper.judge(metrics, model), state.best_step, state.bad_evals))
    return state, keeper, model, said, decisions


def test_keeper_skips_undefined_evaluations_for_best_and_patience():
    state, keeper, model, said, decisions = script("roc_auc_ovr", [0.5, None, 0.7, 0.6, None, 0.65], patience=2)
    # (stop, best step, patience count) after each evaluation: None changes neither best nor patience
    assert decisions == [(False, 1, 0), (False, 1, 0), (False, 3, 0), (False, 3, 1), (False, 3, 1), (True, 3, 2)]
    assert (state.best_metric, state.evals, state.evals_without_metric) == (0.7, 6, 2)
    assert state.best_metrics == {"roc_auc_ovr": 0.7, "loss": 1.0}
    assert list(keeper.best_weights) == ["w"] and float(keeper.best_weights["w"]) == 3.0  # trainable ones only
    assert sum("is undefined" in s for s in said) == 2
    assert said[3] == "step 4: validation roc_auc_ovr=0.6000 (best 0.7000 at step 3)"
    keeper.finish(model)
    assert float(model.w.detach()) == 3.0 and len(said) == 6  # the best weights are back; nothing more to say


def test_keeper_minimises_losses_and_an_equal_value_is_no_improvement():
    assert is_minimised("loss") and is_minimised("perplexity") and not is_minimised("accuracy")
    state, _, _, said, decisions = script("loss", [1.0, 0.8, 0.8, 0.9, 0.7], patience=None)
    assert decisions == [(False, 1, 0), (False, 2, 0), (False, 2, 1), (False, 2, 2), (False, 5, 0)]
    assert state.best_metric == 0.7 and said[2] == "step 3: validation loss=0.8000 (best 0.8000 at step 2)"


def test_keeper_stops_after_patience_evaluations_without_improvement():
    _, _, _, _, decisions = script("accuracy", [0.5, 0.5, 0.4], patience=2)
    assert [d[0] for d in decisions] == [False, False, True]
    _, _, _, _, decisions = script("accuracy", [0.5, 0.4], patience=1)
    assert [d[0] for d in decisions] == [False, True]


def test_keeper_counts_nan_as_no_improvement():
    state, _, _, said, decisions = script("accuracy", [math.nan, 0.3], patience=None)
    assert decisions == [(False, None, 1), (False, 2, 0)]
    assert said[0] == "step 1: validation accuracy=nan (best -inf at step None)"


def test_keeper_keeps_the_last_weights_and_says_why_when_the_metric_is_never_defined():
    state, keeper, model, said, decisions = script("roc_auc_ovr", [None, None], patience=1)
    assert decisions == [(False, None, 0), (False, None, 0)] and keeper.best_weights is None
    keeper.finish(model)
    assert float(model.w.detach()) == 2.0
    assert "undefined at all 2 evaluations" in said[-1] and "train.early_stopping.metric" in said[-1]


def test_keeper_rejects_a_metric_validation_does_not_report():
    keeper = BestKeeper(LoopState(), "f1", None, say=print)
    with pytest.raises(TunelabError, match="'f1' is not a validation metric; known: loss, accuracy"):
        keeper.judge({"loss": 0.5, "accuracy": 0.75, "per_class": {}}, _Weight())


def test_keeper_without_evaluations_leaves_the_model_alone():
    said, model = [], _Weight()
    BestKeeper(LoopState(), "loss", 3, say=said.append).finish(model)
    assert said == [] and float(model.w.detach()) == 0.0


# ---------------------------------------------------------------------------------------------
# Throughput: tokens per second inside steps only


def test_throughput_counts_only_time_between_start_and_stop():
    clock = iter([10.0, 12.0, 100.0, 101.0, 500.0, 504.0])  # steps of 2 s, 1 s, 4 s; long gaps between them
    state = LoopState()
    meter = Throughput(state, clock=lambda: next(clock))
    for tokens in (300, 150):
        meter.start()
        meter.stop(tokens)
    assert meter.take_rate() == 450 / 3  # the gap from 12 to 100 (an evaluation, say) does not count
    meter.start()
    assert meter.stop(200) == 4.0
    assert meter.take_rate() == 50.0  # a new window
    assert (state.train_tokens, state.train_seconds) == (650, 7.0)


def test_throughput_adds_to_a_restored_state_and_needs_a_start():
    state = LoopState(train_tokens=1000, train_seconds=10.0)
    clock = iter([0.0, 0.5])
    meter = Throughput(state, clock=lambda: next(clock))
    assert meter.take_rate() == 0.0  # an empty window
    with pytest.raises(RuntimeError, match="without start"):
        meter.stop(5)
    meter.start()
    meter.stop(100)
    assert (state.train_tokens, state.train_seconds, meter.take_rate()) == (1100, 10.5, 200.0)


def test_mean_loss_is_the_sum_of_sums_over_the_items():
    mean = MeanLoss()
    mean.add(6.0, 3)
    mean.add(1.0, 1)
    assert mean.take() == 7.0 / 4
    assert mean.take() == 0.0  # nothing since


# ---------------------------------------------------------------------------------------------
# The loop keeps its place in the state


class _Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


@pytest.mark.parametrize("settings, expected", [
    # 5 micro-batches in windows of 2, 2, 1: 3 steps per epoch
    # a constant validation loss: the first evaluation stays the best
    # an epoch whose batches are all trained is over: the state points at the next one (where a resume starts)
    (dict(epochs=2), dict(step=6, epoch=2, batch_in_epoch=0, last_eval_step=6, evals=2, best_step=3)),
    (dict(epochs=2, max_steps=4), dict(step=4, epoch=1, batch_in_epoch=2, last_eval_step=4, evals=2, best_step=3)),
    (dict(epochs=1, eval_every=1), dict(step=3, epoch=1, batch_in_epoch=0, last_eval_step=3, evals=3, best_step=1)),
])
def test_loop_leaves_the_state_where_the_run_ended(monkeypatch, settings, expected):
    import tunelab.train.loop as loop
    from tunelab.config import EarlyStoppingConfig, TrainConfig
    from tunelab.train.logging import RunLogger

    states, asked = [], []

    def recorded() -> LoopState:
        states.append(LoopState())
        return states[-1]

    def epoch_batches(epoch):
        asked.append(epoch)
        return ({"attention_mask": torch.ones(1, 3)} for _ in range(5))

    monkeypatch.setattr(loop, "LoopState", recorded)
    cfg = TrainConfig(grad_accum=2, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, warmup_steps=0,
                      scheduler="constant", max_grad_norm=None, log_every=1, device="cpu",
                      early_stopping=EarlyStoppingConfig(metric="loss", patience=None), **settings)
    result = loop.train_loop(_Counter(), epoch_batches=epoch_batches, micro_batches_per_epoch=5,
                             loss_fn=lambda model, batch: (-model.w.sum(), 1), evaluate=lambda m: {"loss": 1.0},
                             cfg=cfg, device=torch.device("cpu"), logger=RunLogger(None, 6, show_progress=False))
    (state,) = states
    assert {k: getattr(state, k) for k in expected} == expected
    assert asked == list(range(min(expected["epoch"] + 1, settings["epochs"])))
    micro_batches = 5 * expected["epoch"] + expected["batch_in_epoch"]
    assert state.train_tokens == result.train_tokens == 3 * micro_batches
    assert (result.steps, result.best_step) == (state.step, state.best_step)
