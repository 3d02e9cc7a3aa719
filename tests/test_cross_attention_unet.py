"""Cross-attention U-Net (thesis, seed 003): the gate's equation, the network's shapes and
parameter count, the contour class through the recipe, the deep-supervision / class-weight
losses against numpy references, and jitted train steps of the tiny CT configuration.

The full tiny run through train.train_and_evaluate is left to the smoke command in the config's
docstring: compiling its init, step and evaluation costs about 80 s of CPU on this model."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agmr_jax import objectives
from agmr_jax import state as state_lib
from agmr_jax.models import MODELS
from agmr_jax.models.cross_attention import CrossAttentionGate
from agmr_jax.models.cross_attention_unet import DeepSupervisionHead
from agmr_jax.models.util import count_params
from agmr_jax.objectives import thesis as objectives_thesis
from agmr_jax.training import train_step as train_step_lib
from configs import cross_attention_unet as config_lib
from input_pipeline import recipes

TINY = (4, 8, 16, 32, 64, 128)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


# ----------------------------------------------------------------------------- gate


@pytest.fixture(scope='module')
def gate_case():
  """Fixed weights and inputs: x_enc (2, 5, 6, 4), g_dec (2, 5, 6, 3), F_int 3."""
  rng = np.random.default_rng(0)
  w_e, w_d, w_s = rng.normal(size=(4, 3)), rng.normal(size=(3, 3)), rng.normal(size=(3, 1))
  b_d, b_s = rng.normal(size=3), rng.normal(size=1)
  params = {'0_w_enc': {'kernel': w_e[None, None]},
            '1_w_dec': {'kernel': w_d[None, None], 'bias': b_d},
            '2_w_s': {'kernel': w_s[None, None], 'bias': b_s}}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  x, g = rng.normal(size=(2, 5, 6, 4)), rng.normal(size=(2, 5, 6, 3))
  out, state = CrossAttentionGate(inter_features=3).apply(
      {'params': params}, jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32),
      mutable=['intermediates'])
  s = np.maximum(x @ w_e + g @ w_d + b_d, 0.0)  # S = ReLU(W_e X_e + W_d X_d)
  alpha = _sigmoid(s @ w_s + b_s)  # sigmoid(W_S S), (2, 5, 6, 1)
  return out, state['intermediates']['alpha'][0], alpha, alpha * x


def test_gate_equals_its_formula_on_fixed_weights(gate_case):
  out, alpha, alpha_ref, out_ref = gate_case
  np.testing.assert_allclose(alpha, alpha_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-6)


def test_gate_alpha_is_one_map_strictly_inside_0_1(gate_case):
  _, alpha, _, _ = gate_case
  assert alpha.shape == (2, 5, 6, 1)
  assert float(alpha.min()) > 0.0 and float(alpha.max()) < 1.0
  assert float(alpha.max() - alpha.min()) > 0.1  # A real map, not a constant.


def test_gate_rejects_decoder_feature_at_another_resolution():
  gate = CrossAttentionGate()
  with pytest.raises(ValueError, match='after upsampling'):
    jax.eval_shape(lambda: gate.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)),
                                     jnp.zeros((1, 4, 4, 8))))


# ----------------------------------------------------------------------------- network


def _abstract(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def _expected_count(features, c_in, k, attention=True, deep_supervision=True):
  """Closed form, Keras counting (BN: 4 per channel); see the model's docstring."""
  pair = lambda c, f: 9 * c * f + 9 * f * f + 10 * f  # noqa: E731
  total, c = 0, c_in
  for f in features:
    total, c = total + pair(c, f), f
  total += sum(pair(3 * f, f) for f in features[:-1])
  if attention:
    total += sum(f * (f // 2) + 2 * f * (f // 2) + f // 2 + f // 2 + 1 for f in features[:-1])
  if deep_supervision:
    total += sum(f * k + k for f in features[1:])
  return total + features[0] * k + k


@pytest.mark.parametrize('kwargs', [{}, {'num_classes': 3}, {'attention': False},
                                    {'deep_supervision': False}])
def test_parameter_count_at_the_thesis_widths(kwargs):
  model = MODELS['cross_attention_unet'](**kwargs)
  variables = _abstract(model, (1, 224, 224, 3))
  expected = _expected_count(model.features, 3, model.num_classes, model.attention,
                             model.deep_supervision)
  assert count_params(variables) == expected
  if not kwargs:
    assert expected == 31_993_515  # The docstring's number.


def test_parameter_tree_order_and_ablation_switches():
  full = _abstract(MODELS['cross_attention_unet'](features=TINY), (1, 32, 32, 2))['params']
  assert list(full) == ([f'0_down_{i}' for i in range(1, 7)] + [f'1_up_{i}' for i in range(1, 6)]
                        + [f'2_ds_{i}' for i in range(1, 6)] + ['3_head'])
  assert all('0_gate' in full[f'1_up_{i}'] for i in range(1, 6))
  plain = _abstract(MODELS['cross_attention_unet'](features=TINY, attention=False,
                                                   deep_supervision=False), (1, 32, 32, 2))
  assert not any('2_ds' in k for k in plain['params'])
  assert not any('0_gate' in plain['params'][f'1_up_{i}'] for i in range(1, 6))


def test_outputs_final_and_five_full_resolution_deep_supervision_logits():
  model = MODELS['cross_attention_unet'](features=TINY, num_classes=3, dtype=jnp.bfloat16)
  variables = _abstract(model, (2, 32, 32, 5))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 5)), train=False),
                       variables)
  assert out['logits'].shape == (2, 32, 32, 3) and out['logits'].dtype == jnp.float32
  ds = out['deep_supervision']
  assert len(ds) == 5 and all(d.shape == (2, 32, 32, 3) and d.dtype == jnp.float32 for d in ds)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype('float32')}


