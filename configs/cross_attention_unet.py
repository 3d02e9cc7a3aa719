r"""Deeply supervised cross-attention U-Net (thesis, seed 003): ISLES 2017-like MRI, 2018-like CT.

  python -m agmr_jax.main --config=configs/cross_attention_unet.py --workdir=runs/ca_mri
  python -m agmr_jax.main --config=configs/cross_attention_unet.py:ct --workdir=runs/ca_ct
  python -m agmr_jax.main --config=configs/cross_attention_unet.py:ct,ablation=cw_ds,binary \
      --workdir=runs/ca_ct_cwds_binary

Paper settings (sec. 5.2-5.3): 224x224 slices min-max normalised per volume; AdamW lr 5e-3,
weight decay 1e-5, linear warm-up for 90 epochs then cosine decay for the remaining 510 (600 in
all; the warm-up keeps its 15% share when the length is rescaled), batch 32; augmentation:
brightness/contrast, h/v flips, rotations of +-7 degrees, elastic (preset 'thesis').
  MRI: ISLES 2017, ADC + TTP + Tmax (the best input of Table 1), sigmoid head, focal loss with a
       class weight map (0.3 background, 0.7 lesion).
  CT:  ISLES 2018, CT + CBF + CBV + MTT + Tmax, softmax over (background, lesion, 1-pixel lesion
       contour; recipe 'thesis_ct' writes the contour as mask value 2), cross-entropy with class
       weights (0.7, 2.0, 7.0). Evaluation reads lesion = lesion or contour.

Variant keys (besides common.VARIANT_DEFAULTS):
  ct        the CT configuration (default: MRI).
  ablation  row of the thesis's ablation (Figs. 8-9, Table 2):
              'unet'   plain U-Net: no class weights, no deep supervision, no attention
              'cw'     + class weight maps
              'cw_ds'  + deep supervision
              'full'   + cross-attention (the proposed model; default)
  binary    CT only: Table 2's "Binary" column, a sigmoid lesion head trained as the MRI model
            (focal, class weights 0.3 / 0.7) on the same records (contour read as lesion).
  tiny      tests: MRI-like 'synthetic_tiny' + 'tiny_2d', or CT 'synthetic_tiny_ct' +
            'tiny_thesis_ct'; widths 4..128 at 32x32.
  demo      CPU demonstration: 10 subjects at 96x96, widths 8..256, batch 16, 40 epochs for MRI
            and 80 for CT (15% warm-up), i.e. about 300 steps.
"""

import ml_collections

from configs import common

ABLATIONS = {
    # name: (class weight maps, deep supervision, cross-attention)
    'unet': (False, False, False),
    'cw': (True, False, False),
    'cw_ds': (True, True, False),
    'full': (True, True, True),
}
MRI_CLASS_WEIGHTS = (0.3, 0.7)
CT_CLASS_WEIGHTS = (0.7, 2.0, 7.0)
DS_WEIGHTS = (0.03, 0.045, 0.05, 0.125, 0.25, 0.5)  # Coarse (bottleneck) to fine (final head).
WARMUP_FRACTION = 90 / 600  # The thesis's warm-up share of training.


def _set_epochs(c: ml_collections.ConfigDict, epochs: float) -> None:
  c.num_epochs = epochs
  c.optimizer.warmup_epochs = WARMUP_FRACTION * epochs


def _set_objective(c: ml_collections.ConfigDict, *, ct: bool, binary: bool,
                   class_weights: bool) -> None:
  """Head size and loss: sigmoid + weighted focal, or softmax + weighted CE over 3 classes."""
  c.loss.kwargs = ml_collections.ConfigDict()
  if ct and not binary:
    c.model_kwargs.num_classes = 3  # Background, lesion, lesion contour.
    c.loss.name = 'thesis_ce'
    c.loss.kwargs.class_weights = CT_CLASS_WEIGHTS if class_weights else None
  else:
    c.model_kwargs.num_classes = 1
    c.loss.name = 'thesis_focal'
    c.loss.kwargs.class_weights = MRI_CLASS_WEIGHTS if class_weights else None
    c.loss.kwargs.gamma = 2.0  # Not given by the thesis; Lin et al.'s default.
  c.loss.kwargs.ds_weights = DS_WEIGHTS  # Only used when the model has deep-supervision heads.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  v = common.parse_arg(arg, **common.VARIANT_DEFAULTS, ct=False, ablation='full', binary=False)
  if v.ablation not in ABLATIONS:
    raise ValueError(f'unknown ablation {v.ablation!r}; known: {", ".join(ABLATIONS)}')
  if v.binary and not v.ct:
    raise ValueError("'binary' is a CT variant (the MRI model is binary already)")
  class_weights, deep_supervision, attention = ABLATIONS[v.ablation]

  c = common.base()
  c.model = 'cross_attention_unet'
  c.model_kwargs.attention = attention  # Cross-attention gate on every skip.
  c.model_kwargs.deep_supervision = deep_supervision  # Five auxiliary heads, coarse to fine.
  c.data.dataset = 'synthetic_isles2018' if v.ct else 'synthetic_isles2017'
  c.data.recipe = 'thesis_ct' if v.ct else 'thesis_mri'
  c.data.augment = 'thesis'
  _set_objective(c, ct=v.ct, binary=v.binary, class_weights=class_weights)
  c.batch_size = 32
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 5e-3
  c.optimizer.weight_decay = 1e-5
  c.optimizer.schedule = 'warmup_cosine'
  _set_epochs(c, 600.0)

  if v.tiny:
    v.dataset = v.dataset or ('synthetic_tiny_ct' if v.ct else 'synthetic_tiny')
    v.recipe = v.recipe or ('tiny_thesis_ct' if v.ct else 'tiny_2d')
  common.apply_variant(c, v)
  if v.tiny:
    c.model_kwargs.features = (4, 8, 16, 32, 64, 128)
  if v.demo:
    common.apply_demo(c)
    c.data.num_subjects = 10
    c.num_train_steps = -1  # Length in epochs, so the warm-up keeps its share.
    _set_epochs(c, 80.0 if v.ct else 40.0)  # About 300 steps each (ISLES 2018 volumes are thinner).
    c.eval_every_steps = 40
    c.log_every_steps = 10
    c.model_kwargs.features = (8, 16, 32, 64, 128, 256)
  return c


def get_sweep(arg: str | None = None):
  """The thesis's ablation (Figs. 8-9, Table 2): every `ablation=` row under the variant given
  (e.g. `ct` for the CT rows); `agmr-sweep` runs them all and tabulates them."""
  del arg
  return [{'ablation': name} for name in ABLATIONS]
