r"""AGMR-Net (Du, Ma, Song) on ATLAS 2.5D slices, and every ablation row of its Tables 5-10.

  python -m agmr_jax.main --config=configs/agmr_net.py --workdir=runs/agmr
  python -m agmr_jax.main --config=configs/agmr_net.py:demo --workdir=runs/agmr_demo
  python -m agmr_jax.main --config=configs/agmr_net.py:row=t9_k3 --workdir=runs/agmr_k3
  python -m agmr_jax.main --config=configs/agmr_net.py:cpa=False,fusion=se_add \
      --workdir=runs/agmr_mdu_only

Paper settings (Sec. 4): 192x192x4 input (slices z-2..z+1, recipe 'agmr_2p5d'), Adam 1e-3 with
exponential decay 0.96 per epoch, 150 epochs, no augmentation; loss focal - log Dice + Sobel +
0.15 x the 5 CPA BCE terms (agmr_jax/objectives/agmr.py). The paper gives no batch size: 8, D-UNet's.

Variant keys besides the common ones (tiny, demo, dataset, recipe, fold, bf16, seed):
  cpa=False                 no attention after the encoder levels (same as attention=none)
  attention=cpa|fa|none     fa: CBAM's fine-grained spatial attention (Table 6)
  fusion=cff|cff_concat|se_add|add|concat
  cff_ratio=8               CFF's reduction rate R (Table 8: 32)
  mdu_kernels=3579          MDU kernel sizes, one digit each (Table 9: 3333, 5555, 7777, 9999)
  mdu_position=decoder|skip|encoder|none   none: D-UNet's upsample + 2x2 conv (Table 5)
  mdu_conv=True             the 3x3 conv-BN-ReLU after each decoder MDU (models/agmr_net.py)
  row=NAME                  one row of ABLATIONS below; keys given after it override it
Table 6's Attention-Unet row is configs/attention_unet.py; its baseline rows (D-UNet) are also
configs/dunet.py, trained with D-UNet's own loss rather than this one.
"""

from configs import common

VARIANT_DEFAULTS = dict(common.VARIANT_DEFAULTS, cpa=True, attention='cpa', fusion='cff',
                        cff_ratio=8, mdu_kernels='3579', mdu_position='decoder', mdu_conv=True)

_BASELINE = 'attention=none,fusion=se_add,mdu_position=none'  # D-UNet inside this config.

# Every row of Tables 5-10 as a variant string (a sweep expands these).
ABLATIONS = {
    # Table 5: each module on the D-UNet baseline.
    't5_baseline': _BASELINE,
    't5_cpa': 'fusion=se_add,mdu_position=none',
    't5_cff': 'attention=none,mdu_position=none',
    't5_mdu': 'attention=none,fusion=se_add',
    't5_cpa_cff': 'mdu_position=none',
    't5_agmr_net': '',
    # Table 6: coarse vs fine-grained attention on the baseline.
    't6_baseline_fa': 'attention=fa,fusion=se_add,mdu_position=none',
    't6_baseline_cpa': 'fusion=se_add,mdu_position=none',
    # Table 7: fusion alternatives inside AGMR-Net.
    't7_add': 'fusion=add',
    't7_concat': 'fusion=concat',
    't7_cff_concat': 'fusion=cff_concat',
    't7_agmr_net': '',
    # Table 8: CFF's reduction rate on the baseline.
    't8_baseline': _BASELINE,
    't8_cff_r32': 'attention=none,mdu_position=none,cff_ratio=32',
    't8_cff_r8': 'attention=none,mdu_position=none,cff_ratio=8',
    # Table 9: MDU kernel sets.
    't9_k3579': '',
    't9_k3': 'mdu_kernels=3333',
    't9_k5': 'mdu_kernels=5555',
    't9_k7': 'mdu_kernels=7777',
    't9_k9': 'mdu_kernels=9999',
    # Table 10: where the multi-scale block sits.
    't10_encoder': 'mdu_position=encoder',
    't10_skip': 'mdu_position=skip',
    't10_decoder': '',
}


def expand_row(arg: str | None) -> str:
  """'row=t9_k3,tiny' -> 'mdu_kernels=3333,tiny': the row's keys first, explicit keys win."""
  items = [item for item in (arg or '').split(',') if item]
  rows = [item.partition('=')[2] for item in items if item.partition('=')[0] == 'row']
  if not rows:
    return arg or ''
  unknown = [r for r in rows if r not in ABLATIONS]
  if unknown or len(rows) > 1:
    raise ValueError(f'row= takes one of {", ".join(ABLATIONS)}; got {rows}')
  rest = [item for item in items if item.partition('=')[0] != 'row']
  return ','.join(filter(None, [ABLATIONS[rows[0]], *rest]))


def _model_kwargs(c, v) -> None:
  kernels = tuple(int(k) for k in str(v.mdu_kernels))
  c.model_kwargs.attention = v.attention if v.cpa else 'none'  # After every encoder level.
  c.model_kwargs.fusion = v.fusion  # 2D/3D fusion at levels 2 and 3.
  c.model_kwargs.cff_ratio = v.cff_ratio  # CFF's R (also used by cff_concat).
  c.model_kwargs.mdu_kernels = kernels  # MDU branch kernels (odd).
  c.model_kwargs.mdu_position = v.mdu_position  # decoder | skip | encoder | none.
  c.model_kwargs.mdu_conv = v.mdu_conv  # 3x3 conv-BN-ReLU after each decoder MDU.


def get_config(arg: str | None = None):
  v = common.parse_arg(expand_row(arg), **VARIANT_DEFAULTS)
  c = common.base()
  c.model = 'agmr_net'
  _model_kwargs(c, v)
  c.data.recipe = 'agmr_2p5d'
  c.batch_size = 8
  c.num_epochs = 150.0
  c.loss.name = 'agmr'
  c.loss.kwargs.alpha = 0.48  # Focal weight of lesion pixels (D-UNet's).
  c.loss.kwargs.gamma = 1.1  # Focal exponent.
  c.loss.kwargs.smooth = 1.0  # Dice smoothing (squared sums).
  c.loss.kwargs.dice_pooling = 'batch'  # One Dice over the batch, as D-UNet's Keras code.
  c.loss.kwargs.sobel_weight = 1.0  # Eq. 15 adds the Sobel loss unweighted.
  c.loss.kwargs.sobel_norm = 'l1'  # Sobel magnitudes compared by L1 ('l2' also available).
  c.loss.kwargs.cpa_weight = 0.15  # Per CPA stage (ignored without CPA outputs).
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'exponential'
  c.optimizer.decay_rate = 0.96  # Per epoch.
  common.apply_variant(c, v)
  if v.tiny:
    c.model_kwargs.features = (4, 8, 16, 32, 64)
    c.model_kwargs.features_3d = (4, 8, 16)
  if v.demo:
    # The README's main job: the paper's network and loss at quarter width on 64x64 slices
    # (levels 64..4; CPA's 6x6 grid then uses adaptive patches, models/cpa.py); common.py says
    # why each demo setting.
    common.apply_atlas_demo(c)
  return c


def get_sweep(arg: str | None = None):
  """Every ablation row of the paper's Tables 5-10 (`agmr-sweep --config configs/agmr_net.py[:variant]`
  runs them all and tabulates them); the variant (e.g. `tiny`, `demo`) applies to every row."""
  del arg
  return [{'row': row} for row in ABLATIONS]
