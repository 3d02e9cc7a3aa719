"""AGMR-Net: Table 9 parameter counts, CPA / CFF / MDU against hand-built examples and their
equations, the ablation variants, the loss terms, and a short training run that lowers the loss.

Counts and shapes use jax.eval_shape (no compile); numerical checks run small jitted modules
with numpy-filled variables (no RNG kernels to compile).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agmr_jax import objectives
from agmr_jax import runs
from agmr_jax.models import MODELS
from agmr_jax.models import cff as cff_lib
from agmr_jax.models import cpa as cpa_lib
from agmr_jax.models import dunet as dunet_lib
from agmr_jax.models import mdu as mdu_lib
from agmr_jax.models.agmr_net import MDUUpsample
from agmr_jax.models.mdu import MDU
from agmr_jax.models.util import count_params
from agmr_jax.objectives import agmr as objectives_agmr
from agmr_jax.training import train
from configs import agmr_net as agmr_config
from tests import conftest

KEY = jax.random.PRNGKey(0)
FULL = (1, 192, 192, 4)
TABLE9 = {(3, 5, 7, 9): 23_799_283, (3, 3, 3, 3): 12_658_163, (5, 5, 5, 5): 18_228_723,
          (7, 7, 7, 7): 26_584_563, (9, 9, 9, 9): 37_725_683}
DECODER_IN = (512, 256, 128, 64)  # MDU input widths, coarsest stage first.


def _abstract(model, shape, *args):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(
      lambda x: model.init({'params': KEY, 'dropout': KEY}, x, *args, train=False), x)


def _trainable(model, shape=FULL) -> int:
  return count_params(_abstract(model, shape), include_batch_stats=False)


def _filled(abstract, seed=0):
  """Concrete variables with numpy values; BN statistics mean 0.1, variance 2 (non-trivial)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name:
      return jnp.full(leaf.shape, 2.0, leaf.dtype)
    if "'mean'" in name:
      return jnp.full(leaf.shape, 0.1, leaf.dtype)
    scale = np.sqrt(1.0 / np.prod(leaf.shape[:-1])) if "'kernel'" in name else 0.3
    return jnp.asarray(rng.normal(size=leaf.shape) * scale, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


# --- parameter counts (Table 9) -------------------------------------------------------------

@pytest.fixture(scope='module')
def table9_counts():
  return {k: _trainable(MODELS['agmr_net'](mdu_kernels=k)) for k in TABLE9}


def test_trainable_counts_match_table9(table9_counts):
  for kernels, count in table9_counts.items():
    print(f'\nAGMR-Net {kernels}: {count:,} trainable (Table 9: {TABLE9[kernels]:,})')
    assert count == TABLE9[kernels]  # The structure documented in agmr_net.py lands exactly.


def test_kernel_variants_differ_exactly_as_table9(table9_counts):
  base = (3, 5, 7, 9)
  for k, count in table9_counts.items():
    per_branch = (sum(q * q for q in base) - sum(q * q for q in k)) // 4
    assert table9_counts[base] - count == per_branch * sum(c * c for c in DECODER_IN)
    assert table9_counts[base] - count == TABLE9[base] - TABLE9[k]
  assert (table9_counts[base] - table9_counts[(3, 3, 3, 3)] == 11_141_120
          == 32 * sum(c * c for c in DECODER_IN))


def test_dunet_counted_the_same_way_and_the_documented_breakdown():
  dunet = _abstract(MODELS['dunet'](), FULL)
  assert count_params(dunet, include_batch_stats=False) == 8_633_379
  assert count_params(dunet) == 8_640_163
  agmr = _abstract(MODELS['agmr_net'](mdu_conv=False), FULL)
  # The gap the post-MDU conv-BN-ReLU closes (agmr_net.py), and the BN statistics.
  assert TABLE9[(3, 5, 7, 9)] - count_params(agmr, include_batch_stats=False) == 784_800
  assert count_params(agmr) - count_params(agmr, include_batch_stats=False) == 2 * (5_024 - 480)


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

TINY = dict(features=(4, 8, 16), features_3d=(4, 8, 16), dropout_levels=(3,))


def test_outputs_and_parameter_tree_order():
  model = MODELS['agmr_net'](**TINY, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, 32, 32, 4), jnp.float32)
  out, v = jax.eval_shape(
      lambda x: model.init_with_output({'params': KEY, 'dropout': KEY}, x, train=False), x)
  assert out['logits'].shape == (2, 32, 32, 1) and out['logits'].dtype == jnp.float32
  assert out['cpa_logits'].shape == (2, 3, 6, 6) and out['cpa_logits'].dtype == jnp.float32
  names = list(v['params'])
  assert names == sorted(names)
  assert names[:4] == ['0_stem3d', '1_down_1', '1_down_1_attn', '1_down_2']
  assert list(v['params']['2_up_1']['0_up']) == ['0_mdu', '1_conv']
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(v))  # bf16 compute only