def test_deep_supervision_head_equals_upsample_then_conv():
  """1x1 conv at the coarse level + one bilinear resize == the thesis's resize + 1x1 conv."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 2, 3, 6)), jnp.float32)
  kernel, bias = rng.normal(size=(6, 3)), rng.normal(size=3)
  params = {'conv': {'conv': {'kernel': jnp.asarray(kernel[None, None], jnp.float32),
                              'bias': jnp.asarray(bias, jnp.float32)}}}
  out = DeepSupervisionHead(3, (16, 24)).apply({'params': params}, x)
  # Bilinear x8, half-pixel centres: output i reads input (i + 0.5) / 8 - 0.5, clamped to the edge.
  up = np.einsum('ih,jw,bhwc->bijc', _bilinear_matrix(2, 16), _bilinear_matrix(3, 24),
                 np.asarray(x, np.float64))
  np.testing.assert_allclose(out, up @ kernel + bias, rtol=1e-5, atol=1e-5)


def _bilinear_matrix(n_in, n_out):
  """(n_out, n_in) weights of a half-pixel-centred linear resize (align_corners=False)."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
    lo = min(int(src), n_in - 2)
    m[i, lo], m[i, lo + 1] = lo + 1 - src, src - lo
  return m


def test_bilinear_matrix_by_hand():
  # x4 from 2 pixels: sources i / 4 - 0.375 = -0.375, -0.125 (clamped to 0), 0.125 ... 0.875,
  # 1.125, 1.375 (clamped to 1).
  np.testing.assert_allclose(_bilinear_matrix(2, 8), [
      [1, 0], [1, 0], [0.875, 0.125], [0.625, 0.375], [0.375, 0.625], [0.125, 0.875],
      [0, 1], [0, 1]])


# ----------------------------------------------------------------------------- contour class


def test_contour_class_is_exactly_the_one_pixel_border_through_the_recipe():
  # Slice coordinates (rows = y, columns = x); the recipe reads slice z as vol[:, :, z].T.
  lesion = np.array([[0, 0, 0, 0, 0, 0, 0],
                     [0, 1, 1, 1, 1, 0, 0],
                     [0, 1, 1, 1, 1, 1, 0],
                     [0, 1, 1, 1, 1, 1, 0],
                     [0, 0, 1, 1, 1, 0, 0],
                     [0, 0, 0, 0, 0, 0, 1]])
  expected = np.array([[0, 0, 0, 0, 0, 0, 0],
                       [0, 2, 2, 2, 2, 0, 0],
                       [0, 2, 1, 1, 1, 2, 0],
                       [0, 2, 1, 1, 1, 2, 0],
                       [0, 0, 2, 2, 2, 0, 0],
                       [0, 0, 0, 0, 0, 0, 2]])  # An image-edge pixel counts as border.
  h, w = lesion.shape
  mask = np.zeros((w, h, 2), np.uint8)  # (X, Y, Z); slice 1 stays empty.
  mask[:, :, 0] = lesion.T
  image = np.random.default_rng(4).uniform(1, 2, size=(5, w, h, 2)).astype(np.float32)
  recipe = dataclasses.replace(recipes.RECIPES['tiny_thesis_ct'], size=(h, w))
  masks = recipe.forward(image, mask).masks
  np.testing.assert_array_equal(masks[0], expected)
  np.testing.assert_array_equal(masks[1], np.zeros((h, w)))
  no_contour = dataclasses.replace(recipe, contour=False).forward(image, mask).masks
  np.testing.assert_array_equal(no_contour[0], lesion)


