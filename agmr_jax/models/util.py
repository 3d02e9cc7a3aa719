"""Small helpers about model variables."""

import math
from collections.abc import Mapping
from typing import Any

import jax


def count_params(variables: Mapping[str, Any], include_batch_stats: bool = True) -> int:
  """Number of values in 'params' (plus 'batch_stats' if asked).

  With include_batch_stats=True this is the Keras count: BatchNorm contributes
  4 values per channel (scale, bias, moving mean, moving variance). Works on
  concrete arrays and on jax.eval_shape's ShapeDtypeStructs alike.
  """
  collections = ['params'] + (['batch_stats'] if include_batch_stats else [])
  return sum(math.prod(leaf.shape)
             for name in collections
             for leaf in jax.tree_util.tree_leaves(variables.get(name, {})))
