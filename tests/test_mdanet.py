"""MDANet: DASC and GCFB against their equations on fixed weights, group order, the masked
similarity loss, the paper-size parameter count, and one train step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agmr_jax import objectives
from agmr_jax import state as state_lib
from agmr_jax.models import MODELS
from agmr_jax.models import layers
from agmr_jax.models import mdanet
from agmr_jax.models import util
from agmr_jax.models.dasc import DASC
from agmr_jax.models.dasc import GroupSkip
from agmr_jax.models.gcfb import ChannelGCFB
from agmr_jax.models.gcfb import GraphConv
from agmr_jax.models.gcfb import SpaceGCFB
from agmr_jax.models.msc import MSC
from agmr_jax.objectives import losses
from agmr_jax.objectives import mdanet as objectives_mdanet
from agmr_jax.inference import loading
from agmr_jax.training import train_step as train_step_lib
from configs import mdanet as mdanet_config
from input_pipeline import recipes


def normal(seed, shape):
  return np.asarray(jax.random.normal(jax.random.key(seed), shape), np.float32)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def init(module, *args, **kwargs):
  """module.init jitted: one compilation instead of one per primitive."""
  return jax.jit(lambda key, *a: module.init(key, *a, **kwargs))(jax.random.key(0), *args)


def apply(module, variables, *args, **kwargs):
  return jax.jit(lambda v, *a: module.apply(v, *a, **kwargs))(variables, *args)


def conv1x1(x, params):
  return x @ np.asarray(params['kernel'])[0, 0] + np.asarray(params.get('bias', 0.0))


def test_dasc_equals_its_equations():
  f_d, f_de = normal(0, (2, 8, 8, 6)), normal(1, (2, 4, 4, 10))
  module = DASC()
  variables = init(module, f_d, f_de, train=False)
  p = variables['params']
  guide = conv1x1(f_de, p['1_theta3']).repeat(2, axis=1).repeat(2, axis=2)
  w = sigmoid(conv1x1(conv1x1(f_d, p['0_theta2']) + guide, p['2_theta1']))  # Eq. (2)
  assert w.shape == (2, 8, 8, 1) and p['0_theta2']['kernel'].shape[-1] == 3  # C_int = C / 2
  np.testing.assert_allclose(apply(module, variables, f_d, f_de, train=False),
                             f_d + w * f_d, rtol=1e-5, atol=1e-5)  # Eq. (3)


def test_graph_conv_equals_relu_w_i_minus_a_g():
  g = normal(3, (2, 6, 5))
  module = GraphConv()
  variables = init(module, g)
  a = np.asarray(variables['params']['0_node_conv']['kernel']).T  # (6, 6)
  w = np.asarray(variables['params']['1_feature_conv']['kernel'])  # (5, 5)
  expected = np.maximum(((np.eye(6) - a) @ g) @ w, 0.0)
  assert expected.min() == 0.0 and expected.max() > 0.0  # the ReLU is exercised
  np.testing.assert_allclose(apply(module, variables, g), expected, rtol=1e-5, atol=1e-5)


def gcn_reference(g, params):
  a = np.asarray(params['0_node_conv']['kernel']).T
  return np.maximum((g - a @ g) @ np.asarray(params['1_feature_conv']['kernel']), 0.0)


def test_channel_gcfb_equals_glore_embedding_on_the_concatenated_graph():
  f1, f2 = normal(5, (2, 4, 4, 8)), normal(6, (2, 4, 4, 8))
  module = ChannelGCFB()  # N = 2 nodes, E = 4 features
  variables = init(module, f1, f2, train=False)
  out = apply(module, variables, f1, f2, train=False)
  p = variables['params']
  proj = [conv1x1(f, p['0_theta']).reshape(2, 16, 2) for f in (f1, f2)]
  state = [conv1x1(f, p['1_phi']).reshape(2, 16, 4) for f in (f1, f2)]
  graphs = [np.swapaxes(pr, 1, 2) @ s for pr, s in zip(proj, state)]  # Eq. (4): (2, N, E)
  updated = gcn_reference(np.concatenate(graphs, axis=1), p['2_gcn'])  # (2, 2N, E)
  bn = p['4_bn']
  for i, f in enumerate((f1, f2)):
    back = (proj[i] @ updated[:, 2 * i:2 * i + 2]).reshape(2, 4, 4, 4)  # Eq. (5)
    y = conv1x1(back, p['3_extend']) / np.sqrt(1.0 + layers.BN_EPSILON)
    expected = f + y * np.asarray(bn['scale']) + np.asarray(bn['bias'])
    np.testing.assert_allclose(out[i], expected,
                               rtol=1e-4, atol=1e-4)


def test_space_gcfb_uses_patches_as_nodes():
  f1, f2 = normal(8, (1, 4, 4, 3)), normal(9, (1, 4, 4, 3))
  module = SpaceGCFB(patch_size=2)
  variables = init(module, f1, f2, train=False)
  pos = np.asarray(variables['params']['position'])
  assert pos.shape == (4, 12) and variables['params']['gcn']['0_node_conv']['kernel'].shape == (8, 8)
  patches = lambda f: f.reshape(1, 2, 2, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 4, 12)
  graph = np.concatenate([patches(f1) + pos, patches(f2) + pos], axis=1)
  updated = gcn_reference(graph, variables['params']['gcn'])
  out = apply(module, variables, f1, f2, train=False)
  for i, f in enumerate((f1, f2)):
    back = updated[:, 4 * i:4 * i + 4].reshape(1, 2, 2, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5)
    np.testing.assert_allclose(out[i], f + back.reshape(1, 4, 4, 3), rtol=1e-5, atol=1e-5)


def test_msc_parameter_count():
  variables = jax.eval_shape(lambda: MSC(64).init(jax.random.key(0), jnp.zeros((1, 8, 8, 8)),
                                                  train=False))
  # Chains 32 / 16 / 16 wide: 9 (C_in C + c2^2 + 2 c3^2) + 5 (c1 + 2 c2 + 3 c3).
  assert util.count_params(variables) == 9 * (8 * 64 + 16**2 + 2 * 16**2) + 5 * (32 + 32 + 48)


def forward_cost(model, shape):
  """(parameters with BN's 4 per channel, XLA flops of the jitted eval forward pass)."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
  return util.count_params(variables), lowered.cost_analysis()['flops']


def test_xla_flops_convention_two_per_multiply_add_padding_taps_excluded():
  # 3x3 'SAME' conv on 4x4, one channel in and out: valid taps per axis 2 + 3 + 3 + 2 = 10, so
  # 100 multiply-adds (144 with the padding taps) -> 200 XLA flops.
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  lowered = jax.jit(conv).lower(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)))
  assert lowered.cost_analysis()['flops'] == 200


