"""Tests for input_pipeline.augment: determinism, exactness, label sets, alignment."""

import math
import pickle

import numpy as np
import pytest

from input_pipeline import augment as aug
from input_pipeline.augment import AUGMENT_PRESETS
from input_pipeline.augment import Augment
from input_pipeline.recipes import lesion_contour

H, W, C = 48, 40, 4


def _element(h: int = H, w: int = W, contour: bool = False, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  lesion = (yy - h * 0.45) ** 2 / 100 + (xx - w * 0.55) ** 2 / 50 <= 1
  mask = lesion.astype(np.uint8) + (lesion_contour(lesion) if contour else 0)
  return {'image': rng.standard_normal((h, w, C)).astype(np.float32),
          'mask': mask.astype(np.uint8), 'case_id': b'case-7', 'slice_index': 3}


ALL_OPS = {'flip_h': 0.5, 'flip_v': 0.5, 'rotate': {'p': 0.7, 'degrees': 30.0},
           'scale': {'p': 0.7, 'range': (0.8, 1.2)}, 'translate': {'p': 0.5, 'fraction': 0.1},
           'elastic': {'p': 0.5, 'alpha': 2.0, 'sigma': 8.0}, 'brightness': 0.5, 'contrast': 0.5}


def test_deterministic_for_a_fixed_seed():
  augment = Augment.from_config(ALL_OPS)
  for seed in range(5):
    a = augment(_element(), np.random.default_rng(seed))
    b = augment(_element(), np.random.default_rng(seed))
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['mask'], b['mask'])
  outs = [augment(_element(), np.random.default_rng(s))['image'] for s in range(4)]
  assert any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_flips_are_exact_and_involutions():
  element, rng = _element(), np.random.default_rng(0)
  for op, axis in ((aug.FlipH(), 1), (aug.FlipV(), 0)):
    once = op(element, rng)
    np.testing.assert_array_equal(once['image'], np.flip(element['image'], axis))
    np.testing.assert_array_equal(once['mask'], np.flip(element['mask'], axis))
    twice = op(once, rng)
    np.testing.assert_array_equal(twice['image'], element['image'])
    np.testing.assert_array_equal(twice['mask'], element['mask'])


def test_rot90_is_exact():
  element = _element(32, 32)
  out = aug.Rot90(choices=(1,))(element, np.random.default_rng(0))
  np.testing.assert_array_equal(out['image'], np.rot90(element['image'], 1))
  np.testing.assert_array_equal(out['mask'], np.rot90(element['mask'], 1))
  with pytest.raises(ValueError, match=r'Rot90 needs square slices, got \(48, 40\)'):
    aug.Rot90()(_element(), np.random.default_rng(0))


def test_affine_quarter_turn_matches_rot90():
  element = _element(32, 32, contour=True)
  out = aug.Affine().apply(element, math.pi / 2)
  np.testing.assert_allclose(out['image'], np.rot90(element['image'], 1), atol=1e-5)
  np.testing.assert_array_equal(out['mask'], np.rot90(element['mask'], 1))


def test_affine_shift_and_zoom_about_the_centre():
  element = _element()
  shifted = aug.Affine().apply(element, 0.0, 1.0, (3, -2))
  np.testing.assert_allclose(shifted['image'][3:, :-2], element['image'][:-3, 2:], atol=1e-6)
  assert np.all(shifted['image'][:3] == 0)  # shifted in from outside: cval
  assert np.all(shifted['mask'][:3] == 0)
  odd = _element(41, 41)
  zoomed = aug.Affine().apply(odd, 0.0, 2.0)
  np.testing.assert_allclose(zoomed['image'][20, 20], odd['image'][20, 20], atol=1e-6)
  np.testing.assert_allclose(zoomed['image'][22, 20], odd['image'][21, 20], atol=1e-6)