def test_modules_fit_dunet_factory_contracts():
  """CPA, CFF and the MDU up path plug into DUNet's factories: the same network, same count."""
  via_dunet = MODELS['dunet'](fusion=cff_lib.CFF, upsample=MDUUpsample,
                              stage_attention=cpa_lib.CPA, **TINY)
  x = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)
  out, v = jax.eval_shape(
      lambda x: via_dunet.init_with_output({'params': KEY, 'dropout': KEY}, x, train=False), x)
  assert len(out['encoder_aux']) == 3 and out['encoder_aux'][0].shape == (1, 6, 6)
  assert count_params(v) == count_params(_abstract(MODELS['agmr_net'](**TINY), x.shape))


def test_bad_inputs_and_options_raise_clear_errors():
  with pytest.raises(ValueError, match='AGMRNet: input H and W must be multiples of 4'):
    _abstract(MODELS['agmr_net'](**TINY), (1, 30, 32, 4))
  with pytest.raises(ValueError, match=(  # the 3D stem pools 4 slices twice
      'AGMRNet: the 3D stem pools the 2 input slices 2 times; need a multiple of 4')):
    _abstract(MODELS['agmr_net'](**TINY), (1, 32, 32, 2))
  with pytest.raises(ValueError, match=r"AGMRNet.fusion must be one of .*'sum'"):
    _abstract(MODELS['agmr_net'](fusion='sum', **TINY), (1, 32, 32, 4))


def _rows():
  """Each distinct ablation setting once (several rows share one)."""
  seen = {}
  for name, variant in agmr_config.ABLATIONS.items():
    seen.setdefault(variant, name)
  return list(seen.values())


@pytest.mark.parametrize('row', _rows())
def test_every_ablation_row_builds_with_its_modules(row):
  kwargs = dict(agmr_config.get_config(f'row={row}').model_kwargs.to_dict(), **TINY)
  v = _abstract(MODELS['agmr_net'](**kwargs), (1, 32, 32, 4))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(v['params'])]
  has = lambda part: any(part in p for p in paths)
  assert has('_attn') == (kwargs['attention'] != 'none')
  assert has("'0_mdu'") == (kwargs['mdu_position'] == 'decoder')
  assert has('_0ms') == (kwargs['mdu_position'] == 'encoder')
  assert has("'1_gate'") == (kwargs['mdu_position'] == 'skip')
  assert has("'1_f1_2d'") == (kwargs['fusion'] in ('cff', 'cff_concat'))
  if row == 't5_baseline':  # Every module off: exactly D-UNet.
    dunet = _abstract(MODELS['dunet'](**TINY), (1, 32, 32, 4))
    assert count_params(v) == count_params(dunet)


def test_config_rows_and_keys():
  assert agmr_config.get_config('row=t9_k3').model_kwargs.mdu_kernels == (3, 3, 3, 3)
  c = agmr_config.get_config('row=t8_cff_r32,cff_ratio=16')  # explicit keys win
  assert c.model_kwargs.cff_ratio == 16 and c.model_kwargs.attention == 'none'
  assert agmr_config.get_config('cpa=False').model_kwargs.attention == 'none'
  with pytest.raises(ValueError, match=r"row= takes one of t5_baseline, .*; got \['t99'\]"):
    agmr_config.get_config('row=t99')
  demo = agmr_config.get_config('demo')
  assert tuple(demo.data.image_size) == (64, 64) and demo.batch_size == 8
  assert tuple(demo.model_kwargs.features) == (8, 16, 32, 64, 128)
  assert demo.model == 'agmr_net' and demo.loss.name == 'agmr'  # The paper's network and loss.
  assert demo.data.num_subjects == 60 and demo.bn_momentum == 0.9
  assert demo.data.lesion_balance == 'case' and demo.eval_every_steps == demo.num_train_steps
  paper = agmr_config.get_config()
  assert (paper.optimizer.learning_rate, paper.optimizer.decay_rate, paper.num_epochs,
          paper.batch_size, paper.loss.kwargs.cpa_weight) == (1e-3, 0.96, 150.0, 8, 0.15)


# --- loss -----------------------------------------------------------------------------------

