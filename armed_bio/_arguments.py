"""Numeric arguments of every model, module, ``train`` and training plan, checked at the door.

One table says what each name must be. A value that breaks its rule raises a ``ValueError``
naming the argument, the rule and the value, before any work is done (a negative latent size
would otherwise fail deep inside torch, a dropout of 1.5 or a NaN learning rate not at all).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

Rule = tuple[str, Callable[[Any], bool]]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


POSITIVE_INT: Rule = ("a positive integer", lambda v: _integer(v) and v >= 1)
NON_NEGATIVE_INT: Rule = ("an integer >= 0", lambda v: _integer(v) and v >= 0)
OPTIONAL_POSITIVE: Rule = (
    "None or a finite number > 0",
    lambda v: v is None or (_number(v) and v > 0),
)
OPTIONAL_POSITIVE_INT: Rule = (
    "None or a positive integer",
    lambda v: v is None or (_integer(v) and v >= 1),
)
OPTIONAL_STEPS: Rule = ("None or an integer >= 0", lambda v: v is None or (_integer(v) and v >= 0))
POSITIVE: Rule = ("a finite number > 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE: Rule = ("non-negative (a finite number >= 0)", lambda v: _number(v) and v >= 0)
UNIT_INTERVAL: Rule = ("a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1)
DROPOUT: Rule = ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1)
TRAIN_FRACTION: Rule = (
    "None or a number in (0, 1]",
    lambda v: v is None or (_number(v) and 0 < v <= 1),
)
OPTIONAL_FRACTION: Rule = (
    "None or a number in [0, 1)",
    lambda v: v is None or (_number(v) and 0 <= v < 1),
)
SEED: Rule = ("an integer in [0, 2**32)", lambda v: _integer(v) and 0 <= v < 2**32)
CHANNELS: Rule = (
    "a non-empty tuple of positive integers, e.g. (16, 32)",
    lambda v: isinstance(v, tuple | list) and len(v) > 0 and all(POSITIVE_INT[1](c) for c in v),
)
ADVERSARY_CLUSTERS: Rule = ("0 or at least 2", lambda v: _integer(v) and (v == 0 or v >= 2))

RULES: dict[str, Rule] = {
    # architecture
    "n_latent": POSITIVE_INT,
    "n_latent_re": POSITIVE_INT,
    "n_hidden": POSITIVE_INT,
    "n_layers": POSITIVE_INT,
    "channels": CHANNELS,
    "re_channels": CHANNELS,
    "decoder_width": POSITIVE,
    "re_downsample": POSITIVE_INT,
    "dropout_rate": DROPOUT,
    "adversary_clusters": ADVERSARY_CLUSTERS,
    "adversary_hidden": OPTIONAL_POSITIVE_INT,
    "adversary_layers": POSITIVE_INT,
    # loss weights and priors
    "adversary_scale": NON_NEGATIVE,
    "fe_reconstruction_weight": NON_NEGATIVE,
    "invariance_weight": NON_NEGATIVE,
    "intensity_jitter": NON_NEGATIVE,
    "focus_jitter": NON_NEGATIVE,
    "re_batch_weight": NON_NEGATIVE,
    "classification_weight": NON_NEGATIVE,
    "latent_kl_weight": NON_NEGATIVE,
    "hidden_prior_sd": POSITIVE,
    "output_prior_sd": POSITIVE,
    # train()
    "max_epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "seed": SEED,
    "train_size": TRAIN_FRACTION,
    "validation_size": OPTIONAL_FRACTION,
    "checkpoint_every_n_epochs": POSITIVE_INT,
    # the training plan (plan_kwargs)
    "lr": POSITIVE,
    "adversary_lr": POSITIVE,
    "adversary_lr_end": OPTIONAL_POSITIVE,
    "random_effects_lr": POSITIVE,
    "warmup_fraction": UNIT_INTERVAL,
    "n_steps_adversary_warmup": OPTIONAL_STEPS,
    "n_steps_kl_warmup": OPTIONAL_STEPS,
    "weight_decay": NON_NEGATIVE,
    "eps": POSITIVE,
    "max_kl_weight": NON_NEGATIVE,
    "min_kl_weight": NON_NEGATIVE,
    # differential expression
    "delta": NON_NEGATIVE,
    "pseudocount": POSITIVE,
    "min_cells": POSITIVE_INT,
    "min_cells_per_replicate": POSITIVE_INT,
    "n_samples_overall": POSITIVE_INT,
}


def check_arguments(values: Mapping[str, Any], where: str) -> None:
    """Raise ``ValueError`` for the first value in ``values`` that breaks its rule in RULES."""
    for name, value in values.items():
        rule = RULES.get(name)
        if rule is not None and not rule[1](value):
            raise ValueError(f"{where}: {name} must be {rule[0]}, got {value!r}.")


def check_split(train_size: float | None, validation_size: float | None) -> None:
    """Raise unless the training and validation fractions fit in the data together."""
    train = 0.9 if train_size is None else train_size
    validation = (1 - train) if validation_size is None else validation_size
    if train + validation > 1 + 1e-9:
        raise ValueError(
            f"train_size + validation_size must be at most 1, got {train} + {validation}. "
            "Lower one of them."
        )


def check_plan_kwargs(plan_cls: type, plan_kwargs: Mapping[str, Any]) -> None:
    """Check ``plan_kwargs``' names against the plan (and scvi's base plan) and their values."""
    import inspect

    known = set()
    for cls in plan_cls.__mro__:
        if "__init__" in vars(cls):
            known |= set(inspect.signature(cls.__init__).parameters)
    known -= {"self", "module", "kwargs", "args"}
    internal = {"checkpoint_dir", "checkpoint_every_n_epochs", "checkpoint_run"}
    unknown = sorted(set(plan_kwargs) - known)
    if unknown or set(plan_kwargs) & internal:
        raise TypeError(
            f"plan_kwargs {unknown or sorted(set(plan_kwargs) & internal)} are not arguments "
            f"of the training plan (checkpointing is set by train()'s own arguments); its "
            f"arguments are {sorted(known - internal)}."
        )
    check_arguments(plan_kwargs, "plan_kwargs")