@pytest.mark.parametrize('mask_mode', ['nearest', 'linear'])
def test_mask_keeps_its_label_set(mask_mode):
  augment = Augment.from_config({**ALL_OPS, 'mask_mode': mask_mode})
  seen = set()
  for seed in range(20):
    out = augment(_element(contour=True), np.random.default_rng(seed))
    assert out['mask'].dtype == np.uint8
    seen |= set(np.unique(out['mask']).tolist())
    if mask_mode == 'linear':  # the contour class is recomputed on the new grid
      lesion = out['mask'] > 0
      np.testing.assert_array_equal(out['mask'] == 2, lesion_contour(lesion))
  assert seen <= {0, 1, 2} and 2 in seen


def test_binary_masks_stay_binary():
  augment = Augment.from_config({**ALL_OPS, 'mask_mode': 'linear'})
  for seed in range(10):
    assert set(np.unique(augment(_element(), np.random.default_rng(seed))['mask'])) <= {0, 1}


def test_identity_when_all_probabilities_are_zero():
  config = {k: ({**v, 'p': 0.0} if isinstance(v, dict) else 0.0) for k, v in ALL_OPS.items()}
  element = _element()
  out = Augment.from_config(config)(element, np.random.default_rng(0))
  np.testing.assert_array_equal(out['image'], element['image'])
  np.testing.assert_array_equal(out['mask'], element['mask'])
  assert out['case_id'] == b'case-7' and out['slice_index'] == 3


@pytest.mark.parametrize('op', [aug.Affine(degrees=40, scale=(0.7, 1.3), translate=0.1,
                                           mask_mode='linear'),
                                aug.Elastic(alpha=3.0, sigma=6.0, mask_mode='linear')])
def test_image_and_mask_stay_aligned(op):
  element = _element()
  element['image'] = np.repeat(element['mask'][..., None].astype(np.float32), C, axis=-1)
  for seed in range(5):
    out = op(element, np.random.default_rng(seed))
    # The linear mask mode samples the lesion exactly as the image: identical after threshold.
    np.testing.assert_array_equal(out['mask'], out['image'][..., 0] >= 0.5)
    assert out['mask'].any()


def test_nearest_mask_is_aligned_with_the_image():
  element = _element()
  element['image'] = np.repeat(element['mask'][..., None].astype(np.float32), C, axis=-1)
  out = aug.Affine(degrees=40, scale=(0.7, 1.3))(element, np.random.default_rng(3))
  agree = np.mean(out['mask'] == (out['image'][..., 0] >= 0.5))
  assert agree > 0.98


def test_outputs_are_contiguous_float32_and_inputs_untouched():
  element = _element()
  element['image'] = element['image'].astype(np.float16)
  before = {k: np.copy(v) for k, v in element.items() if isinstance(v, np.ndarray)}
  augment = Augment.from_config({'flip_h': 1.0, 'flip_v': 1.0})
  out = augment(element, np.random.default_rng(0))
  assert out['image'].dtype == np.float32 and out['image'].flags.c_contiguous
  assert out['mask'].flags.c_contiguous
  for key, value in before.items():
    np.testing.assert_array_equal(element[key], value)


def test_intensity_ops_touch_only_the_image():
  element = _element()
  out = Augment.from_config({'brightness': {'delta': 0.5}, 'contrast': {'range': (2.0, 2.0)}})(
      element, np.random.default_rng(0))
  np.testing.assert_array_equal(out['mask'], element['mask'])
  # Probability 1 consumes no random number: brightness adds the generator's first U(-0.5, 0.5)
  # draw, then contrast multiplies by its only value, 2.
  delta = np.float32(np.random.default_rng(0).uniform(-0.5, 0.5))
  np.testing.assert_allclose(out['image'], (element['image'] + delta) * 2.0, rtol=1e-6)
  assert abs(delta) > 0.1  # a visible shift, so the check above tells it from no shift


