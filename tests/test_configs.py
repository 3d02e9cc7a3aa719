"""Every config file loads in each of its variants and names things that exist."""

import importlib
import pathlib

import pytest

from agmr_jax import objectives
from agmr_jax.models import MODELS
from configs import common
from input_pipeline import augment
from input_pipeline import recipes
from input_pipeline import synthetic

CONFIG_FILES = sorted(p.stem for p in pathlib.Path(__file__).parents[1].glob('configs/*.py')
                      if p.stem not in ('__init__', 'common'))
# The default configs' global batch sizes (the papers' settings as each config file reads them).
DEFAULT_BATCH_SIZES = {'agmr_net': 8, 'attention_unet': 8, 'clci_net': 8,
                       'cross_attention_unet': 32, 'dunet': 8, 'mdanet': 16, 'unet': 8}


@pytest.mark.parametrize('name', CONFIG_FILES)
@pytest.mark.parametrize('variant', [None, 'tiny', 'demo'])
def test_config_names_existing_parts(name, variant):
  c = importlib.import_module(f'configs.{name}').get_config(variant)
  assert c.model == name  # each config file trains the network it is named after
  assert c.model in MODELS
  assert c.loss.name in objectives.OBJECTIVES
  assert c.data.recipe in recipes.RECIPES
  assert c.data.augment in augment.AUGMENT_PRESETS
  if variant:  # tiny and demo runs use the built-in synthetic data
    assert c.data.dataset in synthetic.SYNTHETIC
  fields = MODELS[c.model].__dataclass_fields__
  assert set(c.model_kwargs) <= set(fields), set(c.model_kwargs) - set(fields)
  if variant is None:
    assert c.batch_size == DEFAULT_BATCH_SIZES[name]
  else:  # tiny/demo shard their train and eval batches over the tests' 8 devices
    assert c.batch_size % 8 == 0 and c.eval_batch_size % 8 == 0, (c.batch_size, c.eval_batch_size)


def test_variant_parsing():
  v = common.parse_arg('tiny,fold=2,dataset=x,bf16=false', **common.VARIANT_DEFAULTS)
  assert v.tiny is True and v.fold == 2 and v.dataset == 'x' and v.bf16 is False
  with pytest.raises(ValueError, match='unknown config variant key'):
    common.parse_arg('nope=1', **common.VARIANT_DEFAULTS)


def test_fold_variant_sets_test_and_validation_folds():
  c = importlib.import_module('configs.dunet').get_config('fold=4')
  assert (c.data.test_fold, c.data.val_fold) == (4, 0)
