r"""ISLES 2018-like perfusion study: MDANet against its baselines on synthetic_isles2018.

  agmr-study --study configs/studies/synthetic_isles2018.py \
      --workdir_root runs/study_synthetic_isles2018

MDANet reads its two modality groups ({CBF, CBV} vs {MTT, Tmax}); the U-Net baselines read the
same four maps stacked as channels (recipe mdanet_isles2018); the cross-attention U-Net runs its
CT variant (the CT image plus the four maps, with the lesion-contour class). Each keeps its
paper's loss and optimizer and its CPU `demo` widths; the protocol gives all the same subjects,
slice size, folds, budget in steps, augmentation and evaluation. `dataset=isles2018` with
`--config.data.manual_dir=...` is the real-data protocol.
"""

ENTRIES = {
    'mdanet': 'configs/mdanet.py:demo',
    'unet': 'configs/unet.py:demo,dataset=synthetic_isles2018,recipe=mdanet_isles2018',
    'attention_unet': ('configs/attention_unet.py:demo,dataset=synthetic_isles2018,'
                       'recipe=mdanet_isles2018'),
    'cross_attention_unet': 'configs/cross_attention_unet.py:demo,ct',
}

PROTOCOL = {
    'data.dataset': 'synthetic_isles2018',
    'data.num_subjects': 40,
    'data.image_size': (64, 64),
    'data.split_seed': 0,
    'data.test_fold': 4,
    'data.val_fold': 3,
    'data.augment': 'demo',
    'data.lesion_oversample': 3,
    'data.lesion_balance': 'case',
    'num_train_steps': 1000,
    'eval_every_steps': 250,
    'checkpoint_every_steps': 250,
    'log_every_steps': 50,
    'final_eval': True,
    'tune_postprocess': True,
    'write_predictions': True,
}


def get_study(arg: str | None = None) -> dict:
  """The study: entries {name: config:variant}, the reference, the protocol and the seeds."""
  del arg
  return {'entries': dict(ENTRIES), 'reference': 'mdanet', 'protocol': dict(PROTOCOL),
          'seeds': [0], 'split': 'test', 'montage_cases': 3}
