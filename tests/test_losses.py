"""Hand-computed values and invariants of agmr_jax.losses (2x2 examples)."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agmr_jax.objectives import losses

LOG3 = math.log(3.0)  # logit whose sigmoid is 0.75
# One 2x2 example with a single lesion pixel, NHWC.
TARGET = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32).reshape(1, 2, 2, 1)


def _logits(values):
  return jnp.asarray(np.array(values, np.float32).reshape(-1, 2, 2, 1))


def test_soft_dice_hand_values():
  # p = [[0.5, 0.5], [0.5, 0.5]], g = [[1, 0], [0, 0]]:
  # sum(pg) = 0.5, sum(p^2) = 4 * 0.25 = 1, sum(g^2) = 1, sum(p) = 2, sum(g) = 1.
  p = np.full((1, 2, 2, 1), 0.5, np.float32)
  squared = losses.soft_dice(p, TARGET)  # (2*0.5 + 1) / (1 + 1 + 1) = 2/3
  plain = losses.soft_dice(p, TARGET, squared=False)  # (2*0.5 + 1) / (2 + 1 + 1) = 1/2
  np.testing.assert_allclose(squared, [2 / 3], rtol=1e-6)
  np.testing.assert_allclose(plain, [0.5], rtol=1e-6)
  assert squared.shape == (1,) and squared.dtype == jnp.float32


def test_dice_losses_hand_values():
  # logits [[log3, 0], [0, -log3]] -> p = [[0.75, 0.5], [0.5, 0.25]], g = [[1, 0], [0, 0]].
  # sum(pg) = 0.75; sum(p^2) = 0.5625 + 0.25 + 0.25 + 0.0625 = 1.125; sum(g^2) = 1.
  # dice = (1.5 + 1) / (1.125 + 1 + 1) = 2.5 / 3.125 = 0.8.
  logits = _logits([[LOG3, 0.0], [0.0, -LOG3]])
  np.testing.assert_allclose(losses.dice_loss(logits, TARGET), [0.2], rtol=1e-6)
  np.testing.assert_allclose(losses.log_dice_loss(logits, TARGET), [-math.log(0.8)], rtol=1e-6)
  # Unsquared: sum(p) = 2, sum(g) = 1: dice = 2.5 / 4 = 0.625.
  np.testing.assert_allclose(
      losses.dice_loss(logits, TARGET, squared=False), [0.375], rtol=1e-6)


def test_batch_pooled_dice_hand_values():
  # Example 1: the 0.8 example above (sum(pg) = 0.75, sum(p^2) = 1.125, sum(g^2) = 1).
  # Example 2: p = 0.5 everywhere on an empty mask (sum(pg) = 0, sum(p^2) = 1, sum(g^2) = 0).
  logits = _logits([[[LOG3, 0.0], [0.0, -LOG3]], [[0.0, 0.0], [0.0, 0.0]]])
  target = np.concatenate([TARGET, np.zeros_like(TARGET)])
  # Per example: 0.8 and (0 + 1) / (1 + 1) = 0.5.
  np.testing.assert_allclose(losses.dice_loss(logits, target), [0.2, 0.5], rtol=1e-6)
  # Pooled: (2 * 0.75 + 1) / (1.125 + 1 + 1 + 1) = 2.5 / 4.125, the same for both examples.
  pooled = 2.5 / 4.125
  np.testing.assert_allclose(losses.dice_loss(logits, target, pooling='batch'),
                             [1 - pooled] * 2, rtol=1e-6)
  np.testing.assert_allclose(losses.log_dice_loss(logits, target, pooling='batch'),
                             [-math.log(pooled)] * 2, rtol=1e-6)
  with pytest.raises(ValueError, match=re.escape(
      "dice pooling must be one of ('example', 'batch'), got 'case'")):
    losses.dice_loss(logits, target, pooling='case')


def test_dice_perfect_and_no_overlap():
  big = 50.0
  # Perfect: p == g exactly in float32 (sigmoid(+-50) rounds to 1 / 0 here, up to 2e-22).
  # g has 1 lesion pixel: dice = (2*1 + 1) / (1 + 1 + 1) = 1 exactly; the smoothing does not
  # matter when p == g.
  perfect = _logits([[big, -big], [-big, -big]])
  np.testing.assert_allclose(losses.dice_loss(perfect, TARGET), [0.0], atol=1e-7)
  # Both empty: dice = (0 + 1) / (0 + 0 + 1) = 1 (smoothing makes it defined).
  empty = _logits([[-big] * 2] * 2)
  np.testing.assert_allclose(losses.dice_loss(empty, np.zeros_like(TARGET)), [0.0], atol=1e-7)
  # No overlap: p = [[0, 1], [1, 1]]: dice = (0 + 1) / (3 + 1 + 1) = 0.2, loss 0.8; log loss
  # = -log(0.2): smoothing keeps it finite.
  none = _logits([[-big, big], [big, big]])
  np.testing.assert_allclose(losses.dice_loss(none, TARGET), [0.8], rtol=1e-6)
  np.testing.assert_allclose(losses.log_dice_loss(none, TARGET), [math.log(5.0)], rtol=1e-6)
  # With smooth = 0.01 a perfect prediction is still exactly 0 and no overlap ~ 1.
  np.testing.assert_allclose(losses.dice_loss(perfect, TARGET, smooth=0.01), [0.0], atol=1e-7)
  np.testing.assert_allclose(
      losses.dice_loss(none, TARGET, smooth=0.01), [1 - 0.01 / 4.01], rtol=1e-6)


def test_focal_hand_values():
  # logits [[log3, 0], [0, -log3]]: p = [[0.75, 0.5], [0.5, 0.25]], g = [[1, 0], [0, 0]].
  # p_t = [[0.75, 0.5], [0.5, 0.75]], ce = -log(p_t), gamma = 2: (1 - p_t)^2 = [[1/16, 1/4], ...].
  # alpha = 0.25: alpha_t = [[0.25, 0.75], [0.75, 0.75]].
  # pixel 00: 0.25 * 1/16 * log(4/3); 01 and 10: 0.75 * 1/4 * log2; 11: 0.75 * 1/16 * log(4/3).
  logits = _logits([[LOG3, 0.0], [0.0, -LOG3]])
  l43, l2 = math.log(4 / 3), math.log(2)
  expected = (0.25 / 16 * l43 + 2 * 0.75 / 4 * l2 + 0.75 / 16 * l43) / 4
  got = losses.sigmoid_focal_loss(logits, TARGET, alpha=0.25, gamma=2.0)
  np.testing.assert_allclose(got, [expected], rtol=1e-6)
  # No alpha: every alpha_t = 1.
  expected = (1 / 16 * l43 + 2 / 4 * l2 + 1 / 16 * l43) / 4
  got = losses.sigmoid_focal_loss(logits, TARGET, gamma=2.0)
  np.testing.assert_allclose(got, [expected], rtol=1e-6)
  # gamma = 0, no alpha: plain BCE.
  np.testing.assert_allclose(
      losses.sigmoid_focal_loss(logits, TARGET, gamma=0.0), losses.sigmoid_bce(logits, TARGET),
      rtol=1e-6)


def test_focal_matches_dunet_keras_formula():
  # D-UNet EML focal with alpha on positives, written out in numpy with the same p.
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 2, 2, 1)).astype(np.float32) * 3
  g = (rng.random((2, 2, 2, 1)) > 0.5).astype(np.float32)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  alpha, gamma = 0.48, 1.1
  pos = -alpha * (1 - p) ** gamma * np.log(p) * g
  neg = -(1 - alpha) * p ** gamma * np.log(1 - p) * (1 - g)
  expected = (pos + neg).mean(axis=(1, 2, 3))
  got = losses.sigmoid_focal_loss(logits, g, alpha=alpha, gamma=gamma)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_sigmoid_bce_hand_values():
  # bce = [[log(4/3), log2], [log2, log(4/3)]]; weights [[0.7, 0.3], [0.3, 0.3]].
  logits = _logits([[LOG3, 0.0], [0.0, -LOG3]])
  l43, l2 = math.log(4 / 3), math.log(2)
  np.testing.assert_allclose(
      losses.sigmoid_bce(logits, TARGET), [(2 * l43 + 2 * l2) / 4], rtol=1e-6)
  w = losses.class_weight_map(TARGET, (0.3, 0.7))
  np.testing.assert_allclose(np.asarray(w)[0, :, :, 0], [[0.7, 0.3], [0.3, 0.3]], rtol=1e-6)
  expected = (0.7 * l43 + 0.3 * l2 + 0.3 * l2 + 0.3 * l43) / 4  # sum(w * bce) / num_pixels
  np.testing.assert_allclose(losses.sigmoid_bce(logits, TARGET, weights=w), [expected], rtol=1e-6)


def test_targets_without_channel_axis():
  logits = _logits([[LOG3, 0.0], [0.0, -LOG3]])
  np.testing.assert_allclose(
      losses.dunet_loss(logits, TARGET[..., 0]), losses.dunet_loss(logits, TARGET), rtol=1e-7)
  with pytest.raises(ValueError, match=re.escape(
      'targets (1, 3, 2, 1) do not match logits (1, 2, 2, 1)')):
    losses.dice_loss(logits, np.zeros((1, 3, 2)))


def test_softmax_ce_hand_values():
  # 3 classes; pixel logits [log2, 0, 0] -> softmax [0.5, 0.25, 0.25].
  # labels [[0, 1], [2, 1]]: ce = [[log2, log4], [log4, log4]].
  logits = jnp.tile(jnp.asarray([math.log(2.0), 0.0, 0.0], jnp.float32), (1, 2, 2, 1))
  labels = np.array([[[0, 1], [2, 1]]], np.int32)
  l2, l4 = math.log(2), math.log(4)
  np.testing.assert_allclose(losses.softmax_ce(logits, labels), [(l2 + 3 * l4) / 4], rtol=1e-6)
  # Weights {0.7, 2.0, 7.0}: w = [[0.7, 2], [7, 2]].
  # 'pixels': (0.7 log2 + 2 log4 + 7 log4 + 2 log4) / 4 = (0.7 log2 + 11 log4) / 4.
  weights = (0.7, 2.0, 7.0)
  got = losses.softmax_ce(logits, labels, class_weights=weights)
  np.testing.assert_allclose(got, [(0.7 * l2 + 11 * l4) / 4], rtol=1e-6)
  # 'weights': same sum / (0.7 + 2 + 7 + 2) = / 11.7.
  got = losses.softmax_ce(logits, labels, class_weights=weights, normalize='weights')
  np.testing.assert_allclose(got, [(0.7 * l2 + 11 * l4) / 11.7], rtol=1e-6)
  # Trailing label channel is accepted.
  np.testing.assert_allclose(
      losses.softmax_ce(logits, labels[..., None], class_weights=weights),
      [(0.7 * l2 + 11 * l4) / 4], rtol=1e-6)


def test_dunet_loss_hand_value():
  # focal (alpha 0.48, gamma 1.1) - log(dice): dice = 0.8 from test_dice_losses_hand_values.
  logits = _logits([[LOG3, 0.0], [0.0, -LOG3]])
  l43, l2 = math.log(4 / 3), math.log(2)
  a, g = 0.48, 1.1
  focal = (a * 0.25 ** g * l43 + 2 * (1 - a) * 0.5 ** g * l2 + (1 - a) * 0.25 ** g * l43) / 4
  np.testing.assert_allclose(
      losses.dunet_loss(logits, TARGET), [focal - math.log(0.8)], rtol=1e-6)


def test_reduce_loss():
  v = jnp.asarray([1.0, 2.0, 4.0])
  np.testing.assert_allclose(losses.reduce_loss(v), 7 / 3, rtol=1e-6)
  np.testing.assert_allclose(losses.reduce_loss(v, reduction='sum'), 7.0)
  np.testing.assert_allclose(losses.reduce_loss(v, [1, 1, 0]), 1.5)  # padded example dropped
  np.testing.assert_allclose(losses.reduce_loss(v, [0.5, 0, 1], reduction='sum'), 4.5)
  np.testing.assert_allclose(losses.reduce_loss(v, [2, 1, 0], reduction='none'), [2, 2, 0])
  np.testing.assert_allclose(losses.reduce_loss(v, [0, 0, 0]), 0.0)
  with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
    losses.reduce_loss(v, reduction='avg')


BINARY_LOSSES = {
    'dice': losses.dice_loss,
    'log_dice': losses.log_dice_loss,
    'focal': lambda x, y: losses.sigmoid_focal_loss(x, y, alpha=0.48, gamma=1.1),
    'bce': losses.sigmoid_bce,
    'dunet': losses.dunet_loss,
}


def _batch(seed):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(2, 4, 4, 1)).astype(np.float32) * 2
  targets = (rng.random((2, 4, 4, 1)) > 0.6).astype(np.float32)
  return logits, targets


@pytest.mark.parametrize('name', sorted(BINARY_LOSSES))
def test_per_example_independence(name):
  fn = BINARY_LOSSES[name]
  logits, targets = _batch(1)
  before = np.asarray(fn(logits, targets))
  assert before.shape == (2,)
  logits[1] = -logits[1] + 5.0
  targets[1] = 1 - targets[1]
  after = np.asarray(fn(logits, targets))
  assert after[0] == before[0]
  assert after[1] != before[1]


def test_softmax_ce_per_example_independence():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 4, 4))
  before = np.asarray(losses.softmax_ce(logits, labels, class_weights=(0.7, 2.0, 7.0)))
  logits[1] *= 3
  labels[1] = (labels[1] + 1) % 3
  after = np.asarray(losses.softmax_ce(logits, labels, class_weights=(0.7, 2.0, 7.0)))
  assert after[0] == before[0] and after[1] != before[1]


@pytest.mark.parametrize('name', sorted(BINARY_LOSSES))
def test_gradients_finite_at_saturation(name):
  fn = BINARY_LOSSES[name]
  # Saturated logits, right and wrong, on lesion and background pixels.
  logits = _logits([[50.0, -50.0], [50.0, -50.0], [-50.0, 50.0], [-50.0, 50.0]])
  targets = np.array([[1, 0, 0, 1], [1, 0, 0, 1]], np.float32).reshape(2, 2, 2, 1)
  value, grad = jax.value_and_grad(lambda x: jnp.sum(fn(x, targets)))(logits)
  assert np.isfinite(value)
  assert np.all(np.isfinite(np.asarray(grad)))
  if name == 'bce':  # d mean(bce) / d x = (sigmoid(x) - g) / 4: -+1/4 where wrong, 0 where right
    np.testing.assert_allclose(np.asarray(grad)[..., 0],
                               [[[0, 0], [0.25, -0.25]], [[-0.25, 0.25], [0, 0]]], atol=1e-7)


def test_softmax_ce_gradients_finite_at_saturation():
  logits = jnp.asarray(np.array([50.0, -50.0, 0.0], np.float32)).reshape(1, 1, 1, 3)
  logits = jnp.tile(logits, (1, 2, 2, 1))
  labels = np.array([[[0, 1], [2, 0]]])
  grad = jax.grad(lambda x: jnp.sum(losses.softmax_ce(x, labels, class_weights=(1, 2, 3))))(logits)
  assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize('name', sorted(BINARY_LOSSES))
def test_bf16_logits_give_float32(name):
  fn = BINARY_LOSSES[name]
  logits, targets = _batch(3)
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  got = fn(bf16, targets)
  assert got.dtype == jnp.float32
  # Same value as float32 logits after the bf16 rounding; close to the unrounded ones.
  np.testing.assert_allclose(got, fn(bf16.astype(jnp.float32), targets), rtol=1e-6)
  np.testing.assert_allclose(got, fn(logits, targets), rtol=2e-2)


def test_softmax_ce_bf16():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 2, 2))
  got = losses.softmax_ce(jnp.asarray(logits, jnp.bfloat16), labels)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, losses.softmax_ce(logits, labels), rtol=2e-2)
