r"""MDANet (Zhang et al. 2024) on ISLES 2018 perfusion maps or ISLES 2022 DWI/ADC, with every
ablation row of its Tables 3-6.

  python -m agmr_jax.main --config=configs/mdanet.py --workdir=runs/mdanet
  python -m agmr_jax.main --config=configs/mdanet.py:dataset=synthetic_isles2022 \
      --workdir=runs/mdanet_2022
  python -m agmr_jax.main --config=configs/mdanet.py:dataset=isles2018 \
      --config.data.manual_dir=/data/ISLES2018/TRAINING --workdir=runs/mdanet_isles2018
  python -m agmr_jax.main --config=configs/mdanet.py:row=t4_add --workdir=runs/mdanet_add
  python -m agmr_jax.main --config=configs/mdanet.py:demo --workdir=runs/mdanet_demo

Paper settings (Sec. 4.2): groups {CBF, CBV} vs {MTT, Tmax} (recipe 'mdanet_isles2018') or DWI
vs ADC ('mdanet_isles2022', chosen automatically for a dataset named *2022*); Adam 1e-3
(beta 0.9 / 0.999), batch 16; random flips, rotation -90..90 degrees, scaling 0.8..1.2 (augment
preset 'mdanet'); loss Dice + CE + lambda * masked similarity, lambda = 1; 5-fold
cross-validation (`fold=k`). Not stated: epochs and any learning-rate decay ("initial learning
rate") -- 150 epochs at a constant rate here.

ISLES 2018 input: 128x128 (the 256x256 maps resized by 1/2). The paper's 25.3 M parameters and
11.22 GFLOPs together imply it: widths 64..1024 give 24.3 M parameters and 11.7 G multiply-adds
at 128x128 but about 4x that at 256x256 (models/mdanet.py).

Variant keys besides the common ones (tiny, demo, dataset, recipe, fold, bf16, seed):
  msc=False                 U-Net double convs instead of MSC blocks
  skip=subtract|add|concat  how the groups' features form the skip (Table 4)
  fusion=gcfb|nonlocal|transformer|none   bottleneck fusion (Table 5; none = plain F_1 - F_2)
  lam=1.0                   similarity-loss weight (Table 6)
  unet=True                 the single-path U-Net baseline (Table 3, first row)
  row=NAME                  one row of ABLATIONS below; keys given after it override it
"""

from configs import common

VARIANT_DEFAULTS = dict(common.VARIANT_DEFAULTS, msc=True, skip='subtract', fusion='gcfb',
                        lam=1.0, unet=False)

# Every row of Tables 3-6 as a variant string (a sweep expands these).
ABLATIONS = {
    # Table 3: components added one by one to the U-Net baseline.
    't3_unet': 'unet=True,lam=0',
    't3_dasc': 'msc=False,fusion=none,lam=0',
    't3_dasc_msc': 'fusion=none,lam=0',
    't3_dasc_msc_gcfb': 'lam=0',
    't3_mdanet': '',
    # Table 4: skip-connection strategies.
    't4_add': 'skip=add',
    't4_concat': 'skip=concat',
    't4_subtract': '',
    # Table 5: global fusion at the bottleneck.
    't5_baseline': 'fusion=none',
    't5_nonlocal': 'fusion=nonlocal',
    't5_transformer': 'fusion=transformer',
    't5_gcfb': '',
    # Table 6: similarity-loss weight.
    't6_lam0': 'lam=0',
    't6_lam025': 'lam=0.25',
    't6_lam05': 'lam=0.5',
    't6_lam075': 'lam=0.75',
    't6_lam1': '',
}

WIDTHS = (64, 128, 256, 512, 1024)  # Give the paper's 25.3 M parameters (models/mdanet.py).


def expand_row(arg: str | None) -> str:
  """'row=t4_add,tiny' -> 'skip=add,tiny': the row's keys first, explicit keys win."""
  items = [item for item in (arg or '').split(',') if item]
  rows = [item.partition('=')[2] for item in items if item.partition('=')[0] == 'row']
  if not rows:
    return arg or ''
  if len(rows) > 1 or rows[0] not in ABLATIONS:
    raise ValueError(f'row= takes one of {", ".join(ABLATIONS)}; got {rows}')
  rest = [item for item in items if item.partition('=')[0] != 'row']
  return ','.join(filter(None, [ABLATIONS[rows[0]], *rest]))


def _model(c, v, widths) -> None:
  if v.unet:
    # The baseline: one encoder over the stacked modalities, plain skips, no dropout.
    c.model = 'unet'
    c.model_kwargs.features = widths
    c.model_kwargs.dropout_rate = 0.0
    return
  c.model = 'mdanet'
  c.model_kwargs.features = widths  # Widths per level, finest first.
  c.model_kwargs.msc = v.msc  # MSC encoder blocks (else double convs).
  c.model_kwargs.skip = v.skip  # subtract = F_D (Eq. 1).
  c.model_kwargs.fusion = v.fusion  # Bottleneck fusion.


def _data(c, v) -> None:
  is_2022 = '2022' in v.dataset or v.dataset == 'synthetic_tiny_mri'
  if v.tiny:
    c.data.dataset = v.dataset if v.dataset.startswith('synthetic_tiny') else (
        'synthetic_tiny_mri' if is_2022 else 'synthetic_tiny_ct')
    c.data.recipe = v.recipe or ('tiny_mdanet_mri' if is_2022 else 'tiny_mdanet_ct')
    return
  c.data.dataset = v.dataset or 'synthetic_isles2018'
  c.data.recipe = v.recipe or ('mdanet_isles2022' if is_2022 else 'mdanet_isles2018')
  if not is_2022 and not v.recipe:
    c.data.image_size = (128, 128)  # The size the paper's FLOPs imply (module docstring).


def get_config(arg: str | None = None):
  v = common.parse_arg(expand_row(arg), **VARIANT_DEFAULTS)
  c = common.base()
  c.data.augment = 'mdanet'  # Flips, rotation -90..90 degrees, scaling 0.8..1.2.
  c.batch_size = 16
  c.num_epochs = 150.0  # Not stated in the paper.
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'constant'  # No decay is stated.
  c.loss.name = 'mdanet'
  c.loss.kwargs.lam = v.lam  # lambda of Eq. 9 (similarity-loss weight).
  c.loss.kwargs.smooth = 1.0  # Dice smoothing (plain sums, Eq. 11).
  common.apply_variant(c, v)
  _data(c, v)
  widths = WIDTHS
  if v.tiny:
    widths = (4, 8, 16, 32, 64)
  if v.demo:
    common.apply_demo(c)  # CPU-sized slices, subjects and steps (configs/common.py).
    widths = (16, 32, 64, 128, 256)
  _model(c, v, widths)
  return c


def get_sweep(arg: str | None = None):
  """Every ablation row of the paper's Tables 3-6 (`agmr-sweep --config configs/mdanet.py[:variant]`
  runs them all and tabulates them); the variant (e.g. `tiny`, `demo`) applies to every row."""
  del arg
  return [{'row': row} for row in ABLATIONS]
