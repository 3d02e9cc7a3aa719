r"""The tests' study: two tiny networks on synthetic_tiny for a few steps (tests/test_study.py).

  agmr-study --study configs/studies/tiny.py --workdir_root /tmp/study_tiny
"""

ENTRIES = {
    'unet': 'configs/unet.py:tiny',
    'attention_unet': 'configs/attention_unet.py:tiny',
}

PROTOCOL = {
    'data.dataset': 'synthetic_tiny',
    'num_train_steps': 2,
    'eval_every_steps': 2,
    'checkpoint_every_steps': 2,
    'log_every_steps': 1,
    'tune_postprocess': False,  # Saves the validation search: the test times the machinery.
    'write_predictions': True,
}


def get_study(arg: str | None = None) -> dict:
  """Two tiny entries, U-Net the reference, one seed."""
  del arg
  return {'entries': dict(ENTRIES), 'reference': 'unet', 'protocol': dict(PROTOCOL),
          'seeds': [0], 'split': 'test', 'montage_cases': 3}
