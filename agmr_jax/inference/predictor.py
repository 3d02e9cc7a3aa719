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


class Predictor:
  """probs = predictor(variables, images (Z, H, W, C)) -> (Z, H, W) float32 lesion probability."""

  def __init__(self, model, mesh, batch_size: int, *, flip_tta: bool = False):
    if batch_size % mesh.size:
      raise ValueError(f'eval batch size {batch_size} is not divisible by {mesh.size} devices')
    self.mesh = mesh
    self.batch_size = batch_size
    self.flip_tta = flip_tta
    self._predict = jax.jit(
        make_predict_step(model),
        in_shardings=(sharding_lib.replicated(mesh), sharding_lib.data_sharded(mesh)),
        out_shardings=sharding_lib.replicated(mesh))

  def _run(self, variables, images: np.ndarray) -> np.ndarray:
    n, bs = images.shape[0], self.batch_size
    out = np.empty(images.shape[:3], np.float32)
    mine = sharding_lib.process_slice(bs)
    for start in range(0, n, bs):
      chunk = images[start:start + bs]
      if chunk.shape[0] < bs:
        pad = np.zeros((bs - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      batch = sharding_lib.global_batch(np.ascontiguousarray(chunk[mine]), self.mesh)
      probs = self._predict(variables, batch)
      out[start:start + bs] = np.asarray(probs.addressable_data(0))[:n - start]
    return out

  def __call__(self, variables, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    probs = self._run(variables, images)
    if self.flip_tta:
      flipped = self._run(variables, images[:, :, ::-1])
      probs = 0.5 * (probs + flipped[:, :, ::-1])
    return probs

