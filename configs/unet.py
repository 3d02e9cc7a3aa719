"""U-Net baseline on the same 2.5D ATLAS slices, loss and schedule as D-UNet (AGMR's Table 4)."""

from configs import dunet


def get_config(arg: str | None = None):
  c = dunet.get_config(arg)
  c.model = 'unet'
  c.model_kwargs = {'features': tuple(c.model_kwargs.features)} if 'features' in c.model_kwargs else {}
  return c


def get_sweep(arg: str | None = None):
  """5-fold cross-validation x 3 seeds (15 runs; `agmr-sweep`); tiny: 2 folds x 2.

  Each point is the `fold=k` variant: test fold k, checkpoint selected on fold k + 1.
  """
  num_folds = get_config(arg).data.num_folds
  tiny = 'tiny' in [item.partition('=')[0] for item in (arg or '').split(',')]
  if tiny:  # The last two folds: the tiny dataset's test fold (4) and one more.
    folds, seeds = range(num_folds - 2, num_folds), range(2)
  else:
    folds, seeds = range(num_folds), range(3)
  return [{'fold': k, 'seed': s} for k in folds for s in seeds]
