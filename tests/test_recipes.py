"""Tests for input_pipeline.recipes: shapes, offsets, normalisation, contour class, inverse."""

import dataclasses
import re

import numpy as np
import pytest

from input_pipeline import recipes
from input_pipeline.recipes import RECIPES
from input_pipeline.recipes import Recipe
from input_pipeline.recipes import SliceGeometry

X, Y, Z = 50, 60, 12  # slices are (H, W) = (Y, X) = (60, 50)


def _volume(channels: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random((channels, X, Y, Z), np.float32) + 0.1


def _blob(center=(25, 30, 6), radius=(9, 11, 4)) -> np.ndarray:
  x, y, z = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing='ij')
  d = sum(((a - c) / r) ** 2 for a, c, r in zip((x, y, z), center, radius))
  return (d <= 1).astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
  return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_presets_on_small_volumes(name):
  small = dataclasses.replace(RECIPES[name], crop=None if RECIPES[name].crop is None else (40, 36),
                              size=(32, 24))
  stack = small.forward(_volume(len(small.modalities)), _blob())
  assert stack.images.shape == (Z, 32, 24, small.num_channels) == (Z, *small.slice_shape)
  assert stack.images.dtype == np.float32 and stack.masks.dtype == np.uint8
  assert stack.masks.shape == (Z, 32, 24)
  assert set(np.unique(stack.masks)) == ({0, 1, 2} if small.contour else {0, 1})
  if small.groups is not None:
    assert sum(small.groups) == small.num_channels


def test_preset_settings():
  agmr, clci = RECIPES['agmr_2p5d'], RECIPES['clci']
  assert agmr.slice_shape == (192, 192, 4) and agmr.offsets == (-2, -1, 0, 1)
  assert agmr.geometry_for((197, 233, 189)).crop_box == (26, 8, 180, 180)
  assert clci.slice_shape == (224, 176, 1)
  assert clci.geometry_for((197, 233, 189)).crop_box == (4, 10, 224, 176)
  assert RECIPES['mdanet_isles2018'].groups == (2, 2)
  assert RECIPES['mdanet_isles2018'].slice_shape == (256, 256, 4)
  assert RECIPES['mdanet_isles2022'].slice_shape == (112, 112, 2)
  assert RECIPES['thesis_ct'].contour and RECIPES['thesis_ct'].size == (224, 224)
  assert RECIPES['thesis_mri'].normalize == 'minmax'
  assert all(r.name == key for key, r in RECIPES.items())


def test_neighbour_offsets_are_zero_padded_and_modality_major():
  recipe = Recipe('t', ('A', 'B'), crop=None, size=(Y, X), offsets=(-2, -1, 0, 1),
                  normalize='none', storage_dtype='float32')
  image = np.zeros((2, X, Y, Z), np.float32)
  image[0] = np.arange(1, Z + 1)  # slice z of modality A holds z + 1
  image[1] = 100 + np.arange(1, Z + 1)
  images = recipe.forward(image).images
  assert images.shape == (Z, Y, X, 8)
  first, last = images[0, 0, 0], images[Z - 1, 0, 0]
  np.testing.assert_array_equal(first, [0, 0, 1, 2, 0, 0, 101, 102])
  # Last slice (value Z): offsets -2, -1, 0 hold Z - 2, Z - 1, Z; +1 is beyond the end.
  np.testing.assert_array_equal(last, [Z - 2, Z - 1, Z, 0, 100 + Z - 2, 100 + Z - 1, 100 + Z, 0])
  np.testing.assert_array_equal(images[5, 3, 4], [4, 5, 6, 7, 104, 105, 106, 107])


def test_slices_follow_the_transpose_convention():
  recipe = Recipe('t', None, crop=None, size=(Y, X), normalize='none')
  image = _volume(1)
  stack = recipe.forward(image, _blob())
  np.testing.assert_array_equal(stack.images[7, ..., 0], image[0, :, :, 7].T)
  np.testing.assert_array_equal(stack.masks[6], _blob()[:, :, 6].T)


def test_zscore_over_nonzero_voxels_keeps_background_zero():
  vol = np.zeros((X, Y, Z), np.float32)
  brain = _blob().astype(bool)
  vol[brain] = np.random.default_rng(1).normal(300.0, 40.0, brain.sum())
  out = recipes.normalize_volume(vol, 'zscore')
  assert abs(out[brain].mean()) < 1e-4 and abs(out[brain].std() - 1) < 1e-4
  assert np.all(out[~brain] == 0)


