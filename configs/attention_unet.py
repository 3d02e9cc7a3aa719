"""Attention U-Net (Oktay et al.) baseline, trained exactly like the U-Net baseline."""

from configs import unet


def get_config(arg: str | None = None):
  c = unet.get_config(arg)
  c.model = 'attention_unet'
  return c
