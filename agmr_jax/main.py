r"""Trains and evaluates one config.

  python -m agmr_jax.main --config=configs/dunet.py:dataset=synthetic_atlas --workdir=runs/x

A workdir that holds a checkpoint is resumed. Any config field can be overridden with
--config.field=value (e.g. --config.batch_size=16). SIGTERM (under jax.distributed: a preemption
notice to any process) saves a checkpoint at the current step and exits with status 75
(runtime.EXIT_PREEMPTED); config.deterministic sets XLA's deterministic GPU flags before JAX starts.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and results go.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 for multi-host jax.distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes under jax.distributed.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process under jax.distributed.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() with cluster auto-detection (TPU VM '
    'pods, SLURM, Open MPI) when no coordinator is given.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from agmr_jax import runtime  # pylint: disable=g-import-not-at-top
  added = runtime.set_xla_flags(_CONFIG.value.get('deterministic', False))
  import jax  # pylint: disable=g-import-not-at-top  (after flags, so XLA flags can be set first)
  if added:
    logging.info('deterministic: XLA_FLAGS=%s', os.environ['XLA_FLAGS'])
  if _DISTRIBUTED.value or _COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  from agmr_jax import logs  # pylint: disable=g-import-not-at-top
  from agmr_jax import train  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  from input_pipeline.errors import DataError  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.Preempted as e:
    logging.warning('%s', e)
    sys.exit(runtime.EXIT_PREEMPTED)
  except (DataError, train.NonFiniteLossError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
