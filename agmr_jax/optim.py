"""Optimizers and learning-rate schedules from optax, built from the config.

- 'adam' with `schedule='exponential'`: lr * decay_rate ** epoch (staircase per epoch), the
  D-UNet / AGMR-Net setting (Adam 1e-3, 0.96 per epoch).
- 'adamw' with `schedule='warmup_cosine'`: linear warm-up, then cosine to zero (the thesis's
  AdamW 5e-3, 90 warm-up + 510 cosine epochs, scaled by the config).
- 'constant' schedules for CLCI-Net / MDANet's plain Adam.
Optional global-norm gradient clipping runs before the optimizer.
"""

import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                  total_steps: int) -> optax.Schedule:
  lr = cfg.learning_rate
  if cfg.schedule == 'constant':
    return optax.constant_schedule(lr)
  if cfg.schedule == 'exponential':
    return optax.exponential_decay(lr, transition_steps=steps_per_epoch,
                                   decay_rate=cfg.decay_rate, staircase=True)
  if cfg.schedule == 'warmup_cosine':
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=0.0)
  raise ValueError(f'unknown schedule {cfg.schedule!r}')


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                   total_steps: int) -> optax.GradientTransformation:
  schedule = make_schedule(cfg, steps_per_epoch, total_steps)
  if cfg.name == 'adam':
    tx = optax.adam(schedule)
  elif cfg.name == 'adamw':
    tx = optax.adamw(schedule, weight_decay=cfg.weight_decay)
  elif cfg.name == 'sgd':
    tx = optax.sgd(schedule, momentum=0.9)
  else:
    raise ValueError(f'unknown optimizer {cfg.name!r}')
  if cfg.get('clip_norm'):
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
  return tx
