"""Run reporting: metrics.jsonl, TensorBoard (tensorboardX, no TensorFlow), progress and tables.

Only process 0 writes; other processes get a writer that does nothing, so callers never branch.
"""

import json
from absl import logging
import pathlib

import jax
import numpy as np


class MetricWriter:
  """Appends {'step', **scalars} to metrics.jsonl and mirrors scalars/images to TensorBoard."""

  def __init__(self, workdir: str | pathlib.Path, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    self._path = pathlib.Path(workdir) / 'metrics.jsonl'
    self._path.parent.mkdir(parents=True, exist_ok=True)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard'))

  def scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with self._path.open('a') as f:
      f.write(json.dumps(row) + '\n')
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def images(self, step: int, images: dict) -> None:
    """images: name -> (H, W, 3) uint8."""
    if self.enabled and self._tb is not None:
      for k, v in images.items():
        self._tb.add_image(k, v, int(step), dataformats='HWC')

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """An RGB uint8 picture of a slice: truth in green, prediction in red, overlap yellow."""
  gray = image.astype(np.float32)
  lo, hi = np.percentile(gray, [1, 99])
  gray = np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1)
  rgb = np.stack([gray] * 3, axis=-1) * 0.7
  rgb[..., 1] = np.where(truth > 0, 1.0, rgb[..., 1])
  rgb[..., 0] = np.where(pred > 0, 1.0, rgb[..., 0])
  return (rgb * 255).astype(np.uint8)


def log_topology() -> None:
  logging.info('JAX %s: process %d/%d, %d local / %d global devices: %s', jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), ', '.join(str(d) for d in jax.local_devices()))
