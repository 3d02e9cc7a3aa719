"""The one pure train step.

`train_step(state, batch, rng) -> (state, metrics)` is built by `make_train_step` from a model and
an objective, then jitted once at the call site with shardings and a donated state. It is
deterministic: the dropout key of step n is fold_in(rng, n), so a resumed run replays the same
randomness. A non-finite loss or gradient leaves the state unchanged and is reported through
`metrics['finite']`; the loop stops and names the step.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from agmr_jax.state import TrainState

Objective = Callable[[dict, dict], tuple[jax.Array, dict]]
Augment = Callable[[dict, jax.Array], dict]


def _tree_select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def rescale_batch_stats(old, new, *, model_momentum: float, momentum: float):
  """Running statistics as if every BatchNorm had `momentum` instead of `model_momentum`.

  flax updates each running mean and variance as r' = m r + (1 - m) b (b: the batch's value), so
  r + (1 - M) / (1 - m) (r' - r) = M r + (1 - M) b exactly, whatever b was. The networks use one
  momentum (models.layers.BN_MOMENTUM, the Keras papers' 0.99); a short run (the CPU demos)
  needs a faster one, or its evaluation-mode statistics lag behind the weights by ~1/(1 - m)
  steps.
  """
  scale = (1.0 - momentum) / (1.0 - model_momentum)
  return jax.tree.map(lambda r, r_new: r + scale * (r_new - r), old, new)


def make_train_step(model: nn.Module, objective: Objective, *,
                    bn_momentum: float | None = None, model_bn_momentum: float = 0.99,
                    augment: Augment | None = None):
  """Returns the pure step; `objective(outputs, batch)` gives per-example losses and metrics.

  bn_momentum: None keeps the model's BatchNorm momentum (`model_bn_momentum`); a value replaces
  it in every BatchNorm (rescale_batch_stats).
  augment: `augment(batch, step) -> batch` applied to the global batch before the forward pass
  (input_pipeline.augment.device.DeviceAugment: its randomness is bound to the run seed, the
  step and each example's index in the global batch, never to `rng`).
  """

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)
    # Records store float16 images and the loader leaves them so (half the bytes to move).
    batch = {**batch, 'image': jnp.asarray(batch['image'], jnp.float32)}
    if augment is not None:
      batch = augment(batch, state.step)

    def loss_fn(params):
      outputs, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
          rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
      per_example, aux = objective(outputs, batch)
      return jnp.mean(per_example), (updates.get('batch_stats', {}), aux)

    (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if bn_momentum is not None and bn_momentum != model_bn_momentum:
      batch_stats = rescale_batch_stats(state.batch_stats, batch_stats,
                                        model_momentum=model_bn_momentum, momentum=bn_momentum)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=_tree_select(finite, params, state.params),
        batch_stats=_tree_select(finite, batch_stats, state.batch_stats),
        opt_state=_tree_select(finite, opt_state, state.opt_state))
    metrics = {'loss': loss, 'grad_norm': grad_norm, 'finite': finite, **aux}
    return new_state, metrics

  return train_step
