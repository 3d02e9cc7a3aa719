r"""Trains and evaluates one config (training/train.py: train_and_evaluate).

  agmr-train --config=configs/dunet.py:dataset=synthetic_atlas --workdir=runs/x
  python -m agmr_jax.main ...   (the same command)

A workdir that holds a checkpoint is resumed. Any config field can be overridden with
--config.field=value (e.g. --config.batch_size=16). SIGTERM (under jax.distributed: a preemption
notice to any process) saves a checkpoint at the current step and exits with status 75
(runtime.EXIT_PREEMPTED); config.deterministic sets XLA's deterministic GPU flags before JAX starts.
"""

import os
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from agmr_jax import cli
from agmr_jax import runtime

FLAGS = cli.new_flags()
config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).',
                                flag_values=FLAGS, lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and results go.', flag_values=FLAGS)
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 for multi-host jax.distributed.', flag_values=FLAGS)
flags.DEFINE_integer('num_processes', None, 'Processes under jax.distributed.', flag_values=FLAGS)
flags.DEFINE_integer('process_id', None, 'This process under jax.distributed.', flag_values=FLAGS)
flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() with cluster auto-detection (TPU VM '
    'pods, SLURM, Open MPI) when no coordinator is given.', flag_values=FLAGS)
cli.define_compilation_cache(FLAGS)
cli.require(FLAGS, 'config', 'workdir')


def _start_jax(f) -> None:
  """XLA flags first (read once, when JAX builds its backends), then jax.distributed."""
  added = runtime.set_xla_flags(f.config.get('deterministic', False))
  import jax  # pylint: disable=g-import-not-at-top  (after the XLA flags)
  if added:
    logging.info('deterministic: XLA_FLAGS=%s', os.environ['XLA_FLAGS'])
  if f.distributed or f.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes, process_id=f.process_id)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)


def _train(f) -> None:
  _start_jax(f)
  from agmr_jax import compile_cache  # pylint: disable=g-import-not-at-top
  cache = compile_cache.enable(compile_cache.resolve(f.compilation_cache, f.workdir))
  try:
    _train_and_evaluate(f)
  finally:
    compile_cache.log_counts(cache)


def _train_and_evaluate(f) -> None:
  from agmr_jax.training import loop  # pylint: disable=g-import-not-at-top
  from agmr_jax.training import train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(f.config, f.workdir)
  except train.Preempted as e:
    logging.warning('%s', e)
    sys.exit(runtime.EXIT_PREEMPTED)
  except loop.NonFiniteLossError as e:
    raise ValueError(str(e)) from e


def main(argv=None) -> int:
  return cli.run(FLAGS, argv, _train)


if __name__ == '__main__':
  cli.entry(main)
