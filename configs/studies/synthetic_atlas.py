r"""ATLAS-like T1 study: AGMR-Net against its baselines on synthetic_atlas (issue 24).

  agmr-study --study configs/studies/synthetic_atlas.py --workdir_root runs/study_synthetic_atlas

Each network keeps its paper's loss and optimizer and its CPU `demo` widths; the protocol below
gives all of them the same data (60 subjects, 64x64 slices, 5 patient folds: train 0-2,
validate 3, test 4), the same budget in steps, the same augmentation and lesion sampling, and
the same evaluation (post-processing chosen on validation, predictions written). The
cross-attention U-Net's MRI variant reads ISLES 2017 maps by default; here it reads the same
2.5D T1 slices as the U-Net baselines. `dataset=atlas_r12` with `--config.data.manual_dir=...`
is the real-data protocol (real ATLAS volumes: drop `num_subjects`).
"""

ENTRIES = {
    'agmr_net': 'configs/agmr_net.py:demo',
    'dunet': 'configs/dunet.py:demo',
    'clci_net': 'configs/clci_net.py:demo',
    'unet': 'configs/unet.py:demo',
    'attention_unet': 'configs/attention_unet.py:demo',
    'cross_attention_unet': 'configs/cross_attention_unet.py:demo,recipe=agmr_2p5d',
}

PROTOCOL = {
    'data.dataset': 'synthetic_atlas',  # Every entry reads the same subjects...
    'data.num_subjects': 60,
    'data.image_size': (64, 64),  # ...at one in-plane size.
    'data.split_seed': 0,
    'data.test_fold': 4,
    'data.val_fold': 3,
    'data.augment': 'demo',
    'data.lesion_oversample': 3,
    'data.lesion_balance': 'case',
    'num_train_steps': 2000,  # The same budget in steps (each network's own batch size).
    'eval_every_steps': 500,
    'checkpoint_every_steps': 500,
    'log_every_steps': 100,
    'final_eval': True,
    'tune_postprocess': True,
    'write_predictions': True,  # The montage reads eval/test/predictions/.
}


def get_study(arg: str | None = None) -> dict:
  """The study: entries {name: config:variant}, the reference, the protocol and the seeds."""
  del arg
  return {'entries': dict(ENTRIES), 'reference': 'agmr_net', 'protocol': dict(PROTOCOL),
          'seeds': [0], 'split': 'test', 'montage_cases': 3}