def test_paper_size_parameters_and_flops():
  """Widths 64..1024 at the documented ISLES 2018 input (the config's 128x128, 4 maps): the
  paper's Table 1 gives 25.3 M parameters and 11.22 G (multiply-adds = XLA flops / 2)."""
  config = mdanet_config.get_config()
  shape = (1, *config.data.image_size, 4)
  assert shape == (1, 128, 128, 4)
  count, flops = forward_cost(MODELS['mdanet'](), shape)
  assert count == 24_341_285  # 3.8 % under the paper's 25.3 M
  assert flops / 2 == pytest.approx(11.696e9, rel=1e-3)  # the docstring's 11.70 G; paper 11.22 G


@pytest.fixture(scope='module')
def tiny():
  """The tiny ISLES 2022 config's MDANet, at three levels to keep compilation short."""
  config = mdanet_config.get_config('tiny,dataset=isles2022')
  config.model_kwargs.features = (4, 8, 16)
  model = loading.build_model(config, recipes.RECIPES['mdanet_isles2022'])  # groups DWI | ADC
  assert model.groups == (1, 1)
  tx = optax.adam(1e-3)
  state = jax.jit(state_lib.make_init(model, (2, 16, 16, 2), tx))(jax.random.key(0))
  return config, model, state


def test_swapping_the_groups_flips_the_sign_of_the_difference_maps(tiny):
  _, model, state = tiny
  x = normal(11, (2, 16, 16, 2))

  @jax.jit
  def run(variables, x):
    out, inter = model.apply(variables, x, train=False, mutable=['intermediates'],
                             capture_intermediates=lambda mdl, _: isinstance(mdl, GroupSkip))
    skips = {k: v['__call__'][0] for k, v in inter['intermediates'].items() if 'skip' in k}
    return out, skips

  variables = state.variables
  swapped = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    tree['0_stage1_group1'], tree['0_stage1_group2'] = (tree['0_stage1_group2'],
                                                        tree['0_stage1_group1'])
    swapped[collection] = tree
  out, skips = run(variables, x)
  out_swapped, skips_swapped = run(swapped, x[..., ::-1])
  assert sorted(skips) == ['2_skip_1', '2_skip_2']
  for name, f_d in skips.items():
    assert float(jnp.abs(f_d).max()) > 0
    np.testing.assert_allclose(skips_swapped[name], -f_d, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out_swapped['group_features'][0], out['group_features'][1])