def test_minmax_and_per_modality():
  image = np.stack([_volume(1)[0] * 1000 - 50, _volume(1, seed=2)[0] * 0.01])
  recipe = Recipe('t', None, crop=None, size=(Y, X), normalize='minmax')
  images = recipe.forward(image).images
  for m in range(2):
    assert images[..., m].min() == 0 and abs(images[..., m].max() - 1) < 1e-6
  np.testing.assert_array_equal(recipes.normalize_volume(np.full((3, 3, 3), 7.0), 'minmax'), 0)
  nan = np.ones((3, 3, 3), np.float32)
  nan[0, 0, 0] = np.nan
  assert np.isfinite(recipes.normalize_volume(nan, 'zscore')).all()


def test_contour_is_the_inner_border_of_a_square():
  square = np.zeros((9, 9), np.uint8)  # slice coordinates (rows, cols)
  square[2:7, 2:7] = 1
  mask = np.zeros((9, 9, 2), np.uint8)
  mask[:, :, 0] = square.T  # a slice is vol[:, :, z].T
  recipe = Recipe('t', None, crop=None, size=(9, 9), contour=True)
  masks = recipe.forward(np.ones((1, 9, 9, 2), np.float32), mask).masks
  expected = square.copy()
  expected[2:7, 2:7] = 2
  expected[3:6, 3:6] = 1
  np.testing.assert_array_equal(masks[0], expected)
  assert (masks[0] == 2).sum() == 16
  np.testing.assert_array_equal(masks[1], 0)


def test_contour_at_the_image_edge_and_single_pixels():
  lesion = np.zeros((4, 4), bool)
  lesion[:, :2] = True
  lesion[3, 3] = True
  border = recipes.lesion_contour(lesion)
  assert border[:, 0].all() and border[:, 1].all() and border[3, 3]
  lesion = np.zeros((5, 5), bool)
  lesion[:3, :3] = True
  assert not recipes.lesion_contour(lesion)[1, 1]


def test_geometry_round_trip():
  geometry = RECIPES['agmr_2p5d'].geometry_for((197, 233, 189))
  vector = geometry.to_array()
  assert vector.dtype == np.int64 and vector.shape == (recipes.GEOMETRY_LENGTH,)
  assert SliceGeometry.from_array(vector) == geometry
  padded = SliceGeometry((5, 6, 7), (-3, -1, 12, 8), (16, 16))
  assert SliceGeometry.from_array(padded.to_array()) == padded
  with pytest.raises(ValueError, match='geometry vector needs 9 values, got 4'):
    SliceGeometry.from_array(np.zeros(4, np.int64))


def test_inverse_of_the_identity_recipe_is_exact():
  recipe = Recipe('t', None, crop=None, size=(Y, X))
  mask = _blob() | _blob(center=(10, 50, 2), radius=(3, 2, 1))
  stack = recipe.forward(_volume(1), mask)
  np.testing.assert_array_equal(recipe.inverse(stack.masks.astype(np.float32), stack.geometry),
                                mask)
  one_hot = np.stack([1 - stack.masks, stack.masks], -1).astype(np.float32)
  back = recipe.inverse(one_hot, stack.geometry)
  assert back.shape == (X, Y, Z, 2)
  np.testing.assert_array_equal(back.argmax(-1), mask)


@pytest.mark.parametrize('crop,size', [((40, 44), (64, 48)), ((70, 56), (48, 40)),
                                       ((36, 30), (36, 30))])
def test_inverse_recovers_a_blob(crop, size):
  recipe = Recipe('t', None, crop=crop, size=size)
  mask = _blob()
  stack = recipe.forward(_volume(1), mask)
  back = recipe.inverse(stack.masks.astype(np.float32), stack.geometry)
  assert back.shape == (X, Y, Z) and back.dtype == np.float32
  assert _dice(back >= 0.5, mask) > 0.97
  probs = np.stack([1.0 - stack.masks, stack.masks], -1).astype(np.float32)
  multi = recipe.inverse(probs, stack.geometry)
  np.testing.assert_allclose(multi.sum(-1), 1.0, atol=1e-5)  # outside the crop: background 1