# ----------------------------------------------------------------------------- losses


def _outputs(rng, k, n_ds=5, shape=(2, 8, 8)):
  heads = [jnp.asarray(2 * rng.normal(size=(*shape, k)), jnp.float32) for _ in range(n_ds + 1)]
  out = {'logits': heads[-1]}
  if n_ds:
    out['deep_supervision'] = tuple(heads[:-1])
  return out, [np.asarray(h, np.float64) for h in heads]


def _focal_ref(z, y, w, gamma):
  """Numpy: mean over pixels of w[y] * -(1 - p_t)^gamma log p_t, per example."""
  p = _sigmoid(z[..., 0])
  pt = np.where(y == 1, p, 1 - p)
  return np.mean(np.asarray(w)[y] * -(1 - pt) ** gamma * np.log(pt), axis=(1, 2))


def _ce_ref(z, y, w):
  """Numpy: mean over pixels of w[y] * -log softmax(z)[y], per example."""
  logp = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
  picked = np.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
  return np.mean(np.asarray(w)[y] * -picked, axis=(1, 2))


def test_mri_loss_is_the_weighted_sum_of_per_head_weighted_focal_losses():
  rng = np.random.default_rng(5)
  mask = (rng.uniform(size=(2, 8, 8)) < 0.2).astype(np.uint8)
  outputs, heads = _outputs(rng, 1)
  loss, metrics = objectives.make_objective('thesis_focal')(outputs, {'mask': jnp.asarray(mask)})
  per_head = [_focal_ref(h, mask, (0.3, 0.7), 2.0) for h in heads]
  expected = sum(w * l for w, l in zip((0.03, 0.045, 0.05, 0.125, 0.25, 0.5), per_head))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_final'], per_head[-1].mean(), rtol=1e-5)


def test_ct_loss_is_the_weighted_sum_of_per_head_weighted_cross_entropies():
  rng = np.random.default_rng(6)
  mask = rng.integers(0, 3, size=(2, 8, 8)).astype(np.uint8)
  outputs, heads = _outputs(rng, 3)
  loss, metrics = objectives.make_objective('thesis_ce')(outputs, {'mask': jnp.asarray(mask)})
  per_head = [_ce_ref(h, mask, (0.7, 2.0, 7.0)) for h in heads]
  expected = sum(w * l for w, l in zip(objectives_thesis.DS_WEIGHTS, per_head))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_final'], per_head[-1].mean(), rtol=1e-5)
  # 'dice': hard Dice of the final head per slice, lesion = any non-background class.
  pred, truth = heads[-1].argmax(-1) > 0, mask > 0
  dice = [2 * (p & t).sum() / (p.sum() + t.sum()) for p, t in zip(pred, truth)]
  assert 0.2 < np.mean(dice) < 0.95  # a non-trivial overlap on this draw
  np.testing.assert_allclose(metrics['dice'], np.mean(dice), rtol=1e-6)


def test_without_deep_supervision_heads_the_final_loss_has_weight_one():
  rng = np.random.default_rng(7)
  mask = rng.integers(0, 3, size=(2, 8, 8)).astype(np.uint8)
  outputs, heads = _outputs(rng, 3, n_ds=0)
  loss, _ = objectives_thesis.thesis_ce(outputs, {'mask': jnp.asarray(mask)}, class_weights=None)
  np.testing.assert_allclose(loss, _ce_ref(heads[0], mask, (1.0, 1.0, 1.0)), rtol=1e-5)
  wrong, _ = _outputs(rng, 3, n_ds=3)
  with pytest.raises(ValueError, match='4 estimations'):
    objectives_thesis.thesis_ce(wrong, {'mask': jnp.asarray(mask)})


@pytest.mark.parametrize('name,k,weights', [('thesis_focal', 1, (0.3, 0.7)),
                                            ('thesis_ce', 3, (0.7, 2.0, 7.0))])
def test_class_weight_map_scales_each_pixels_gradient_by_its_class_weight(name, k, weights):
  """d loss / d logits at a pixel = w[label] x the unweighted one: the map weights pixels."""
  rng = np.random.default_rng(8)
  mask = jnp.asarray(rng.integers(0, len(weights), size=(2, 8, 8)), jnp.uint8)
  logits = jnp.asarray(rng.normal(size=(2, 8, 8, k)), jnp.float32)

  def grad(class_weights):
    fn = lambda z: objectives.OBJECTIVES[name](  # noqa: E731
        {'logits': z}, {'mask': mask}, class_weights=class_weights)[0].sum()
    return np.asarray(jax.grad(fn)(logits))

  ratio = grad(weights) / grad(None)
  expected = np.broadcast_to(np.asarray(weights)[np.asarray(mask)][..., None], ratio.shape)
  np.testing.assert_allclose(ratio, expected, rtol=1e-4)


