"""AGMR-Net's modules on their own: CPA (patch attention, prior map), CFF (channel fusion) and
MDU (multi-kernel transposed-conv upsampling), against hand-built examples and numpy references.
The assembled network, its configs, loss and training are in test_agmr_net.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agmr_jax.models import cff as cff_lib
from agmr_jax.models import cpa as cpa_lib
from agmr_jax.models import dunet as dunet_lib
from agmr_jax.models import mdu as mdu_lib
from agmr_jax.models.mdu import MDU
from agmr_jax.models.util import count_params
from tests.test_agmr_net import KEY
from tests.test_agmr_net import TABLE9
from tests.test_agmr_net import _filled


# --- CPA ------------------------------------------------------------------------------------

CPA_APPLY = jax.jit(lambda v, x: cpa_lib.CPA().apply(v, x, train=False))


def _identity_cpa_params(grid=6):
  """f_1 copies descriptors 0..17 to the hidden layer, f_2 copies hidden j to logit j."""
  n, h = grid * grid, grid * grid // 2
  return {'params': {'0_f1': {'kernel': jnp.eye(n, h)}, '1_f2': {'kernel': jnp.eye(h, n)}}}


def test_cpa_attention_on_a_hand_built_example():
  # 12x12 input, 2 channels: every 2x2 patch (i, j) has channel mean i + j / 10 (Eqs. 1-2).
  patch_value = np.add.outer(np.arange(6.0), np.arange(6.0) / 10)
  x = np.zeros((1, 12, 12, 2), np.float32)
  x[0, :, :, 0] = np.kron(patch_value, np.ones((2, 2))) * 2 - 1.0
  x[0, :, :, 1] = 1.0  # Means (2v - 1 + 1) / 2 = v.
  y, logits = CPA_APPLY(_identity_cpa_params(), jnp.asarray(x))
  expected_logits = np.zeros(36)
  expected_logits[:18] = patch_value.reshape(-1)[:18]  # Row-major patches 0..17, ReLU'd.
  np.testing.assert_allclose(logits[0].reshape(-1), expected_logits, rtol=1e-6, atol=1e-6)
  a = 1 / (1 + np.exp(-expected_logits.reshape(6, 6)))
  attention = np.kron(a, np.ones((2, 2)))  # Eq. 4: constant over each 2x2 patch.
  np.testing.assert_allclose(y[0], x[0] * (1 + attention[..., None]), rtol=1e-5)  # Y = A F + F



def test_cpa_patches_on_sizes_not_divisible_by_the_grid():
  # PyTorch adaptive-pool bins for 8 pixels into 6 patches, written out by hand.
  assert cpa_lib.patch_bounds(8, 6) == [(0, 2), (1, 3), (2, 4), (4, 6), (5, 7), (6, 8)]
  assert cpa_lib.patch_bounds(192, 6) == [(32 * p, 32 * p + 32) for p in range(6)]
  assert cpa_lib.patch_bounds(2, 6) == [(0, 1)] * 3 + [(1, 2)] * 3
  x = jnp.arange(64.0).reshape(1, 8, 8)
  pooled = np.asarray(cpa_lib.patch_average(x, 6))
  assert pooled[0, 0, 0] == np.mean([0, 1, 8, 9])
  assert pooled[0, 3, 5] == np.mean([4 * 8 + 6, 4 * 8 + 7, 5 * 8 + 6, 5 * 8 + 7])
  up = np.asarray(cpa_lib.patch_upsample(jnp.arange(36.0).reshape(1, 6, 6), (4, 4)))
  np.testing.assert_array_equal(up[0, :, 0], [0, 6, 18, 24])  # rows 0..3 -> patches 0, 1, 3, 4


def test_prior_map_is_the_mask_max_pooled_over_the_patch_grid():
  mask = np.zeros((2, 192, 192), np.uint8)
  mask[0, 40, 100] = 1  # patch (40 // 32, 100 // 32) = (1, 3)
  mask[0, 191, 0] = 2  # contour label counts as lesion: patch (5, 0)
  prior = np.asarray(cpa_lib.prior_map(jnp.asarray(mask)))
  expected = np.zeros((2, 6, 6), np.float32)
  expected[0, 1, 3] = expected[0, 5, 0] = 1
  np.testing.assert_array_equal(prior, expected)
  small = np.zeros((1, 8, 8), np.uint8)
  small[0, 1, 6] = 1  # row 1 is in patches 0, 1; column 6 in patches 4, 5 (overlapping bins)
  prior = np.asarray(cpa_lib.prior_map(jnp.asarray(small)))
  assert set(zip(*np.nonzero(prior[0]))) == {(0, 4), (0, 5), (1, 4), (1, 5)}


# --- CFF ------------------------------------------------------------------------------------

def _np_conv3x3(x, kernel, bias):
  """'SAME' 3x3 conv, NHWC, in numpy."""
  pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  out = sum(pad[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
            for dy in range(3) for dx in range(3))
  return out + bias


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize('shared_hidden', [False, True])
def test_cff_output_equals_its_formula_on_fixed_weights(shared_hidden):
  c, eps = 8, 1e-3
  module = cff_lib.CFF(c, ratio=2, shared_hidden=shared_hidden)
  x3d = np.random.default_rng(1).normal(size=(2, 2, 4, 4, 3)).astype(np.float32)
  x2d = np.random.default_rng(2).normal(size=(2, 4, 4, c)).astype(np.float32)
  v = _filled(jax.eval_shape(lambda a, b: module.init(KEY, a, b, train=False), x3d, x2d))
  out = jax.jit(lambda v, a, b: module.apply(v, a, b, train=False))(v, x3d, x2d)
  p = jax.tree.map(np.asarray, v['params'])
  proj, stats = p['0_project'], jax.tree.map(np.asarray, v['batch_stats']['0_project'])
  sq = x3d @ proj['0_squeeze3d']['kernel'].reshape(3, 1) + proj['0_squeeze3d']['bias']
  sq = np.transpose(sq[..., 0], (0, 2, 3, 1))  # depth -> channels
  conv = proj['1_conv2d']
  z = _np_conv3x3(sq, conv['conv']['kernel'], conv['conv']['bias'])
  bn = stats['1_conv2d']['bn']
  t = np.maximum((z - bn['mean']) / np.sqrt(bn['var'] + eps) * conv['bn']['scale']
                 + conv['bn']['bias'], 0)
  g = np.concatenate([t.mean(axis=(1, 2)), x2d.mean(axis=(1, 2))], axis=-1)  # Eq. 5
  if shared_hidden:
    h2 = h3 = np.maximum(g @ p['1_f1']['kernel'], 0)
    assert p['1_f1']['kernel'].shape == (2 * c, 2 * c // 2)
  else:
    h2 = np.maximum(g @ p['1_f1_2d']['kernel'], 0)
    h3 = np.maximum(g @ p['1_f1_3d']['kernel'], 0)
    assert p['1_f1_2d']['kernel'].shape == (2 * c, c // 2)
  w2 = _sigmoid(h2 @ p['2_f2_2d']['kernel'])  # Eq. 6
  w3 = _sigmoid(h3 @ p['2_f2_3d']['kernel'])  # Eq. 7
  expected = t * w3[:, None, None, :] + x2d * w2[:, None, None, :]  # Eq. 8
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_cff_mlp_sizes_and_table8_parity():
  def mlp_count(module, c):
    v = _abstract_fusion(module, c)
    return count_params({'params': {k: x for k, x in v['params'].items() if k != '0_project'}})
  for c in (64, 128):
    se = _abstract_fusion(dunet_lib.SEAddFusion(c), c)
    se_count = count_params({'params': {k: v for k, v in se['params'].items() if 'se' in k}})
    assert se_count == c * c // 4  # D-UNet: 2 (C * C/16 + C/16 * C)
    assert mlp_count(cff_lib.CFF(c, ratio=8), c) == 6 * c * c // 8  # the text's two MLPs
    # The paper's Table 8 formula 2C*2C/R + 2(2C/R*C) = C^2/4 at R = 32: SE's count.
    assert mlp_count(cff_lib.CFF(c, ratio=32, shared_hidden=True), c) == se_count


def _abstract_fusion(module, c):
  x3d = jax.ShapeDtypeStruct((1, 2, 8, 8, 16), jnp.float32)
  x2d = jax.ShapeDtypeStruct((1, 8, 8, c), jnp.float32)
  return jax.eval_shape(lambda a, b: module.init(KEY, a, b, train=False), x3d, x2d)


# --- MDU ------------------------------------------------------------------------------------

@pytest.mark.parametrize('kernels', list(TABLE9))
@pytest.mark.parametrize('hw', [(6, 6), (5, 7)])
def test_mdu_output_is_exactly_twice_the_input(kernels, hw):
  module = MDU(kernels)
  x = jax.ShapeDtypeStruct((2, *hw, 8), jnp.float32)
  variables = jax.eval_shape(lambda x: module.init(KEY, x, train=False), x)
  out = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)
  assert out.shape == (2, 2 * hw[0], 2 * hw[1], 8)
  same = MDU(kernels, upsample=False)
  out = jax.eval_shape(lambda x: same.init_with_output(KEY, x, train=False)[0], x)
  assert out.shape == (2, *hw, 8)
  weights = sum(k * k * 8 * 2 for k in kernels)
  assert count_params(variables, include_batch_stats=False) == weights + 8 + 2 * 8


def test_mdu_rejects_even_or_unit_kernels_and_uneven_channel_splits():
  x = jax.ShapeDtypeStruct((1, 4, 4, 8), jnp.float32)
  with pytest.raises(ValueError, match=r'kernel sizes must be odd.*\[4\]'):
    jax.eval_shape(lambda x: MDU((3, 4, 5, 7)).init(KEY, x, train=False), x)
  with pytest.raises(ValueError, match=r'at least 3.*\[1\]'):
    jax.eval_shape(lambda x: MDU((1, 3, 5, 7)).init(KEY, x, train=False), x)
  with pytest.raises(ValueError, match='do not split evenly over 3 branches'):
    jax.eval_shape(lambda x: MDU((3, 5, 7)).init(KEY, x, train=False), x)


@pytest.mark.parametrize('k', [3, 5, 7, 9])
def test_subpixel_transposed_conv_equals_flax_conv_transpose(k):
  x = jnp.asarray(np.random.default_rng(k).normal(size=(2, 5, 6, 3)), jnp.float32)
  ours = mdu_lib.ConvTranspose2x(4, k)
  v = _filled(jax.eval_shape(lambda x: ours.init(KEY, x), x))
  reference = nn.ConvTranspose(4, (k, k), strides=(2, 2), padding='SAME')
  assert jax.tree.map(jnp.shape, v) == jax.tree.map(
      jnp.shape, jax.eval_shape(lambda x: reference.init(KEY, x), x))  # same parameters
  np.testing.assert_allclose(jax.jit(ours.apply)(v, x), jax.jit(reference.apply)(v, x),
                             rtol=1e-5, atol=1e-5)


def test_mdu_matches_a_numpy_transposed_convolution():
  """One branch, 1 channel: ConvT with stride 2 = zero-insertion then a k x k correlation."""
  module = MDU((3,), features=1, dropout_rate=0.0)
  x = np.random.default_rng(3).normal(size=(1, 3, 3, 1)).astype(np.float32)
  v = _filled(jax.eval_shape(lambda x: module.init(KEY, x, train=False), x))
  out = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(v, x))[0, :, :, 0]
  p = v['params']
  k = np.asarray(p['0_deconv3']['kernel'])[:, :, 0, 0]
  dilated = np.zeros((5, 5))
  dilated[::2, ::2] = x[0, :, :, 0]
  # lax.conv_transpose 'SAME', stride 2, k = 3: 2 zeros before, 1 after, kernel not flipped
  # (PyTorch's padding=1, output_padding=1 puts them the other way round).
  pad = np.pad(dilated, ((2, 1), (2, 1)))
  z = np.array([[np.sum(pad[i:i + 3, j:j + 3] * k) for j in range(6)] for i in range(6)])
  z += float(p['0_deconv3']['bias'][0])
  bn = (z - 0.1) / np.sqrt(2.0 + 1e-3) * float(p['0_norm3']['scale'][0]) + float(
      p['0_norm3']['bias'][0])
  np.testing.assert_allclose(out, np.maximum(bn, 0), rtol=1e-4, atol=1e-5)


# --- the network and its variants -----------------------------------------------------------