def test_outside_the_crop_is_zero_probability():
  recipe = Recipe('t', None, crop=(20, 20), size=(20, 20))
  stack = recipe.forward(_volume(1))
  back = recipe.inverse(np.ones((Z, 20, 20), np.float32), stack.geometry)
  top, left = stack.geometry.crop_box[:2]
  assert back.sum() == 20 * 20 * Z
  assert back[left:left + 20, top:top + 20].all()


def test_modality_selection_and_validation():
  recipe = Recipe('t', ('Tmax', 'CBF'), crop=None, size=(Y, X), normalize='none')
  image = np.stack([np.full((X, Y, Z), v, np.float32) for v in (1, 2, 3)])
  images = recipe.forward(image, modality_names=('cbf', 'CBV', 'TMAX')).images
  np.testing.assert_array_equal(images[0, 0, 0], [3, 1])
  with pytest.raises(KeyError, match=re.escape(
      "t: modalities ['Tmax'] not among ['CBF', 'CBV', 'MTT']")):
    recipe.forward(image, modality_names=('CBF', 'CBV', 'MTT'))
  with pytest.raises(ValueError, match='t: expected 2 modalities, got 3'):
    recipe.forward(image)  # 3 channels for 2 modalities
  with pytest.raises(ValueError, match=re.escape('bad: offsets (-1, 1) must contain 0')):
    Recipe('bad', ('A',), crop=None, size=(8, 8), offsets=(-1, 1))
  with pytest.raises(ValueError, match=re.escape('bad: groups (1, 2) do not sum to 2')):
    Recipe('bad', ('A', 'B'), crop=None, size=(8, 8), groups=(1, 2))


def test_storage_dtype():
  recipe = RECIPES['agmr_2p5d']
  assert recipe.to_storage(np.ones((2, 2), np.float32)).dtype == np.float16
  with pytest.raises(ValueError, match='agmr_2p5d: images overflow float16'):
    recipe.to_storage(np.full((2, 2), 1e6, np.float32))


def test_linear_resize_by_hand_with_clamped_edges():
  """Half-pixel centres: 2 -> 4 samples at source positions -0.25, 0.25, 0.75, 1.25, clamped to
  [0, 1]; so the edges repeat the end values exactly."""
  ramp = np.array([[0.0, 8.0]], np.float32)
  np.testing.assert_array_equal(recipes.resize_linear(ramp, (1, 4)), [[0.0, 2.0, 6.0, 8.0]])
  # 4 -> 2: positions 0.5 and 2.5.
  np.testing.assert_array_equal(recipes.resize_linear(np.array([[0, 2, 4, 6]], np.float32),
                                                      (1, 2)), [[1.0, 5.0]])


def test_open_modalities_and_empty_volumes_pass_through():
  image = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
  open_recipe = dataclasses.replace(RECIPES['tiny_2p5d'], modalities=None)
  np.testing.assert_array_equal(open_recipe.select(image, ['a', 'b']), image)
  empty = np.zeros((3, 4, 5), np.float32)
  np.testing.assert_array_equal(recipes.normalize_volume(empty, 'zscore'), empty)
  np.testing.assert_array_equal(recipes.normalize_volume(empty, 'minmax'), empty)


def test_crop_and_pad_boxes_by_hand():
  """_crop and _overlap on a 3 x 4 slice: a crop inside it, a zero pad past every side, and boxes
  as tall or as wide as the slice but shifted by one (the identity shortcut must not take them)."""
  s = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4)  # rows 1-4, 5-8, 9-12
  assert recipes._overlap(1, 2, 3) == (0, 2) and recipes._overlap(-1, 5, 3) == (1, 4)
  assert recipes._overlap(-2, 7, 4) == (2, 6) and recipes._overlap(2, 3, 4) == (0, 2)
  np.testing.assert_array_equal(recipes._crop(s, (1, 1, 2, 2)), [[[6, 7], [10, 11]]])
  padded = np.zeros((1, 5, 7), np.float32)
  padded[0, 1:4, 2:6] = s[0]
  np.testing.assert_array_equal(recipes._crop(s, (-1, -2, 5, 7)), padded)
  np.testing.assert_array_equal(recipes._crop(s, (1, 0, 3, 4)),
                                [[[5, 6, 7, 8], [9, 10, 11, 12], [0, 0, 0, 0]]])
  np.testing.assert_array_equal(recipes._crop(s, (0, 1, 3, 4)),
                                [[[2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]]])
  np.testing.assert_array_equal(recipes._crop(s, (0, 0, 3, 4)), s)


