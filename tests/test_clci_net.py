"""CLCI-Net: parameter counts against the Keras layer list, the ConvLSTM against a hand-unrolled
numpy reference, CLF / CLF-ASPP shapes, the Table 2 switches, and a few training steps."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agmr_jax import objectives
from agmr_jax import optim
from agmr_jax import state as state_lib
from agmr_jax.models import MODELS
from agmr_jax.models import clf_aspp
from agmr_jax.models import conv_lstm
from agmr_jax.models.util import count_params
from agmr_jax.training import train_step as train_step_lib
from configs import clci_net as clci_config

KEY = jax.random.PRNGKey(0)
TINY = dict(features=(4, 8, 16), fusion_expansion=2, aspp_features=8, aspp_out_features=16)
KERAS_COUNT = 36_838_305  # CLCI_Net() of the public code, BN counted 4 per channel.


def _abstract(model, shape, *args):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(
      lambda x: model.init({'params': KEY, 'dropout': KEY}, x, *args, train=False), x)


def _filled(abstract, seed=0):
  """Concrete variables with numpy values (no per-shape RNG kernels to compile)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    if "'mean'" in name:
      return jnp.zeros(leaf.shape, leaf.dtype)
    scale = np.sqrt(1.0 / np.prod(leaf.shape[:-1])) if "'kernel'" in name else 0.3
    return jnp.asarray(rng.normal(size=leaf.shape) * scale, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def keras_count(f=(32, 64, 128, 256, 512), aspp=True, clf=True, inference=True, aspp_f=256,
                aspp_out=1024, expansion=4):
  """Values in the public code's layer list (Conv2D with bias, BN 4 per channel, ConvLSTM2D
  with one bias) for the given switches: an oracle written from the Keras layers, not the
  flax modules."""
  def cbr(k, cin, cout):
    return k * k * cin * cout + 5 * cout

  def pair(cin, cout):
    return cbr(3, cin, cout) + cbr(3, cout, cout)

  total, cin = 0, 1
  for k, width in enumerate(f, start=1):
    total += pair(cin, width)
    if k < len(f):
      if clf:
        total += sum(cbr(3, f[j], width) for j in range(k))  # strided branches
        total += cbr(1, width * (k + 1), expansion * f[k])  # 1x1 fusion
        cin = expansion * f[k]
      else:
        cin = width
  cin = f[-1]
  if aspp:
    total += 2 * cbr(1, f[-1], aspp_f) + 3 * cbr(3, f[-1], aspp_f)
    total += sum(cbr(3, w, aspp_f) for w in f[:-1]) if clf else 0
    total += cbr(1, (9 if clf else 5) * aspp_f, aspp_out)
    cin = aspp_out
  for width in reversed(f[:-1]):
    total += cbr(2, cin, width) + pair(width if inference else 2 * width, width)
    if inference:
      total += cbr(1, width, width) + 2 * 9 * width * 4 * width + 4 * width
    cin = width
  return total + f[0] + 1


def test_keras_oracle_reproduces_the_published_layer_list_count():
  assert keras_count() == KERAS_COUNT


def test_full_model_parameter_count_is_keras_plus_the_lstm_hidden_biases():
  variables = _abstract(MODELS['clci_net'](), (1, 224, 176, 1))
  total = count_params(variables)
  trainable = count_params(variables, include_batch_stats=False)
  lstm_widths = 256 + 128 + 64 + 32
  print(f'\nCLCI-Net: {total:,} values (Keras counting), {trainable:,} trainable; '
        f'Keras layer list {KERAS_COUNT:,}')
  # flax's ConvLSTMCell biases its hidden conv too: 4 f more values per decoder level.
  assert total == KERAS_COUNT + 4 * lstm_widths == 36_840_225
  assert total - trainable == 2 * 12_640  # BN moving mean and variance
  assert trainable == 36_814_945
  assert list(variables['params']) == sorted(variables['params'])  # network order


@pytest.mark.parametrize('aspp,clf,inference', [
    (False, False, False), (True, False, False), (False, True, False), (False, False, True),
    (True, True, False)])
def test_table2_variants_match_the_keras_oracle(aspp, clf, inference):
  model = MODELS['clci_net'](use_aspp=aspp, use_clf=clf, use_inference=inference)
  total = count_params(_abstract(model, (1, 32, 32, 1)))  # counts do not depend on H, W
  extra = 4 * (256 + 128 + 64 + 32) if inference else 0
  assert total == keras_count(aspp=aspp, clf=clf, inference=inference) + extra


def test_baseline_is_the_unet_with_bn_on_the_up_convs():
  base = count_params(_abstract(
      MODELS['clci_net'](use_aspp=False, use_clf=False, use_inference=False), (1, 32, 32, 1)))
  unet = count_params(_abstract(MODELS['unet'](), (1, 32, 32, 1)))
  assert base - unet == 4 * (256 + 128 + 64 + 32)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _conv_same(x, kernel, bias):
  """'SAME' conv for odd kernels, written as a sum over kernel offsets."""
  kh, kw = kernel.shape[:2]
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for dy in range(kh):
    for dx in range(kw):
      out += xp[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
  return out + bias


def _lstm_reference(params, sequence, features):
  """Two ConvLSTM steps unrolled by hand (gate order i, g, f, o; forget bias +1)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  c = np.zeros(sequence[0].shape[:3] + (features,))
  h = np.zeros_like(c)
  for x in sequence:
    z = (_conv_same(x, p['ih']['kernel'], p['ih']['bias'])
         + _conv_same(h, p['hh']['kernel'], p['hh']['bias']))
    i, g, f, o = np.split(z, 4, axis=-1)
    c = _sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
  return h


@pytest.fixture(scope='module')
def lstm_case():
  block = conv_lstm.ContextInference(3)
  rng = np.random.default_rng(1)
  dec = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
  skip = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
  variables = _filled(jax.eval_shape(block.init, KEY, dec, skip), seed=2)
  apply = jax.jit(block.apply)
  return block, variables, apply, dec, skip


def test_conv_lstm_matches_hand_unrolled_reference(lstm_case):
  _, variables, apply, dec, skip = lstm_case
  cell = variables['params']['cell']
  assert cell['ih']['kernel'].shape == (3, 3, 3, 12) and cell['ih']['bias'].shape == (12,)
  assert cell['hh']['kernel'].shape == (3, 3, 3, 12) and cell['hh']['bias'].shape == (12,)
  out = np.asarray(apply(variables, dec, skip))
  assert out.shape == (2, 5, 4, 3)
  np.testing.assert_allclose(out, _lstm_reference(cell, [dec, skip], 3), rtol=1e-5, atol=1e-5)


def test_conv_lstm_depends_on_order_and_on_both_steps(lstm_case):
  _, variables, apply, dec, skip = lstm_case
  out = np.asarray(apply(variables, dec, skip))
  swapped = np.asarray(apply(variables, skip, dec))
  no_decoder = np.asarray(apply(variables, np.zeros_like(dec), skip))
  assert np.abs(out - swapped).max() > 1e-2
  assert np.abs(out - no_decoder).max() > 1e-2


class FullZeroContextInference(conv_lstm.ContextInference):
  """The former ContextInference: a full-size (B, H, W, f) zero initial state."""

  @nn.compact
  def __call__(self, decoder, skip):
    cell = nn.ConvLSTMCell(self.features, tuple(self.kernel_size), dtype=self.dtype,
                           name='cell')
    zeros = jnp.zeros((*decoder.shape[:-1], self.features), jnp.float32)
    carry = (zeros, zeros)
    for x in (decoder, skip):
      carry, hidden = cell(carry, x.astype(self.dtype))
    return hidden.astype(self.dtype)


def test_conv_lstm_broadcast_zero_state_equals_the_full_size_one(lstm_case):
  """A (1, 1, 1, f) zero state: same outputs and gradients (params and both inputs)."""
  block, variables, _, dec, skip = lstm_case
  cotangent = np.random.default_rng(3).normal(size=dec.shape).astype(np.float32)

  def value_and_grads(module):
    return jax.jit(jax.value_and_grad(
        lambda v, d, s: jnp.sum(module.apply(v, d, s) * cotangent), argnums=(0, 1, 2)))(
            variables, dec, skip)

  out_new, out_old = (m.apply(variables, dec, skip)
                      for m in (block, FullZeroContextInference(3)))
  np.testing.assert_allclose(out_new, out_old, rtol=1e-6, atol=1e-7)
  (_, grads_new), (_, grads_old) = (value_and_grads(m)
                                    for m in (block, FullZeroContextInference(3)))
  for g_new, g_old in zip(jax.tree.leaves(grads_new), jax.tree.leaves(grads_old)):
    np.testing.assert_allclose(g_new, g_old, rtol=1e-6, atol=1e-6)


def test_conv_lstm_rejects_mismatched_inputs(lstm_case):
  block, variables, _, dec, _ = lstm_case
  with pytest.raises(ValueError, match='same shape'):
    block.apply(variables, dec, dec[:, :4])


def test_cross_level_fusion_shapes_and_strides():
  levels = [jnp.zeros((1, 32, 24, 4)), jnp.zeros((1, 16, 12, 8)), jnp.zeros((1, 8, 6, 16))]
  block = clf_aspp.CrossLevelFusion(64)
  variables = jax.eval_shape(lambda: block.init(KEY, levels, train=False))
  out = jax.eval_shape(lambda v: block.apply(v, levels, train=False), variables)
  assert out.shape == (1, 4, 3, 64)
  params = variables['params']
  assert [params[f'down_{j}']['conv']['kernel'].shape for j in (1, 2, 3)] == [
      (3, 3, 4, 16), (3, 3, 8, 16), (3, 3, 16, 16)]
  assert params['fuse']['conv']['kernel'].shape == (1, 1, 4 * 16, 64)  # 3 branches + pool
  # The message names the branch (module name) and both sizes.
  with pytest.raises(ValueError, match=re.escape(
      'cross-level branch down_1: cannot bring a 30x24 feature to 4x3 with one stride')):
    jax.eval_shape(lambda: block.init(KEY, [jnp.zeros((1, 30, 24, 4)), levels[2]], train=False))


def test_clf_aspp_branches_and_image_pooling():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3, 16)), jnp.float32)
  earlier = [jnp.zeros((2, 16, 12, 4)), jnp.zeros((2, 8, 6, 8))]
  aspp = clf_aspp.CLFASPP(8, 32, dropout_rate=0.0)
  variables = jax.eval_shape(lambda: aspp.init(KEY, x, earlier, train=False))
  assert sorted(variables['params']) == [
      '0_clf_1', '0_clf_2', '1_conv1x1', '2_atrous_2', '2_atrous_4', '2_atrous_6',
      '3_image_pool', '4_project']
  assert variables['params']['4_project']['conv']['kernel'].shape == (1, 1, 7 * 8, 32)
  assert variables['params']['2_atrous_4']['conv']['kernel'].shape == (3, 3, 16, 8)
  with pytest.raises(ValueError, match=re.escape(
      'cross-level branch 0_clf_2: cannot bring a 9x6 feature to 4x3 with one stride')):
    jax.eval_shape(lambda: aspp.init(KEY, x, [earlier[0], jnp.zeros((2, 9, 6, 8))],
                                     train=False))
  plain = clf_aspp.CLFASPP(8, 32, cross_level=False)
  assert '0_clf_1' not in jax.eval_shape(lambda: plain.init(KEY, x, train=False))['params']
  pool = clf_aspp.ImagePooling(8)
  y = pool.apply(_filled(jax.eval_shape(lambda: pool.init(KEY, x, train=False))), x,
                 train=False)
  assert y.shape == (2, 4, 3, 8)
  np.testing.assert_allclose(y, jnp.broadcast_to(y[:, :1, :1], y.shape))  # constant per image


def test_config_variants_set_the_switches():
  c = clci_config.get_config('clf=0,inference=false')
  assert (c.model_kwargs.use_aspp, c.model_kwargs.use_clf, c.model_kwargs.use_inference) == (
      True, False, False)
  assert (c.model, c.data.recipe, c.loss.name) == ('clci_net', 'clci', 'soft_dice')
  assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.schedule) == (
      'adam', 1e-4, 'constant')
  rows = {tuple(clci_config.get_config(v).model_kwargs.to_dict().values())
          for v in clci_config.TABLE2.values()}
  assert len(rows) == 8
  tiny = clci_config.get_config('tiny')
  assert (tiny.data.dataset, tiny.data.recipe) == ('synthetic_tiny', 'tiny_2d')
  demo = clci_config.get_config('demo')
  assert all(s % 16 == 0 for s in demo.data.image_size)


def test_tiny_model_overfits_one_batch_with_soft_dice():
  """The whole network in train mode (dropout, BN updates, ConvLSTM) learns: the loss falls and
  the recurrent kernels receive gradient."""
  model = MODELS['clci_net'](**TINY)
  rng = np.random.default_rng(0)
  mask = np.zeros((4, 32, 32), np.uint8)
  mask[:, 8:20, 10:22] = 1
  image = (rng.normal(size=(4, 32, 32, 1)) * 0.3 - 1.5 * mask[..., None]).astype(np.float32)
  batch = {'image': jnp.asarray(image), 'mask': jnp.asarray(mask)}
  cfg = clci_config.get_config('tiny').optimizer
  cfg.unlock()
  cfg.learning_rate = 3e-3
  tx = optim.make_optimizer(cfg, steps_per_epoch=10, total_steps=10)
  # numpy-filled variables: jitting model.init would compile every RNG kernel as well.
  state = state_lib.TrainState.create(
      variables=_filled(_abstract(model, (1, 32, 32, 1))), tx=tx)
  hh_before = np.asarray(state.params['2_up_1']['2_lstm']['cell']['hh']['kernel'])
  step = jax.jit(train_step_lib.make_train_step(
      model, objectives.make_objective('soft_dice', smooth=1.0)))
  losses = []
  for i in range(6):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] == min(losses) and losses[-1] < losses[0] - 0.01, losses
  hh_after = np.asarray(state.params['2_up_1']['2_lstm']['cell']['hh']['kernel'])
  assert np.abs(hh_after - hh_before).max() > 1e-4


def test_bf16_compute_keeps_float32_params_and_logits():
  model = MODELS['clci_net'](**TINY, dtype=jnp.bfloat16)
  variables = _abstract(model, (1, 32, 32, 1))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 1)), train=False),
                       variables)
  assert out['logits'].dtype == jnp.float32 and out['logits'].shape == (2, 32, 32, 1)


def test_input_not_divisible_raises_clear_error():
  with pytest.raises(ValueError, match=re.escape(
      'CLCINet: input H and W must be multiples of 4 (one halving per pooling), got 30x32')):
    _abstract(MODELS['clci_net'](**TINY), (1, 30, 32, 1))


def test_registry_entry_takes_field_overrides():
  """The overrides reach the network: no CLF branches, a 3-channel head, and exactly the Keras
  oracle's count for those switches (the head's 1x1 conv has 3 outputs instead of 1)."""
  model = MODELS['clci_net'](num_classes=3, use_clf=False)
  variables = _abstract(model, (1, 32, 32, 1))
  assert list(variables['params']) == [
      '0_down_1', '0_down_2', '0_down_3', '0_down_4', '0_down_5', '1_aspp',
      '2_up_1', '2_up_2', '2_up_3', '2_up_4', '3_head']  # no 0_down_*_clf
  assert variables['params']['3_head']['conv']['kernel'].shape == (1, 1, 32, 3)
  extra_head = 2 * (32 + 1)  # two more output channels of the 1x1 conv on 32 features
  lstm_biases = 4 * (256 + 128 + 64 + 32)
  assert count_params(variables) == keras_count(clf=False) + lstm_biases + extra_head == 18_997_699
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 1)), train=False),
                       variables)
  assert out['logits'].shape == (2, 32, 32, 3)



class _ScannedContextInference(nn.Module):
  """The former ContextInference: the same cell scanned over [decoder, skip] by nn.RNN."""
  features: int

  @nn.compact
  def __call__(self, decoder, skip):
    cell = nn.ConvLSTMCell(self.features, (3, 3), name='cell')
    return nn.RNN(cell, name='rnn')(jnp.stack([decoder, skip], axis=1))[:, -1]


def test_unrolled_conv_lstm_equals_the_nn_rnn_scan_values_and_gradients():
  """ContextInference unrolls the two steps in Python (XLA:CPU runs a scan's gradient
  convolutions in a slow generic loop): same parameter tree, same outputs, same gradients."""
  rng = np.random.default_rng(5)
  dec = jnp.asarray(rng.normal(size=(2, 8, 6, 4)), jnp.float32)
  skip = jnp.asarray(rng.normal(size=(2, 8, 6, 4)), jnp.float32)
  unrolled, scanned = conv_lstm.ContextInference(5), _ScannedContextInference(5)
  abstract = jax.eval_shape(unrolled.init, KEY, dec, skip)
  assert (jax.tree.map(lambda a: a.shape, abstract)
          == jax.tree.map(lambda a: a.shape, jax.eval_shape(scanned.init, KEY, dec, skip)))
  variables = _filled(abstract, seed=6)
  cotangent = jnp.asarray(rng.normal(size=(2, 8, 6, 5)), jnp.float32)

  def value_and_grads(block):
    loss = lambda v, d, s: jnp.sum(block.apply(v, d, s) * cotangent)
    return block.apply(variables, dec, skip), jax.grad(loss, (0, 1, 2))(variables, dec, skip)

  got, want = value_and_grads(unrolled), value_and_grads(scanned)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    b = np.asarray(b)  # float32, summed in another order: rtol 1e-5, atol relative to the scale
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6 * np.abs(b).max(),
                               err_msg=jax.tree_util.keystr(path))