def test_similarity_loss_is_zero_for_identical_features_and_ignores_lesions():
  f = normal(13, (2, 8, 8, 5))
  lesion = np.zeros((2, 8, 8), np.float32)
  lesion[:, 2:5, 3:6] = 1
  assert np.allclose(objectives_mdanet.similarity_loss(f, f, lesion), 0.0, atol=1e-6)
  inside_changed = np.where(lesion[..., None] > 0, normal(14, f.shape), f)
  assert np.allclose(objectives_mdanet.similarity_loss(f, inside_changed, lesion), 0.0, atol=1e-6)
  assert np.all(objectives_mdanet.similarity_loss(f, inside_changed, 0 * lesion) > 1e-3)
  # The value: 1 - cos of the GAP vectors over healthy pixels.
  g = normal(15, f.shape)
  keep = lesion[0] == 0
  a, b = f[0][keep].mean(axis=0), g[0][keep].mean(axis=0)
  expected = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  np.testing.assert_allclose(objectives_mdanet.similarity_loss(f, g, lesion)[0], expected,
                             rtol=1e-5)
  # An all-lesion slice has nothing to align.
  assert float(objectives_mdanet.similarity_loss(f, g, np.ones_like(lesion))[0]) == 0.0


def test_objective_is_dice_plus_ce_plus_lambda_similarity():
  logits = normal(16, (2, 8, 8, 1))
  mask = (normal(17, (2, 8, 8)) > 0.5).astype(np.uint8)
  feats = (normal(18, (2, 8, 8, 3)), normal(19, (2, 8, 8, 3)))
  outputs, batch = {'logits': logits, 'group_features': feats}, {'mask': mask}
  segment = losses.dice_loss(logits, mask, squared=False) + losses.sigmoid_bce(logits, mask)
  similarity = objectives_mdanet.similarity_loss(*feats, mask)
  loss, metrics = objectives.make_objective('mdanet', lam=0.5)(outputs, batch)
  np.testing.assert_allclose(loss, segment + 0.5 * similarity, rtol=1e-6)
  assert {'dice', 'segment', 'similarity'} <= set(metrics)
  loss0, _ = objectives.make_objective('mdanet', lam=0.0)({'logits': logits}, batch)
  np.testing.assert_allclose(loss0, segment, rtol=1e-6)
  with pytest.raises(ValueError, match='group_features'):
    objectives.make_objective('mdanet', lam=1.0)({'logits': logits}, batch)


def test_config_rows_select_the_ablations():
  assert mdanet_config.get_config('row=t4_concat').model_kwargs.skip == 'concat'
  assert mdanet_config.get_config('row=t5_nonlocal').model_kwargs.fusion == 'nonlocal'
  assert mdanet_config.get_config('row=t6_lam025').loss.kwargs.lam == 0.25
  baseline = mdanet_config.get_config('row=t3_unet')
  assert baseline.model == 'unet' and baseline.loss.kwargs.lam == 0.0
  c = mdanet_config.get_config('dataset=synthetic_isles2022')
  assert c.data.recipe == 'mdanet_isles2022'
  c = mdanet_config.get_config()
  assert tuple(c.data.image_size) == (128, 128) and c.data.recipe == 'mdanet_isles2018'
  assert (c.optimizer.name, c.optimizer.learning_rate, c.batch_size) == ('adam', 1e-3, 16)
  assert c.data.augment == 'mdanet' and c.loss.kwargs.lam == 1.0


