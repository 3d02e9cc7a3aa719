"""The train state every job shares: built by training, restored by evaluation and prediction.

`TrainState` holds what changes during training and is checkpointed (step, parameters, BatchNorm
statistics, optimizer state). `make_init` and `init_state` build it sharded in place;
`abstract_state` gives its shapes and shardings without materialising it (the restore target).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
  """Everything that changes during training (and is checkpointed)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, variables: dict, tx: optax.GradientTransformation) -> 'TrainState':
    params = variables['params']
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params), tx=tx)

  @property
  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def make_init(model: nn.Module, input_shape: tuple[int, ...],
              tx: optax.GradientTransformation) -> Callable[[jax.Array], TrainState]:
  """init(rng) -> TrainState; jit it with out_shardings to build the state in place."""
  def init(rng):
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init({'params': params_rng, 'dropout': dropout_rng},
                           jnp.zeros(input_shape, jnp.float32), train=False)
    return TrainState.create(variables=dict(variables), tx=tx)
  return init


# Initialisation runs once but, with a threefry draw per parameter, compiles into a large
# program: XLA's default CPU optimisation took minutes for the demo D-UNet, level 0 a fraction of
# that. The initial values are exact integer RNG arithmetic plus the same float transforms, and a
# given setting always compiles the same way, so runs stay reproducible.
_FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def init_state(init_fn, rng: jax.Array, shardings) -> 'TrainState':
  """jit(init_fn, out_shardings) compiled cheaply: the state is built in place, sharded."""
  lowered = jax.jit(init_fn, out_shardings=shardings).lower(rng)
  options = _FAST_COMPILE if jax.default_backend() == 'cpu' else {}
  return lowered.compile(compiler_options=options)(rng)


def abstract_state(init_fn, rng: jax.Array, sharding) -> TrainState:
  """The state's shapes/dtypes with shardings, without materialising it."""
  shapes = jax.eval_shape(init_fn, rng)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, sharding)
