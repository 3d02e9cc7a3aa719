"""U-Net baseline on the same 2.5D ATLAS slices, loss and schedule as D-UNet (AGMR's Table 4)."""

from configs import dunet


def get_config(arg: str | None = None):
  c = dunet.get_config(arg)
  c.model = 'unet'
  c.model_kwargs = {'features': tuple(c.model_kwargs.features)} if 'features' in c.model_kwargs else {}
  return c