def test_sobel_magnitude_of_a_step_edge():
  x = np.zeros((1, 5, 6), np.float32)
  x[:, :, 3:] = 1.0  # vertical edge between columns 2 and 3
  mag = np.asarray(objectives_agmr.sobel_magnitude(jnp.asarray(x)))
  # Interior rows: Sobel_x = 1 + 2 + 1 = 4 on both sides of the edge, 0 elsewhere.
  # Zero padding makes the last column (1 next to the padded 0) an edge as well.
  np.testing.assert_allclose(mag[0, 2], [1e-3, 1e-3, 4, 4, 1e-3, 4], rtol=1e-4)


def test_agmr_loss_terms_and_values():
  mask = np.zeros((2, 12, 12), np.uint8)
  mask[0, 2:6, 2:6] = 1
  perfect = np.where(mask > 0, 30.0, -30.0).astype(np.float32)[..., None]
  cpa_logits = jnp.zeros((2, 5, 6, 6))
  batch = {'mask': mask}
  objective = jax.jit(objectives.make_objective('agmr'))
  loss, m = objective({'logits': perfect, 'cpa_logits': cpa_logits}, batch)
  assert loss.shape == (2,)
  # A perfect prediction leaves only the CPA term: BCE(sigmoid(0), prior) = log 2 per patch.
  np.testing.assert_allclose(m['sobel'], 0.0, atol=1e-6)
  np.testing.assert_allclose(m['cpa_bce'], 5 * np.log(2), rtol=1e-6)
  np.testing.assert_allclose(loss, 0.15 * 5 * np.log(2), atol=1e-4)
  assert float(m['dice']) == 1.0
  # Components add up for an arbitrary prediction, per example.
  logits = np.random.default_rng(0).normal(size=(2, 12, 12, 1)).astype(np.float32)
  cpa_logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 6, 6)), jnp.float32)
  loss, m = objective({'logits': logits, 'cpa_logits': cpa_logits}, batch)
  stages = jax.jit(objectives_agmr.cpa_bce)(cpa_logits, jnp.asarray(mask))
  np.testing.assert_allclose(m['cpa_bce'], np.mean(np.sum(stages, axis=1)), rtol=1e-6)
  np.testing.assert_allclose(np.mean(loss), m['focal'] + m['log_dice'] + m['sobel']
                             + 0.15 * m['cpa_bce'], rtol=1e-5)
  # Without CPA maps (attention='fa' / 'none') there is no CPA term.
  _, m = jax.eval_shape(objectives_agmr.agmr_loss, {'logits': logits}, batch)
  assert 'cpa_bce' not in m


# --- training -------------------------------------------------------------------------------

def test_few_hundred_steps_lower_the_loss_and_raise_validation_dice(tiny_built, data_dir,
                                                                    tmp_path):
  # 200 steps of a two-level AGMR-Net on synthetic_tiny, validated every 50 (per-case 3D Dice on
  # the validation fold): on this machine loss 2.88 -> 0.76, CPA BCE 1.17 -> 0.34, validation
  # Dice 0.52 -> 0.93, in about 45 s (compiling the train and predict steps is a third of it).
  config = conftest.tiny_config(
      agmr_config, data_dir, **{'model_kwargs.features': (4, 8), 'model_kwargs.features_3d': (4, 8),
                                'model_kwargs.fusion_levels': (2,),
                                'model_kwargs.dropout_levels': (2,),
                                'num_train_steps': 200, 'log_every_steps': 50,
                                'eval_every_steps': 50, 'checkpoint_every_steps': 200,
                                'final_eval': False, 'optimizer.learning_rate': 3e-3})
  train.train_and_evaluate(config, str(tmp_path))
  metrics = runs.read_metrics(tmp_path)
  rows = [r for r in metrics if 'train/loss' in r]
  dice = [r['val/dice'] for r in metrics if 'val/dice' in r]
  assert [r['step'] for r in rows] == [50, 100, 150, 200] and len(dice) == 4
  print('\n' + '\n'.join(f"step {r['step']}: loss {r['train/loss']:.3f} "
                         f"cpa_bce {r['train/cpa_bce']:.3f} val dice {d:.3f}"
                         for r, d in zip(rows, dice)))
  assert rows[-1]['train/loss'] < 0.5 * rows[0]['train/loss']
  assert rows[-1]['train/cpa_bce'] < 0.5 * rows[0]['train/cpa_bce']  # CPA maps approach the priors
  assert dice[-1] > dice[0] + 0.2 and dice[-1] > 0.8
  assert {'train/focal', 'train/log_dice', 'train/sobel', 'train/cpa_bce_2'} <= set(rows[0])