def test_two_class_ce_reads_the_contour_as_lesion():
  rng = np.random.default_rng(9)
  mask = rng.integers(0, 3, size=(2, 8, 8)).astype(np.uint8)
  outputs, heads = _outputs(rng, 2, n_ds=0)
  loss, _ = objectives_thesis.thesis_ce(outputs, {'mask': jnp.asarray(mask)})
  np.testing.assert_allclose(loss, _ce_ref(heads[0], np.minimum(mask, 1), (0.7, 2.0)), rtol=1e-5)


# ----------------------------------------------------------------------------- configs and run


def test_config_ablation_rows_and_variants():
  rows = {a: config_lib.get_config(f'ablation={a}') for a in config_lib.ABLATIONS}
  assert rows['unet'].loss.kwargs.class_weights is None
  assert not rows['unet'].model_kwargs.attention and not rows['cw'].model_kwargs.deep_supervision
  assert rows['cw_ds'].model_kwargs.deep_supervision and not rows['cw_ds'].model_kwargs.attention
  assert rows['full'].model_kwargs.attention and rows['full'].model_kwargs.deep_supervision
  mri, ct = config_lib.get_config(), config_lib.get_config('ct')
  assert (mri.data.dataset, mri.data.recipe, mri.loss.name) == (
      'synthetic_isles2017', 'thesis_mri', 'thesis_focal')
  assert (ct.data.dataset, ct.data.recipe, ct.loss.name, ct.model_kwargs.num_classes) == (
      'synthetic_isles2018', 'thesis_ct', 'thesis_ce', 3)
  assert tuple(ct.loss.kwargs.class_weights) == (0.7, 2.0, 7.0)
  binary = config_lib.get_config('ct,binary')
  assert binary.model_kwargs.num_classes == 1 and binary.loss.name == 'thesis_focal'
  assert (mri.optimizer.warmup_epochs, mri.num_epochs, mri.batch_size) == (90.0, 600.0, 32)
  assert recipes.RECIPES[ct.data.recipe].contour
  with pytest.raises(ValueError, match=re.escape(
      "'binary' is a CT variant (the MRI model is binary already)")):
    config_lib.get_config('binary')


def _random_param(rng, name, shape):
  """He-normal kernels, BN scales near 1, small biases: a trainable start without jit(init)."""
  if "'kernel'" in name:
    return jnp.asarray(rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1])), jnp.float32)
  base = 1.0 if "'scale'" in name else 0.0
  return jnp.asarray(base + 0.05 * rng.normal(size=shape), jnp.float32)


def test_train_steps_on_a_fixed_ct_batch_lower_the_loss_through_every_head():
  """The tiny CT config's model and objective, AdamW at a constant 1e-2, 8 steps on one batch."""
  config = config_lib.get_config('tiny,ct')
  model = MODELS[config.model](**config.model_kwargs)
  rng = np.random.default_rng(10)
  lesion = np.zeros((4, 32, 32), bool)
  lesion[:, 8:20, 10:24] = True
  mask = lesion + recipes.lesion_contour(lesion)
  image = rng.normal(size=(4, 32, 32, 5)) + 2.0 * lesion[..., None]
  batch = {'image': jnp.asarray(image, jnp.float32), 'mask': jnp.asarray(mask, jnp.uint8)}
  abstract = _abstract(model, batch['image'].shape)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: _random_param(rng, jax.tree_util.keystr(path), s.shape), abstract['params'])
  batch_stats = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), abstract['batch_stats'])
  tx = optax.adamw(1e-2, weight_decay=config.optimizer.weight_decay)
  state = state_lib.TrainState.create(
      variables={'params': params, 'batch_stats': batch_stats}, tx=tx)
  objective = objectives.make_objective(config.loss.name, **config.loss.kwargs.to_dict())
  step = jax.jit(train_step_lib.make_train_step(model, objective))
  first = None
  for _ in range(8):
    state, metrics = step(state, batch, jax.random.key(0))
    first = float(metrics['loss']) if first is None else first
    assert bool(metrics['finite'])
  assert float(metrics['loss']) < 0.7 * first
  gate_kernel = state.params['1_up_1']['0_gate']['2_w_s']['kernel']
  assert float(jnp.abs(gate_kernel - params['1_up_1']['0_gate']['2_w_s']['kernel']).max()) > 0