def _slices_as_volume(slices: np.ndarray) -> np.ndarray:
  """(Z, H, W) slices -> the (1, X, Y, Z) image whose axial slices they are (vol[:, :, z].T)."""
  return slices.transpose(2, 1, 0)[None]


def test_padding_forward_and_inverse_by_hand():
  """A (5, 7) crop of 3 x 4 slices is the box (-1, -2, 5, 7): the slice sits at rows 1-3, columns
  2-5 of zeros, and the inverse drops the padding again, exactly."""
  slices = np.arange(1, 25, dtype=np.float32).reshape(2, 3, 4)
  recipe = Recipe('t', None, crop=(5, 7), size=(5, 7), normalize='none', storage_dtype='float32')
  stack = recipe.forward(_slices_as_volume(slices), _slices_as_volume(slices > 12)[0])
  assert stack.geometry == SliceGeometry((4, 3, 2), (-1, -2, 5, 7), (5, 7))
  expected = np.zeros((2, 5, 7), np.float32)
  expected[:, 1:4, 2:6] = slices
  np.testing.assert_array_equal(stack.images[..., 0], expected)
  np.testing.assert_array_equal(stack.masks, expected > 12)
  back = recipe.inverse(stack.images[..., 0], stack.geometry)
  np.testing.assert_array_equal(back, _slices_as_volume(slices)[0])


def test_inverse_of_a_crop_by_hand():
  """A (2, 2) crop of 3 x 4 slices is the box (0, 1, 2, 2): the inverse puts slice-grid values at
  rows 0-1, columns 1-2 and probability 0 elsewhere; with classes, background 1 elsewhere."""
  recipe = Recipe('t', None, crop=(2, 2), size=(2, 2))
  geometry = recipe.geometry_for((4, 3, 1))
  assert geometry.crop_box == (0, 1, 2, 2)
  probs = np.array([[[0.1, 0.2], [0.3, 0.4]]], np.float32)
  expected = np.zeros((1, 3, 4), np.float32)
  expected[0, 0:2, 1:3] = probs[0]
  np.testing.assert_array_equal(recipe.inverse(probs, geometry), expected.transpose(2, 1, 0))
  classes = recipe.inverse(np.stack([1 - probs, probs], -1), geometry)
  assert classes.shape == (4, 3, 1, 2)
  np.testing.assert_allclose(classes[..., 1], expected.transpose(2, 1, 0))
  np.testing.assert_allclose(classes[..., 0], 1 - expected.transpose(2, 1, 0))


def test_geometry_fields_from_the_vector():
  geometry = SliceGeometry.from_array(np.arange(10, 19).reshape(3, 3))
  assert geometry.volume_shape == (10, 11, 12)
  assert geometry.crop_box == (13, 14, 15, 16)
  assert geometry.size == (17, 18)


def test_contour_of_a_lesion_filling_the_slice_is_its_edge():
  """Every pixel has all four neighbours inside except those on the image edge, which count as
  outside: the contour is the slice's border ring, in each of a stack of slices."""
  edge = np.ones((4, 6), bool)
  edge[1:-1, 1:-1] = False
  np.testing.assert_array_equal(recipes.lesion_contour(np.ones((2, 4, 6), bool)),
                                np.broadcast_to(edge, (2, 4, 6)))


def test_mask_resize_threshold_is_half():
  """8 -> 4 columns averages pairs: (0, 1) -> 0.5 is lesion (>= 0.5), (0, 0) is not; 2 -> 4 puts
  0.25 and 0.75 between 0 and 1, and only 0.75 is lesion."""
  image = np.ones((1, 8, 1, 1), np.float32)
  mask = np.array([0, 1, 1, 1, 0, 0, 1, 0], np.uint8).reshape(8, 1, 1)
  masks = Recipe('t', None, crop=None, size=(1, 4)).forward(image, mask).masks
  np.testing.assert_array_equal(masks, [[[1, 1, 0, 1]]])
  masks = Recipe('t', None, crop=None, size=(1, 4)).forward(
      np.ones((1, 2, 1, 1), np.float32), np.array([0, 1], np.uint8).reshape(2, 1, 1)).masks
  np.testing.assert_array_equal(masks, [[[0, 0, 1, 1]]])


