"""A thin DPO trainer for prefdata datasets: pure losses, TRL's tokenisation, a readable loop,
and ranking-accuracy evaluation.

    from prefdata.train import TrainConfig, train
    result = train(TrainConfig(dataset="out/quickstart", loss="robust", epsilon="auto"))

Heavy libraries (torch, transformers) load when a function runs, not when this package is imported:
the build registry imports the `reference_logps` stage from here.
"""

from __future__ import annotations

from typing import Any

from prefdata.train.config import EvalConfig, FlipRate, LoraSettings, TrainConfig, TrainError, read_flip_rate


def train(config: TrainConfig, **kwargs: Any):
    """Run a training job (see `prefdata.train.loop.train`)."""
    from prefdata.train.loop import train as _train

    return _train(config, **kwargs)


def evaluate(config: EvalConfig, **kwargs: Any):
    """Evaluate a model's ranking accuracy on a dataset (see `prefdata.train.eval.evaluate`)."""
    from prefdata.train.eval import evaluate as _evaluate

    return _evaluate(config, **kwargs)


__all__ = ["EvalConfig", "FlipRate", "LoraSettings", "TrainConfig", "TrainError", "evaluate", "read_flip_rate", "train"]
