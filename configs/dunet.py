r"""D-UNet (Zhou et al. 2019), AGMR-Net's baseline, on ATLAS 2.5D slices.

  python -m agmr_jax.main --config=configs/dunet.py --workdir=runs/dunet
  python -m agmr_jax.main --config=configs/dunet.py:dataset=atlas_r12 \
      --config.data.manual_dir=/data/ATLAS_R1.2 --workdir=runs/dunet_atlas

Paper settings: 192x192x4 input (slices z-2..z+1), Adam 1e-3 decayed 0.96 per epoch, 150 epochs,
focal (alpha 0.48, gamma 1.1) - log(Dice), batch 8 (D-UNet's public code), no augmentation.
"""

from configs import common


def get_config(arg: str | None = None):
  v = common.parse_arg(arg, **common.VARIANT_DEFAULTS)
  c = common.base()
  c.model = 'dunet'
  c.data.recipe = 'agmr_2p5d'
  c.loss.name = 'dunet_mix'
  c.loss.kwargs.alpha = 0.48  # Focal weight of lesion pixels.
  c.loss.kwargs.gamma = 1.1  # Focal exponent.
  c.loss.kwargs.dice_pooling = 'batch'  # One Dice over the batch, as D-UNet's Keras code.
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'exponential'
  c.optimizer.decay_rate = 0.96
  common.apply_variant(c, v)
  if v.tiny:
    c.model_kwargs.features = (4, 8, 16, 32, 64)
    c.model_kwargs.features_3d = (4, 8, 16)
  if v.demo:
    common.apply_atlas_demo(c)  # As AGMR-Net's demo (the README's main job).
  return c