def test_normalisation_of_degenerate_volumes():
  """Non-finite voxels become 0 before anything else; a z-score brain of one voxel or of one value
  is 0 (no division by a zero std); a brain with std below 1 is still divided by it."""
  raw = np.array([np.nan, np.inf, -np.inf, 2.0, 4.0], np.float32).reshape(1, 1, 5)
  np.testing.assert_array_equal(recipes.normalize_volume(raw, 'none'), [[[0, 0, 0, 2, 4]]])
  np.testing.assert_array_equal(recipes.normalize_volume(raw, 'minmax'), [[[0, 0, 0, 0.5, 1]]])
  one = np.zeros((3, 3, 3), np.float32)
  one[1, 1, 1] = 5.0
  np.testing.assert_array_equal(recipes.normalize_volume(one, 'zscore'), 0)
  flat = np.zeros((3, 3, 3), np.float32)
  flat[0] = 7.0
  np.testing.assert_array_equal(recipes.normalize_volume(flat, 'zscore'), 0)
  small = np.zeros((2, 2, 2), np.float32)
  small[0, 0, 0], small[1, 1, 1] = 1.0, 2.0  # mean 1.5, std 0.5
  expected = np.zeros((2, 2, 2), np.float32)
  expected[0, 0, 0], expected[1, 1, 1] = -1.0, 1.0
  np.testing.assert_array_equal(recipes.normalize_volume(small, 'zscore'), expected)


def test_storage_keeps_the_largest_float16():
  stored = RECIPES['agmr_2p5d'].to_storage(np.array([65504.0, -65504.0], np.float32))
  np.testing.assert_array_equal(stored, np.array([65504.0, -65504.0], np.float16))


def test_outputs_keep_their_documented_dtypes_whatever_the_input_dtype():
  recipe = Recipe('t', None, crop=None, size=(Y, X))
  stack = recipe.forward(_volume(1).astype(np.float64))
  assert stack.images.dtype == np.float32 and stack.masks.dtype == np.uint8
  assert stack.masks.shape == (Z, Y, X) and not stack.masks.any()
  back = recipe.inverse(stack.masks.astype(np.float64), stack.geometry)
  assert back.dtype == np.float32
  assert recipes.resize_linear(np.ones((2, 3), np.float64), (4, 4)).dtype == np.float32
  assert recipes._crop(np.ones((1, 4, 4), np.float32), (0, 0, 6, 6)).dtype == np.float32
  contour = recipes.lesion_contour(np.ones((3, 3), np.uint8))
  assert contour.dtype == bool and contour.sum() == 8
  for method in recipes.NORMALIZATIONS:
    assert recipes.normalize_volume(np.arange(8.0).reshape(2, 2, 2), method).dtype == np.float32
  flat = recipes.normalize_volume(np.full((2, 2, 2), 3.0), 'minmax')
  assert flat.shape == (2, 2, 2) and flat.dtype == np.float32 and not flat.any()


def test_recipe_refusals_name_the_value():
  with pytest.raises(ValueError, match='^' + re.escape(
      "tiny_2p5d: normalize must be one of ('zscore', 'minmax', 'none')") + '$'):
    dataclasses.replace(RECIPES['tiny_2p5d'], normalize='robust')
  with pytest.raises(ValueError, match=r"^unknown normalisation 'robust'$"):
    recipes.normalize_volume(np.zeros((2, 2, 2)), 'robust')
  stack = Recipe('t', None, crop=None, size=(Y, X)).forward(_volume(1))
  with pytest.raises(ValueError, match=r'^probs \(1, 2, 3\) do not match geometry SliceGeometry'):
    Recipe.inverse(np.zeros((1, 2, 3), np.float32), stack.geometry)


def test_forward_refusals_name_the_shapes():
  recipe = Recipe('t', None, crop=None, size=(Y, X))
  with pytest.raises(ValueError, match=r'^t: image must be \(C, X, Y, Z\), got \(4, 4, 4\)$'):
    recipe.forward(np.zeros((4, 4, 4), np.float32))
  with pytest.raises(ValueError, match=r'^t: mask \(4, 4, 4\) does not match image '
                     rf'\({X}, {Y}, {Z}\)$'):
    recipe.forward(_volume(1), np.zeros((4, 4, 4), np.uint8))
