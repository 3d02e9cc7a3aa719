"""Networks: exact parameter counts (eval_shape, no compile), shapes at tiny sizes,
parameter-tree order, mixed precision, and the deterministic pooling helpers."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from agmr_jax.inference import loading
from agmr_jax.models import MODELS
from agmr_jax.models import dunet as dunet_lib
from agmr_jax.models import layers
from agmr_jax.models.util import count_params
from input_pipeline import recipes

KEY = jax.random.PRNGKey(0)
# Tiny variants: 3 levels at 32x32 keep forward passes to seconds on 2 CPU cores.
TINY = {
    'unet': dict(features=(4, 8, 16), dropout_levels=(2, 3)),
    'attention_unet': dict(features=(4, 8, 16), dropout_levels=(2, 3)),
    'dunet': dict(features=(4, 8, 16), features_3d=(4, 8, 8), dropout_levels=(2, 3)),
}


def _abstract_variables(model, shape, dtype=jnp.float32):
  x = jax.ShapeDtypeStruct(shape, dtype)
  return jax.eval_shape(
      lambda x: model.init({'params': KEY, 'dropout': KEY}, x, train=False), x)


def _random_variables(model, x, seed=0):
  """Concrete variables with the model's tree, filled by numpy.

  `model.init` run eagerly compiles an RNG kernel per parameter shape (~40 s for a
  tiny U-Net on 2 busy cores); eval_shape + numpy gives the same tree in ~1 s.
  BN statistics start at mean 0, variance 1, as flax initialises them.
  """
  abstract = _abstract_variables(model, x.shape, x.dtype)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'batch_stats'" in name:
      return jnp.full(leaf.shape, 1.0 if "'var'" in name else 0.0, leaf.dtype)
    if "'kernel'" in name:
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) * std, leaf.dtype)
    base = 1.0 if "'scale'" in name else 0.0
    return jnp.asarray(base + 0.1 * rng.normal(size=leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def test_registry_builds_every_model_with_overrides():
  """loading.build_model (what training and prediction call) builds each network from a
  config's model_kwargs and compute_dtype; these networks take no modality groups, so a recipe
  that has some (mdanet_isles2022) passes none to them."""
  assert set(MODELS) == {'unet', 'attention_unet', 'dunet', 'mdanet', 'agmr_net', 'clci_net',
                         'cross_attention_unet'}
  recipe = recipes.RECIPES['mdanet_isles2022']
  assert recipe.groups == (1, 1)
  heads = {'unet': ('2_head', '0_down_1'), 'attention_unet': ('2_head', '0_down_1'),
           'dunet': ('3_head', '1_down_1')}
  for name, (head, first) in heads.items():
    config = ml_collections.ConfigDict({
        'model': name, 'model_kwargs': {'num_classes': 3, **TINY[name]},
        'compute_dtype': 'bfloat16'})
    model = loading.build_model(config, recipe)
    assert type(model) is MODELS[name]
    variables = _abstract_variables(model, (2, 32, 32, 4))
    assert variables['params'][head]['conv']['kernel'].shape == (1, 1, 4, 3)  # features[0] -> 3
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
    out, state = jax.eval_shape(
        functools.partial(model.apply, train=False, capture_intermediates=True,
                          mutable=['intermediates']), variables, jnp.zeros((2, 32, 32, 4)))
    assert out['logits'].shape == (2, 32, 32, 3) and out['logits'].dtype == jnp.float32
    # The bfloat16 override reaches the layers: the first stage computes in bfloat16.
    assert state['intermediates'][first]['__call__'][0].dtype == jnp.bfloat16


def test_dunet_parameter_count_is_exactly_the_papers():
  variables = _abstract_variables(MODELS['dunet'](), (1, 192, 192, 4))
  total = count_params(variables)
  trainable = count_params(variables, include_batch_stats=False)
  print(f'\nD-UNet: {total:,} values (Keras count), {trainable:,} trainable params, '
        f'{total - trainable:,} BN moving statistics')
  assert total == 8_640_163
  assert trainable == 8_633_379
  assert total - trainable == 2 * 2 * (32 + 64 + 128 + 256 + 512 + 32 + 64 + 128
                                       + 256 + 128 + 64 + 32)


def _count_of(variables, names):
  """Keras count of the named top-level stages."""
  return count_params({col: {n: variables[col][n] for n in names if n in variables[col]}
                       for col in ('params', 'batch_stats')})


def test_dunet_breakdown_matches_the_docstring():
  v = _abstract_variables(MODELS['dunet'](), (1, 192, 192, 4))
  assert _count_of(v, ['0_stem3d']) == 860_192
  assert _count_of(v, ['1_down_2_fuse']) == 2_305
  assert _count_of(v, ['1_down_3_fuse']) == 5_505
  assert _count_of(v, [f'1_down_{l}' for l in range(1, 6)]) == 4_720_448
  assert _count_of(v, [f'2_up_{i}' for i in range(1, 5)] + ['3_head']) == 3_051_713
  up_convs = sum(_count_of({c: v[c][f'2_up_{i}'] for c in v}, ['0_up']) for i in range(1, 5))
  assert up_convs == 696_800


def test_unet_count_is_dunet_without_3d_branch():
  unet = count_params(_abstract_variables(MODELS['unet'](), (1, 192, 192, 4)))
  plain = count_params(_abstract_variables(MODELS['dunet'](fusion_levels=()), (1, 192, 192, 4)))
  assert unet == plain == 8_640_163 - 860_192 - 2_305 - 5_505 == 7_772_161
  gated = count_params(_abstract_variables(MODELS['attention_unet'](), (1, 192, 192, 4)))
  assert gated - unet == sum(4 * c * c + 6 * c + 1 for c in (256, 128, 64, 32)) == 351_044


@pytest.mark.parametrize('name, expected', [
    ('unet', ['0_down_1', '0_down_2', '0_down_3', '0_down_4', '0_down_5',
              '1_up_1', '1_up_2', '1_up_3', '1_up_4', '2_head']),
    ('attention_unet', ['0_down_1', '0_down_2', '0_down_3', '0_down_4', '0_down_5',
                        '1_up_1', '1_up_2', '1_up_3', '1_up_4', '2_head']),
    ('dunet', ['0_stem3d', '1_down_1', '1_down_2', '1_down_2_fuse', '1_down_3',
               '1_down_3_fuse', '1_down_4', '1_down_5',
               '2_up_1', '2_up_2', '2_up_3', '2_up_4', '3_head']),
])
def test_parameter_tree_reads_in_network_order(name, expected):
  params = _abstract_variables(MODELS[name](), (1, 192, 192, 4))['params']
  assert list(params) == expected == sorted(expected)
  up = params['1_up_1' if name != 'dunet' else '2_up_1']
  assert list(up) == sorted(up)  # 0_up, [1_gate], 2_block
  if name == 'attention_unet':
    assert list(up['1_gate']) == ['0_theta_x', '1_phi_g', '2_psi', '3_out']


@pytest.mark.parametrize('name', ['unet', 'attention_unet', 'dunet'])
def test_forward_shapes_train_and_eval(name):
  model = MODELS[name](num_classes=2, **TINY[name])
  x = jax.random.normal(KEY, (2, 32, 32, 4))
  variables = _random_variables(model, x)
  out = model.apply(variables, x, train=False)
  assert out['logits'].shape == (2, 32, 32, 2) and out['logits'].dtype == jnp.float32
  out_t, updates = model.apply(variables, x, train=True, mutable=['batch_stats'],
                               rngs={'dropout': jax.random.PRNGKey(1)})
  assert out_t['logits'].shape == (2, 32, 32, 2)
  assert (jax.tree_util.tree_structure(updates['batch_stats'])
          == jax.tree_util.tree_structure(variables['batch_stats']))
  assert np.all(np.isfinite(out['logits'])) and np.all(np.isfinite(out_t['logits']))
  # Train mode normalises by batch statistics and drops out: the outputs differ.
  assert not np.allclose(out['logits'], out_t['logits'])


@pytest.mark.parametrize('name', ['unet', 'attention_unet', 'dunet'])
def test_input_not_divisible_raises_clear_error(name):
  cls = MODELS[name].__name__
  with pytest.raises(ValueError, match=re.escape(
      f'{cls}: input H and W must be multiples of 16 (one halving per pooling), got 40x40; '
      'crop or pad the slices.')):
    _abstract_variables(MODELS[name](), (1, 40, 40, 4))
  with pytest.raises(ValueError, match=re.escape(
      f'{cls}: input H and W must be multiples of 4 (one halving per pooling), got 30x32')):
    _abstract_variables(MODELS[name](**TINY[name]), (1, 30, 32, 4))


def test_dunet_rejects_depth_its_3d_stem_cannot_pool():
  with pytest.raises(ValueError, match=re.escape(
      'DUNet: the 3D stem pools the 2 input slices 2 times; need a multiple of 4')):
    _abstract_variables(MODELS['dunet'](), (1, 192, 192, 2))
  with pytest.raises(ValueError, match=re.escape(
      'DUNet: fusion_levels [4] outside the 3D stem levels 1..3')):
    _abstract_variables(MODELS['dunet'](fusion_levels=(4,)), (1, 192, 192, 4))


def test_bf16_compute_keeps_float32_params_stats_and_logits():
  model = MODELS['dunet'](dtype=jnp.bfloat16, **TINY['dunet'])
  x = jax.random.normal(KEY, (1, 32, 32, 4))
  variables = _abstract_variables(model, x.shape)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32
  variables = _random_variables(model, x)
  out, state = model.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=['intermediates'])
  assert out['logits'].dtype == jnp.float32
  inter = state['intermediates']
  assert inter['1_down_1']['__call__'][0].dtype == jnp.bfloat16
  assert inter['0_stem3d']['__call__'][0][0].dtype == jnp.bfloat16
  assert inter['2_up_1']['__call__'][0].dtype == jnp.bfloat16


def test_factories_swap_fusion_upsample_and_add_stage_attention():
  """The hooks AGMR-Net uses: fusion, upsample and a per-stage attention."""

  class Probe(nn.Module):  # stands in for CPA: (x) -> (x, 6x6 map)
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train):
      del train
      return x, nn.Dense(1, name='score')(jnp.mean(x, axis=(1, 2)))

  for fusion in (dunet_lib.AddFusion, dunet_lib.ConcatFusion):
    model = MODELS['dunet'](
        fusion=fusion, stage_attention=Probe,
        upsample=functools.partial(layers.UpsampleConv, method='bilinear'))
    variables = _abstract_variables(model, (1, 192, 192, 4))
    names = list(variables['params'])
    assert names.index('1_down_2_attn') < names.index('1_down_2_fuse') < names.index('1_down_3')
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                         jnp.zeros((1, 192, 192, 4)))
    assert out['logits'].shape == (1, 192, 192, 1)
    assert len(out['encoder_aux']) == 5


def test_max_pool_2x2_matches_nn_max_pool_and_has_finite_gradient():
  x = jax.random.normal(KEY, (2, 8, 6, 3))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))
  grad = jax.grad(lambda x: jnp.sum(layers.max_pool_2x2(x) ** 2))(x)
  assert np.all(np.isfinite(grad))
  # Continuous input has no ties: exactly one input per window gets the gradient.
  assert int(np.sum(grad != 0)) == 2 * 4 * 3 * 3
  x3 = jax.random.normal(KEY, (1, 4, 6, 8, 2))
  np.testing.assert_array_equal(layers.max_pool_2x2x2(x3),
                                nn.max_pool(x3, (2, 2, 2), (2, 2, 2)))


def test_max_pool_odd_size_raises():
  with pytest.raises(ValueError, match=re.escape(
      'max_pool_2x2 needs even spatial sizes, got (5, 4) (input shape (1, 5, 4, 1))')):
    layers.max_pool_2x2(jnp.zeros((1, 5, 4, 1)))
  with pytest.raises(ValueError, match=re.escape(
      'max_pool_2x2x2 needs even spatial sizes, got (3, 4, 4) (input shape (1, 3, 4, 4, 1))')):
    layers.max_pool_2x2x2(jnp.zeros((1, 3, 4, 4, 1)))


def test_upsampling_helpers():
  x = jax.random.normal(KEY, (2, 3, 5, 4))
  near = layers.upsample_nearest_2x(x)
  np.testing.assert_array_equal(near, jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
  np.testing.assert_array_equal(near, jax.image.resize(x, (2, 6, 10, 4), 'nearest'))
  # Bilinear with half-pixel centres (align_corners=False): output i samples input (i - 0.5) / 2,
  # clamped to the edge pixels; for 3 inputs (a, b, c) the rows below.
  up3 = np.array([[1, 0, 0], [.75, .25, 0], [.25, .75, 0], [0, .75, .25], [0, .25, .75],
                  [0, 0, 1]])
  up5 = np.zeros((10, 5))
  for i in range(10):
    src = min(max((i - 0.5) / 2, 0.0), 4.0)
    lo = min(int(src), 3)
    up5[i, lo], up5[i, lo + 1] = lo + 1 - src, src - lo
  expected = np.einsum('ih,jw,bhwc->bijc', up3, up5, np.asarray(x, np.float64))
  np.testing.assert_allclose(layers.upsample_bilinear_2x(x), expected, rtol=1e-5, atol=1e-6)
  # Small integers: every interpolated value is a multiple of 1/16, exact in bfloat16.
  ints = jnp.asarray(np.random.default_rng(0).integers(-8, 8, size=(2, 3, 5, 4)), jnp.bfloat16)
  bil = layers.upsample_bilinear_2x(ints)
  assert bil.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(bil, np.float64),
      np.einsum('ih,jw,bhwc->bijc', up3, up5, np.asarray(ints, np.float64)))


def test_squeeze_excite_has_two_bias_free_dense_layers():
  se = layers.SqueezeExcite(ratio=16)
  variables = se.init(KEY, jnp.ones((1, 4, 4, 64)))
  assert count_params(variables) == 2 * 64 * 4
  assert list(variables['params']) == ['0_reduce', '1_expand']


@pytest.mark.parametrize('depth,kernel', [(4, (3, 3, 3)), (2, (3, 3, 3)), (1, (3, 3, 3)),
                                          (4, (1, 1, 1))])
def test_conv3d_as_2d_equals_nn_conv(depth, kernel):
  x = jax.random.normal(jax.random.key(0), (2, depth, 8, 6, 3))
  ours = layers.Conv3D(5, kernel)
  reference = nn.Conv(5, kernel, padding='SAME', kernel_init=layers.he_normal)
  params = ours.init(jax.random.key(1), x)
  ref_params = reference.init(jax.random.key(1), x)
  # Same parameter tree and initial values (checkpoints and counts unchanged)...
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref_params)
  np.testing.assert_array_equal(params['params']['kernel'], ref_params['params']['kernel'])
  params = jax.tree.map(lambda p: p + 0.1, params)  # ...and the same function (non-zero bias).
  np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x),
                             rtol=1e-5, atol=1e-5)
