r"""CLCI-Net (Yang et al., MICCAI 2019) on ATLAS T1 slices cropped to 224x176.

  python -m agmr_jax.main --config=configs/clci_net.py --workdir=runs/clci
  python -m agmr_jax.main --config=configs/clci_net.py:demo --workdir=runs/clci_demo
  python -m agmr_jax.main --config=configs/clci_net.py:aspp=0,clf=0,inference=0 \
      --workdir=runs/clci_baseline          # Table 2's baseline (BN U-Net)

Paper settings: 224x176x1 input (recipe 'clci': centre crop, no resize, z-score), loss
1 - soft Dice with squared sums and smoothing 1 (the public code's dice_coef_loss), Adam 1e-4
with no decay. The paper gives no batch size or epoch count; batch 8 and 150 epochs are the
project's defaults, shared with the other ATLAS models.

Variant keys besides the common ones (tiny, demo, dataset, recipe, fold, bf16, seed): the
switches of Table 2, each on by default: `aspp`, `clf`, `inference` (e.g. `clf=0`).
"""

from configs import common

VARIANT_DEFAULTS = dict(common.VARIANT_DEFAULTS, aspp=True, clf=True, inference=True)

# Table 2 of the paper, row by row, as variant strings (a sweep over the ablation).
TABLE2 = {
    'baseline': 'aspp=0,clf=0,inference=0',
    'aspp': 'aspp=1,clf=0,inference=0',
    'clf': 'aspp=0,clf=1,inference=0',
    'inference': 'aspp=0,clf=0,inference=1',
    'aspp+clf': 'aspp=1,clf=1,inference=0',
    'aspp+inference': 'aspp=1,clf=0,inference=1',
    'clf+inference': 'aspp=0,clf=1,inference=1',
    'clci_net': 'aspp=1,clf=1,inference=1',
}


def get_config(arg: str | None = None):
  v = common.parse_arg(arg, **VARIANT_DEFAULTS)
  c = common.base()
  c.model = 'clci_net'
  c.model_kwargs.use_aspp = v.aspp  # CLF-ASPP (or plain ASPP without clf) at the bottleneck.
  c.model_kwargs.use_clf = v.clf  # Cross-level fusion in the encoder and the ASPP.
  c.model_kwargs.use_inference = v.inference  # ConvLSTM context inference in the decoder.
  c.data.recipe = 'clci'
  c.loss.name = 'soft_dice'
  c.loss.kwargs.smooth = 1.0  # Keras dice_coef: (2 I + 1) / (sum p^2 + sum t^2 + 1).
  c.loss.kwargs.dice_pooling = 'batch'  # Keras flattens the batch: one Dice per batch.
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-4
  c.optimizer.schedule = 'constant'
  if v.tiny:
    # Tests and smoke runs: 3 levels on 32x32 whole-slice T1 records.
    c.model_kwargs.features = (4, 8, 16)
    c.model_kwargs.fusion_expansion = 2
    c.model_kwargs.aspp_features = 8
    c.model_kwargs.aspp_out_features = 16
  common.apply_variant(c, v)
  if v.tiny:
    c.data.recipe = v.recipe or 'tiny_2d'
  if v.demo:
    # CPU-sized: the paper's 224x176 crop resized to 80x64 (aspect 1.25 vs 1.27; multiples of 16
    # for the four poolings), quarter widths, batch 8, and a 10x learning rate for 300 steps.
    common.apply_demo(c)
    c.data.image_size = (80, 64)
    c.model_kwargs.features = (8, 16, 32, 64, 128)
    c.model_kwargs.aspp_features = 64
    c.model_kwargs.aspp_out_features = 256
    c.batch_size = 8
    c.num_train_steps = 300
    c.log_every_steps = 10
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.optimizer.learning_rate = 1e-3
  return c
