"""AGMR-Net: Table 9 parameter counts, the assembled network and its ablation variants, the loss
terms, and a short training run that lowers the loss (the CPA / CFF / MDU modules against
hand-built examples and their equations: test_agmr_net_modules.py).

Counts and shapes use jax.eval_shape (no compile); numerical checks run small jitted modules
with numpy-filled variables (no RNG kernels to compile).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agmr_jax import objectives
from agmr_jax import runs
from agmr_jax.models import MODELS
from agmr_jax.models import cff as cff_lib
from agmr_jax.models import cpa as cpa_lib
from agmr_jax.models.agmr_net import MDUUpsample
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
