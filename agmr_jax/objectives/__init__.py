"""Training objectives: model outputs + batch -> per-example loss and scalar metrics.

An objective binds a loss from losses.py to the outputs a model returns (logits plus any
auxiliary outputs) and to the batch's mask. `OBJECTIVES` is the one registry; configs name an
entry and give its keyword arguments (`config.loss.name`, `config.loss.kwargs`).
"""

import functools
from collections.abc import Callable

import jax

from agmr_jax.objectives import agmr
from agmr_jax.objectives import common
from agmr_jax.objectives import mdanet
from agmr_jax.objectives import thesis

Objective = Callable[[dict, dict], tuple[jax.Array, dict]]


OBJECTIVES: dict[str, Callable[..., tuple[jax.Array, dict]]] = {
    'dunet_mix': common.dunet_mix,
    'agmr': agmr.agmr_loss,
    'soft_dice': common.soft_dice,
    'bce_dice': common.bce_dice,
    'mdanet': functools.partial(mdanet.mdanet_loss, hard_dice=common.hard_dice),
    'thesis_focal': thesis.thesis_focal,
    'thesis_ce': thesis.thesis_ce,
}


def make_objective(name: str, **kwargs) -> Objective:
  if name not in OBJECTIVES:
    raise ValueError(f'unknown loss {name!r}; known: {", ".join(sorted(OBJECTIVES))}')
  return functools.partial(OBJECTIVES[name], **kwargs)