def test_train_step_with_the_recipes_groups(tiny):
  """train.build_model took groups (1, 1) from the recipe; one step of Eq. (9) trains: the loss
  it reports is the objective on the forward pass at the pre-step weights, and Adam's first
  update moves the weights by the learning rate."""
  config, model, state = tiny
  assert model.groups == (1, 1) and model.fusion == 'gcfb' and config.loss.kwargs.lam == 1.0
  objective = objectives.make_objective(config.loss.name, **config.loss.kwargs.to_dict())
  lesion = np.zeros((2, 16, 16), np.uint8)
  lesion[:, 5:10, 6:9] = 1
  batch = {'image': normal(20, (2, 16, 16, 2)), 'mask': lesion}
  rng = jax.random.key(1)
  new_state, metrics = jax.jit(train_step_lib.make_train_step(model, objective))(
      state, batch, rng)
  assert int(new_state.step) == 1 and bool(metrics['finite'])

  @jax.jit
  def forward(variables, image):  # the step's forward pass: train mode, dropout key of step 0
    return model.apply(variables, image, train=True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.fold_in(rng, 0)})[0]

  per_example, aux = objective(forward(state.variables, batch['image']), batch)
  np.testing.assert_allclose(metrics['loss'], np.mean(per_example), rtol=1e-5)
  # 1 - cos near 0 (~2e-3): float32 rounding of the cosine is an absolute 3e-8.
  np.testing.assert_allclose(metrics['similarity'], aux['similarity'], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics['loss'], metrics['segment'] + 1.0 * metrics['similarity'],
                             rtol=1e-5)  # Eq. (9), lambda = 1
  assert float(metrics['similarity']) > 1e-4  # the two groups' features do differ
  # Adam's first update is lr g / (|g| + eps): lr = 1e-3 for every weight with a gradient.
  moved = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in zip(
      jax.tree.leaves(new_state.params), jax.tree.leaves(state.params))])
  np.testing.assert_allclose(moved.max(), 1e-3, rtol=1e-3)
  assert np.mean(np.abs(moved - 1e-3) < 1e-5) > 0.9, np.mean(np.abs(moved - 1e-3) < 1e-5)
  assert float(metrics['grad_norm']) > 0


class ConvTransposeUpsample(nn.Module):
  """The former UpsampleTransposed: flax's nn.ConvTranspose, parameters under 'conv'."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.ConvTranspose(self.features, (2, 2), strides=(2, 2), padding='VALID',
                            kernel_init=layers.he_normal, dtype=self.dtype, name='conv')(x)


def test_upsample_matmul_equals_conv_transpose_with_its_gradients():
  """UpsampleTransposed (matrix product + depth-to-space) is nn.ConvTranspose's function with
  its parameter tree and initialiser; outputs and gradients (params and input) agree."""
  x = normal(30, (2, 5, 6, 8))
  new, old = mdanet.UpsampleTransposed(3), ConvTransposeUpsample(3)
  variables = init(new, x, train=False)
  assert jax.tree.map(np.shape, variables) == {
      'params': {'conv': {'kernel': (2, 2, 8, 3), 'bias': (3,)}}}
  np.testing.assert_array_equal(variables['params']['conv']['kernel'],
                                init(old, x, train=False)['params']['conv']['kernel'])
  variables = jax.tree.map(lambda a: a + normal(31, a.shape), variables)  # a non-zero bias
  cotangent = normal(32, (2, 10, 12, 3))

  def loss(module):
    return jax.jit(jax.value_and_grad(
        lambda v, x: jnp.sum(module.apply(v, x, train=True) * cotangent), argnums=(0, 1)))

  out_new, out_old = (module.apply(variables, x, train=False) for module in (new, old))
  assert out_new.shape == (2, 10, 12, 3)
  np.testing.assert_allclose(out_new, out_old, rtol=1e-6, atol=1e-6)
  (_, grads_new), (_, grads_old) = loss(new)(variables, x), loss(old)(variables, x)
  for g_new, g_old in zip(jax.tree.leaves(grads_new), jax.tree.leaves(grads_old)):
    np.testing.assert_allclose(g_new, g_old, rtol=1e-5, atol=1e-5 * np.abs(g_old).max())
