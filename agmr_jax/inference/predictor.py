"""Slice-wise prediction of whole cases.

`Predictor` runs a model over a case's (Z, H, W, C) slice stack in fixed-size batches (the last
one zero-padded, so one compilation serves every case), sharded over the mesh's 'data' axis; every
process passes the same stack and gets the full result back. Optional flip test-time augmentation
averages the probabilities of the image and its left-right mirror.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agmr_jax import sharding as sharding_lib


def make_predict_step(model: nn.Module) -> Callable[[dict, jax.Array], jax.Array]:
  """predict(variables, images) -> lesion probability (B, H, W) in float32."""

  def predict(variables, images):
    logits = model.apply(variables, images, train=False)['logits'].astype(jnp.float32)
    if logits.shape[-1] == 1:
      return jax.nn.sigmoid(logits[..., 0])
    # Multi-class heads: every class but background is lesion (e.g. lesion + contour).
    return 1.0 - jax.nn.softmax(logits, axis=-1)[..., 0]

  return predict


# In-plane flip axes of a (Z, H, W, C) slice stack: W is the volume's x (left-right), H its y
# (anterior-posterior) in the recipes' RAS-ordered slices.
FLIP_AXES = {'lr': 2, 'ap': 1}


def tta_passes(tta) -> list[tuple[int, ...]]:
  """The flips test-time augmentation averages: () alone without TTA; `True` or ('lr',): the
  image and its left-right mirror (2 passes); ('lr', 'ap'): every combination (4 passes)."""
  if tta is True:
    tta = ('lr',)
  axes = sorted(FLIP_AXES[a] for a in (tta or ()))
  if len(set(axes)) != len(axes):
    raise ValueError(f'tta axes {tta} repeat an axis')
  passes = [()]
  for axis in axes:
    passes += [(*p, axis) for p in passes]
  return passes


class Predictor:
  """probs = predictor(variables, images (Z, H, W, C)) -> (Z, H, W) float32 lesion probability.

  `tta`: False, True (left-right flip) or a tuple of FLIP_AXES names; the probabilities of every
  flipped copy, flipped back, are averaged.
  """

  def __init__(self, model, mesh, batch_size: int, *, tta=False):
    if batch_size <= 0:
      raise ValueError(f'eval batch size must be positive, got {batch_size}')
    if batch_size % mesh.size:
      raise ValueError(f'eval batch size {batch_size} is not divisible by {mesh.size} devices')
    self.mesh = mesh
    self.batch_size = batch_size
    self.passes = tta_passes(tta)
    self._predict = jax.jit(
        make_predict_step(model),
        in_shardings=(sharding_lib.replicated(mesh), sharding_lib.data_sharded(mesh)),
        out_shardings=sharding_lib.replicated(mesh))

  def _run(self, variables, images: np.ndarray) -> np.ndarray:
    n, bs = images.shape[0], self.batch_size
    out = np.empty(images.shape[:3], np.float32)
    mine = sharding_lib.process_slice(bs)
    written = 0
    for start in range(0, n, bs):
      chunk = images[start:start + bs]
      if chunk.shape[0] < bs:
        pad = np.zeros((bs - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      batch = sharding_lib.global_batch(np.ascontiguousarray(chunk[mine]), self.mesh)
      probs = self._predict(variables, batch)
      out[start:start + bs] = np.asarray(probs.addressable_data(0))[:n - start]
      written += min(bs, n - start)
    assert written == n, f'predicted {written} of {n} slices'  # Never return unwritten memory.
    return out

  def __call__(self, variables, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    total = None
    for axes in self.passes:
      probs = self._run(variables, np.flip(images, axes) if axes else images)
      probs = np.flip(probs, axes) if axes else probs
      total = probs if total is None else total + probs
    return total if len(self.passes) == 1 else total / len(self.passes)


class Ensemble:
  """probs = ensemble(variables_list, images): the mean of its members' lesion probabilities.

  Members are (Predictor, index into variables_list); members with the same network share one
  Predictor (one compilation), each with its own variables.
  """

  def __init__(self, predictors: list[Predictor], member_predictor: list[int]):
    self.predictors = predictors
    self.member_predictor = member_predictor

  def __call__(self, variables_list, images: np.ndarray) -> np.ndarray:
    if len(variables_list) != len(self.member_predictor):
      raise ValueError(f'{len(variables_list)} variable sets for '
                       f'{len(self.member_predictor)} ensemble members')
    total = None
    for which, variables in zip(self.member_predictor, variables_list):
      probs = self.predictors[which](variables, images)
      total = probs if total is None else total + probs
    return total / len(variables_list)
