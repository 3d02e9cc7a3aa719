"""input_pipeline.augment.device: the host presets' distributions, exactness, alignment, keys.

The last test trains a tiny run with device augmentation, kills it with SIGKILL after a
checkpoint, resumes it, and compares its final state bit for bit with an uninterrupted run
(the helpers of tests/test_kill_resume.py), and checks that the log and TensorBoard state the
data-wait share of every logging interval.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from agmr_jax import runs
from agmr_jax import sharding as sharding_lib
from agmr_jax.training import loop
from input_pipeline import augment as host
from input_pipeline.augment import device
from input_pipeline.augment.device import DeviceAugment
from input_pipeline.recipes import lesion_contour, resize_linear
from tests import launch_helpers as helpers

N = 32


def _example(seed: int = 0, contour: bool = False):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:N, :N]
  lesion = (yy - 13) ** 2 / 40 + (xx - 18) ** 2 / 20 <= 1
  mask = lesion.astype(np.uint8) + (lesion_contour(lesion) if contour else 0)
  return rng.standard_normal((N, N, 4)).astype(np.float32), mask.astype(np.uint8)


def _draws(config: dict, n: int = 2000) -> dict:
  aug = DeviceAugment.from_config(config, seed=5)
  keys = jax.vmap(lambda i: aug.example_key(7, i))(jnp.arange(n, dtype=jnp.uint32))
  draw = jax.jit(jax.vmap(lambda k: aug.draw(k, N, N)))
  return jax.tree.map(np.asarray, draw(keys))


def _batch(n: int = 8, contour: bool = False) -> dict:
  images, masks = zip(*(_example(s, contour) for s in range(n)))
  return {'image': np.stack(images), 'mask': np.stack(masks)}


def test_flip_rates_follow_the_probabilities():
  d = _draws({'flip_h': 0.3, 'flip_v': 0.5})
  assert abs(d['FlipH'].mean() - 0.3) < 0.04
  assert abs(d['FlipV'].mean() - 0.5) < 0.04
  assert abs((d['FlipH'] & d['FlipV']).mean() - 0.15) < 0.03  # Independent.


def test_angles_and_scales_cover_the_host_ranges():
  d = _draws(host.AUGMENT_PRESETS['mdanet'])
  rotated, zoomed = d['angle'] != 0, d['zoom'] != 1
  assert abs(rotated.mean() - 0.5) < 0.04 and abs(zoomed.mean() - 0.5) < 0.04
  degrees = np.degrees(d['angle'][rotated])
  assert np.abs(degrees).max() <= 90.0 + 1e-4 and degrees.min() < -85 and degrees.max() > 85
  assert abs(np.mean(degrees)) < 5 and abs(np.std(degrees) - 90 / math.sqrt(3)) < 3  # Uniform.
  zooms = d['zoom'][zoomed]
  assert 0.8 <= zooms.min() < 0.82 and 1.18 < zooms.max() <= 1.2
  assert abs(np.mean(zooms) - 1.0) < 0.01


def test_quarter_turns_are_exact():
  image, mask = _example()
  for k in (1, 3):
    aug = DeviceAugment.from_config({'rot90': {'p': 1.0, 'choices': (k,)}, 'flip_h': 1.0})
    out_image, out_mask = jax.jit(aug.example)(image, mask, aug.example_key(0, 0))
    np.testing.assert_array_equal(out_image, np.rot90(image[:, ::-1], k))
    np.testing.assert_array_equal(out_mask, np.rot90(mask[:, ::-1], k))
  with pytest.raises(ValueError, match='square'):
    aug.example(image[:, :30], mask[:, :30], aug.example_key(0, 0))


@pytest.mark.parametrize('config', [
    {key: 0.0 for key in ('flip_h', 'flip_v', 'rot90', 'rotate', 'scale', 'translate', 'elastic',
                          'brightness', 'contrast')},
    {'rotate': {'p': 1.0, 'degrees': 0.0}, 'scale': {'p': 1.0, 'range': (1.0, 1.0)},
     'translate': {'p': 1.0, 'fraction': 0.0}, 'elastic': {'p': 1.0, 'alpha': 0.0},
     'brightness': {'p': 1.0, 'delta': 0.0}, 'contrast': {'p': 1.0, 'range': (1.0, 1.0)}},
], ids=['probability_zero', 'strength_zero'])
def test_zero_strength_is_the_identity(config):
  batch = _batch(4, contour=True)
  out = jax.jit(DeviceAugment.from_config(config, seed=1).__call__)(batch, 3)
  np.testing.assert_array_equal(out['image'], batch['image'])
  np.testing.assert_array_equal(out['mask'], batch['mask'])
  assert out['mask'].dtype == np.uint8


@pytest.mark.parametrize('mask_mode', ['nearest', 'linear'])
def test_masks_keep_their_labels(mask_mode):
  config = {**host.AUGMENT_PRESETS['thesis'], 'scale': {'p': 0.5, 'range': (0.8, 1.2)},
            'mask_mode': mask_mode}
  aug = jax.jit(DeviceAugment.from_config(config).__call__)
  for contour, labels in ((False, {0, 1}), (True, {0, 1, 2})):
    out = np.asarray(aug(_batch(16, contour), 2)['mask'])
    assert set(np.unique(out)) == labels
    if contour and mask_mode == 'linear':  # The contour class is recomputed on the new lesion.
      np.testing.assert_array_equal(out == 2, lesion_contour(out > 0))


def test_image_and_mask_move_together():
  batch = _batch(16)
  batch['image'] = np.repeat(batch['mask'][..., None], 4, axis=-1).astype(np.float32)
  config = {**host.AUGMENT_PRESETS['mdanet'], 'elastic': {'p': 0.5, 'alpha': 2.0, 'sigma': 8.0}}
  # Linear masks go through the image's sampler: the image thresholded is the mask, exactly.
  linear = jax.jit(DeviceAugment.from_config({**config, 'mask_mode': 'linear'}).__call__)(batch, 1)
  np.testing.assert_array_equal(np.asarray(linear['image'][..., 0]) >= 0.5, linear['mask'] == 1)
  # Nearest-neighbour masks agree with it up to the boundary pixels.
  out = jax.jit(DeviceAugment.from_config(config).__call__)(batch, 1)
  image_lesion, mask_lesion = np.asarray(out['image'][..., 0]) >= 0.5, np.asarray(out['mask']) > 0
  assert not np.array_equal(mask_lesion, batch['mask'] > 0)
  iou = (image_lesion & mask_lesion).sum() / (image_lesion | mask_lesion).sum()
  assert iou > 0.9


def test_warps_match_the_host_ops():
  image, mask = _example()
  aug = DeviceAugment.from_config({'rotate': {'p': 1.0, 'degrees': 30.0},
                                   'scale': {'p': 1.0, 'range': (0.8, 1.2)},
                                   'translate': {'p': 1.0, 'fraction': 0.1}})
  key = aug.example_key(4, 2)
  d = aug.draw(key, N, N)
  out_image, out_mask = aug.example(image, mask, key)
  ref = host.Affine().apply({'image': image, 'mask': mask}, float(d['angle']), float(d['zoom']),
                            tuple(np.asarray(d['shift'], np.float64)))
  np.testing.assert_allclose(out_image, ref['image'], atol=1e-4)
  assert (np.asarray(out_mask) != ref['mask']).sum() <= 2  # Rounding ties at .5 only.
  # The elastic field: the host's coarse noise -> wrap-mode Gaussian -> linear resize, in matrices.
  noise = np.random.default_rng(0).standard_normal((2, 12, 12)).astype(np.float32)
  a_h, a_w = device._elastic_matrices(N, N, 12.0)  # pylint: disable=protected-access
  ref_field = resize_linear(ndimage.gaussian_filter(noise, (0, 4.0, 4.0), mode='wrap'), (N, N))
  np.testing.assert_allclose(np.einsum('hi,kij,wj->khw', a_h, noise, a_w), ref_field, atol=1e-5)
  field = np.asarray(DeviceAugment.from_config({'elastic': 1.0}).draw(key, N, N)['field'])
  np.testing.assert_allclose(field.std(axis=(1, 2)), 4.0, rtol=1e-3)  # The host's RMS alpha.


def test_each_example_is_keyed_by_seed_step_and_global_index():
  batch = _batch(4)
  aug = DeviceAugment.from_config(host.AUGMENT_PRESETS['thesis'], seed=3)
  out = jax.jit(aug.__call__)(batch, 11)
  for i in range(4):
    image, mask = jax.jit(aug.example)(batch['image'][i], batch['mask'][i], aug.example_key(11, i))
    np.testing.assert_array_equal(out['image'][i], image)
    np.testing.assert_array_equal(out['mask'][i], mask)
  other_step = jax.jit(aug.__call__)(batch, 12)
  other_seed = jax.jit(DeviceAugment.from_config(host.AUGMENT_PRESETS['thesis'], 4).__call__)(
      batch, 11)
  assert not np.array_equal(out['image'], other_step['image'])
  assert not np.array_equal(out['image'], other_seed['image'])


def test_one_and_eight_devices_augment_every_example_identically():
  assert jax.device_count() >= 8
  batch = _batch(16, contour=True)
  aug = DeviceAugment.from_config({**host.AUGMENT_PRESETS['thesis'], 'rot90': 0.5}, seed=2)
  outs = []
  for devices in (1, 8):
    mesh = sharding_lib.make_mesh(devices)
    fn = jax.jit(aug.__call__, in_shardings=(sharding_lib.data_sharded(mesh), None),
                 out_shardings=sharding_lib.data_sharded(mesh))
    out = fn(jax.device_put(batch, sharding_lib.data_sharded(mesh)), jnp.int32(5))
    assert len(out['image'].sharding.device_set) == devices
    outs.append(jax.tree.map(np.asarray, out))
  np.testing.assert_array_equal(outs[0]['image'], outs[1]['image'])
  np.testing.assert_array_equal(outs[0]['mask'], outs[1]['mask'])


def test_host_augment_is_skipped_when_augmentation_runs_on_the_device():
  assert host.host_augment('thesis', 'device') is None
  assert host.host_augment('none', 'host') is None
  assert len(host.host_augment('thesis', 'host').ops) == 6
  with pytest.raises(ValueError, match='augment_on'):
    host.host_augment('thesis', 'gpu')


TOTAL_STEPS = 6
OVERRIDES = {**helpers.SHARED_OVERRIDES, 'final_eval': False, 'data.val_fold': -1,
             'num_train_steps': TOTAL_STEPS, 'log_every_steps': 1, 'checkpoint_every_steps': 2,
             'async_checkpoints': 'false', 'data.augment': 'thesis', 'data.augment_on': 'device'}


def test_killed_run_with_device_augmentation_resumes_bitwise(tiny_built, data_dir, tmp_path):
  env = helpers.child_env(4)
  start = lambda workdir, log: helpers.start_main(
      helpers.main_args(data_dir, workdir, **OVERRIDES), env, log)
  ref_dir, run_dir = tmp_path / 'uninterrupted', tmp_path / 'interrupted'
  logs = [tmp_path / name for name in ('ref.log', 'killed.log', 'resumed.log')]
  reference = start(ref_dir, logs[0])
  helpers.wait_for(lambda: helpers.logged_steps(ref_dir), [reference], logs[0], what='step 1')
  proc = start(run_dir, logs[1])  # Compiled by now: finds the reference's programs in the cache.
  helpers.wait_for(lambda: max(helpers.logged_steps(run_dir), default=0) >= 3, [proc], logs[1],
                   what='step 3')
  proc.kill()
  proc.wait()
  assert helpers.checkpoint_steps(run_dir)[-1] >= 2
  assert helpers.wait(start(run_dir, logs[2]), logs[2]) == 0, helpers.tail(logs[2])
  assert 'Resumed from step' in logs[2].read_text()
  assert helpers.wait(reference, logs[0]) == 0, helpers.tail(logs[0])
  step_a, state_a = helpers.read_state(ref_dir)
  step_b, state_b = helpers.read_state(run_dir)
  assert step_a == step_b == TOTAL_STEPS
  helpers.assert_trees_equal(state_a, state_b)
  assert len(helpers.logged_steps(run_dir)) > TOTAL_STEPS  # Steps after the checkpoint ran twice.
  # Every logging interval states how long the loop waited for the loader, in the log and TB.
  rows = [r for r in runs.read_metrics(ref_dir) if 'train/loss' in r]
  assert all(0 <= r['train/data_wait_share'] <= 1 and r['train/data_wait_s'] >= 0 for r in rows)
  assert logs[0].read_text().count('% (') >= TOTAL_STEPS  # 'data wait 3% (0.01 s)'
  events = b''.join(p.read_bytes() for p in (ref_dir / 'tensorboard').glob('events*'))
  assert b'train/data_wait_share' in events


def test_data_wait_is_the_share_of_wall_time_spent_fetching():
  wait = loop.DataWait()
  with wait:
    time.sleep(0.05)
  time.sleep(0.05)
  waited, share = wait.interval()
  assert 0.05 <= waited < 0.09 and 0.35 < share < 0.65
  assert wait.interval()[0] == 0.0  # A new interval starts at each call.