def test_config_building_and_presets():
  augment = Augment.from_config(AUGMENT_PRESETS['mdanet'])
  kinds = [type(op).__name__ for _, op in augment.ops]
  assert kinds == ['FlipH', 'FlipV', 'Affine']  # rotate + scale fused into one resample
  affine = augment.ops[-1][1]
  assert affine.degrees == 90 and affine.scale == (0.8, 1.2) and affine.p_rotate == 0.5
  assert Augment.from_config((('rot90', {'p': 0.5}),)).ops[0][0] == 0.5
  with pytest.raises(ValueError, match=r"unknown augmentation 'shear'; known: \['brightness', "):
    Augment.from_config({'shear': 0.5})
  with pytest.raises(ValueError, match=r"mask_mode must be one of \('nearest', 'linear'\), "
                                       r"got 'cubic'"):
    Augment.from_config({'rotate': 1.0, 'mask_mode': 'cubic'})
  with pytest.raises(ValueError, match=r"rotate takes p and degrees, got \['degree'\]"):
    Augment.from_config({'rotate': {'p': 1.0, 'degree': 10}})
  assert Augment.from_config({'rotate': 1.0}).ops[0][1].degrees == 15.0
  clone = pickle.loads(pickle.dumps(augment))  # Grain workers pickle transforms
  np.testing.assert_array_equal(clone(_element(), np.random.default_rng(1))['image'],
                                augment(_element(), np.random.default_rng(1))['image'])


def _chain(augment):
  """(op name, probability, the op's settings) per op of a chain."""
  rows = []
  for p, op in augment.ops:
    settings = {k: v for k, v in vars(op).items() if k not in ('mask_mode', 'cval')}
    rows.append((type(op).__name__, p, settings))
  return rows


def test_every_preset_builds_its_documented_chain():
  assert _chain(Augment.from_config(AUGMENT_PRESETS['none'])) == []
  assert _chain(Augment.from_config(AUGMENT_PRESETS['demo'])) == [
      ('FlipH', 0.5, {}),
      ('Affine', 1.0, {'degrees': 10.0, 'translate': 0.0, 'scale': (0.9, 1.1), 'p_rotate': 0.5,
                       'p_scale': 0.5, 'p_translate': 1.0})]
  assert _chain(Augment.from_config(AUGMENT_PRESETS['mdanet_rot90'])) == [
      ('FlipH', 0.5, {}), ('FlipV', 0.5, {}), ('Rot90', 0.5, {'choices': (1, 3)}),
      ('Affine', 1.0, {'degrees': 0.0, 'translate': 0.0, 'scale': (0.8, 1.2), 'p_rotate': 1.0,
                       'p_scale': 0.5, 'p_translate': 1.0})]
  assert _chain(Augment.from_config(AUGMENT_PRESETS['thesis'])) == [
      ('FlipH', 0.5, {}), ('FlipV', 0.5, {}),
      ('Affine', 1.0, {'degrees': 7.0, 'translate': 0.0, 'scale': None, 'p_rotate': 0.5,
                       'p_scale': 1.0, 'p_translate': 1.0}),
      ('Elastic', 0.25, {'alpha': 3.0, 'sigma': 12.0}), ('Brightness', 0.5, {'delta': 0.1}),
      ('Contrast', 0.5, {'range': (0.9, 1.1)})]


@pytest.mark.parametrize('name', sorted(AUGMENT_PRESETS))
def test_every_preset_applies_to_a_square_slice(name):
  """'none' is the identity; every other preset changes the slice in some of 8 draws, keeping
  the image shape and dtype, the binary mask (lesion still present) and the other keys."""
  augment = Augment.from_config(AUGMENT_PRESETS[name])
  element = _element(64, 64)
  changed = []
  for seed in range(8):
    out = augment(element, np.random.default_rng(seed))
    assert out['image'].shape == (64, 64, C) and out['image'].dtype == np.float32
    assert set(np.unique(out['mask'])) <= {0, 1} and out['mask'].any()
    assert out['case_id'] == b'case-7' and out['slice_index'] == 3
    changed.append(not np.array_equal(out['image'], element['image']))
  if name == 'none':
    assert not any(changed)
  else:
    assert any(changed)
