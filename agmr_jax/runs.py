"""A run on disk: the one module that knows a workdir's files and how to load what they hold.

Training, evaluation, prediction, cross-validation and sweeps all read a workdir through here:

  config.json        the config the run was started with (`write_config`, `load_config`)
  recipe.json        the preprocessing recipe of its records and which records (their source
                     fingerprint), written by training (`read_recipe`, `read_records`)
  metrics.jsonl      one JSON row per logged step (`read_metrics`)
  checkpoints/       the latest Orbax checkpoints with the data iterator (what a run resumes from)
  best/              the checkpoint with the best validation score (what evaluation restores)
  best.json          that score and step
  postprocess.json   the post-processing chosen on validation
  eval/{name}/       an evaluation: cases.csv, summary.json, summary.md, predictions/

`status` says whether a run is new, partial or finished, for every caller alike. This module
never imports JAX (the sweep launcher reads runs with it); writers are called by process 0 only.
"""

import dataclasses
import json
import pathlib
from typing import Any

import ml_collections
from absl import logging

from input_pipeline import recipes
from input_pipeline.errors import DataError

CONFIG = 'config.json'
RECIPE = 'recipe.json'
METRICS = 'metrics.jsonl'
CHECKPOINTS = 'checkpoints'
BEST = 'best'
BEST_SCORE = 'best.json'
POSTPROCESS = 'postprocess.json'
EVAL = 'eval'
CASES = 'cases.csv'
SUMMARY = 'summary.json'

# Fields a resumed run may change: they decide what is logged, saved or evaluated and where data
# are read, not the parameters reached. The training length may grow too (a warning says that a
# schedule tied to it then differs from an uninterrupted run's).
RESUME_MAY_CHANGE = frozenset({
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'max_checkpoints',
    'stop_after_steps', 'async_checkpoints', 'final_eval', 'tune_postprocess',
    'write_predictions', 'eval_batch_size', 'data.data_dir', 'data.manual_dir',
    'data.worker_count', 'data.read_threads'})
_LENGTH = frozenset({'num_train_steps', 'num_epochs'})
# Fields added after runs were saved, with the value those runs had (a config.json without the
# field was trained that way): augmentation ran on the host before data.augment_on existed, and
# two threads read before data.read_threads existed.
FORMER_DEFAULTS = {'data.augment_on': 'host', 'data.read_threads': 2}


def eval_dir(workdir, name: str = 'test') -> pathlib.Path:
  """Where the evaluation called `name` ('test', 'test-tta', ...) of a run lives."""
  return pathlib.Path(workdir) / EVAL / name


def has_checkpoint(workdir) -> bool:
  return any((pathlib.Path(workdir) / CHECKPOINTS).glob('[0-9]*'))


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / METRICS
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def status(workdir, config: ml_collections.ConfigDict) -> str:
  """'finished', 'partial' (holds a checkpoint) or 'new'.

  Finished: the test evaluation exists, or, with final_eval off, the last step was logged.
  """
  workdir = pathlib.Path(workdir)
  if (eval_dir(workdir) / SUMMARY).exists():
    return 'finished'
  steps = [r['step'] for r in read_metrics(workdir) if 'train/loss' in r]
  if (not config.final_eval and config.num_train_steps > 0 and steps
      and max(steps) >= config.num_train_steps):
    return 'finished'
  return 'partial' if has_checkpoint(workdir) else 'new'


def tuples(value):
  """JSON turns tuples into lists; model fields and recipe sizes expect tuples back."""
  if isinstance(value, dict):
    return {k: tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(tuples(v) for v in value)
  return value


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(path, f'not valid JSON ({e})') from e


def load_config(workdir) -> ml_collections.ConfigDict:
  """The config.json a training run wrote into its workdir."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f'{workdir}: run folder does not exist')
  path = workdir / CONFIG
  if not path.exists():
    raise FileNotFoundError(f'{path}: no {CONFIG}, is {workdir} a training workdir?')
  return ml_collections.ConfigDict(tuples(_read_json(path)))


def write_config(workdir, config: ml_collections.ConfigDict) -> None:
  (pathlib.Path(workdir) / CONFIG).write_text(config.to_json_best_effort(indent=2))


def config_changes(workdir, config: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
  """(dotted field, value in the workdir's config.json, value in `config`) for every field that
  differs; [] when the workdir has no config.json yet."""
  path = pathlib.Path(workdir) / CONFIG
  if not path.exists():
    return []
  saved = _read_json(path)
  for key, value in FORMER_DEFAULTS.items():
    *parents, last = key.split('.')
    node = saved
    for part in parents:
      node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.setdefault(last, value)
  return sorted(_changes(saved, json.loads(config.to_json_best_effort())))


def _changes(a, b, prefix=''):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      yield from _changes(a.get(k), b.get(k), f'{prefix}{k}.')
  elif a != b:
    yield prefix.rstrip('.'), a, b


def check_resumable(workdir, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a run under a config that would train it differently.

  A change to anything outside RESUME_MAY_CHANGE (model, data, loss, optimiser, seed, batch
  size, ...) would silently mix two experiments in one run, so it raises, naming the fields.
  """
  workdir = pathlib.Path(workdir)
  if not has_checkpoint(workdir):
    return
  changed = [c for c in config_changes(workdir, config) if c[0] not in RESUME_MAY_CHANGE]
  if all(name in _LENGTH for name, _, _ in changed):
    for name, old, new in changed:
      logging.warning('%s: resuming with %s %s (was %s); a schedule tied to the training length '
                      'now differs from an uninterrupted run', workdir, name, new, old)
    return
  details = ', '.join(f'{name}: {old!r} -> {new!r}' for name, old, new in changed)
  raise ValueError(f'{workdir / CONFIG}: {workdir} holds a run started with another config '
                   f'({details}); resume it with its own config, or train in a new --workdir')


def check_same_config(workdir, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir whose config.json differs from `config` in any field."""
  diff = [name for name, _, _ in config_changes(workdir, config)]
  if diff:
    raise ValueError(f'{pathlib.Path(workdir) / CONFIG}: this run was made with another config '
                     f'(differs in {", ".join(diff[:8])}); use another folder')


def best_score(workdir) -> float | None:
  path = pathlib.Path(workdir) / BEST_SCORE
  return _read_json(path)['score'] if path.exists() else None


def write_best_score(workdir, step: int, score: float) -> None:
  (pathlib.Path(workdir) / BEST_SCORE).write_text(json.dumps({'step': step, 'score': score}))


# --- the recipe, the data and the model --------------------------------------------------------

def recipe_from_config(config: ml_collections.ConfigDict) -> recipes.Recipe:
  recipe = recipes.RECIPES[config.data.recipe]
  size = tuple(int(s) for s in config.data.image_size)
  if any(size):
    recipe = dataclasses.replace(recipe, size=size)
  return recipe


def write_recipe(workdir, recipe: recipes.Recipe, records: dict | None = None) -> None:
  """recipe.json: the records' recipe, so evaluation and prediction never rebuild data to learn it,
  and which records the run was trained on (`records`: data.records_identity), so evaluation can
  tell when the data it reads are not those."""
  content = {'recipe': dataclasses.asdict(recipe), 'records': records}
  (pathlib.Path(workdir) / RECIPE).write_text(json.dumps(content, indent=2))


def _read_recipe_file(workdir) -> dict | None:
  path = pathlib.Path(workdir) / RECIPE
  if not path.exists():
    return None
  content = _read_json(path)
  # Before the records were recorded, recipe.json held the recipe's fields alone.
  return content if 'recipe' in content else {'recipe': content, 'records': None}


def read_recipe(workdir) -> recipes.Recipe | None:
  """The recipe.json training wrote, or None (a run trained before recipe.json existed)."""
  content = _read_recipe_file(workdir)
  return recipes.Recipe(**tuples(content['recipe'])) if content else None


def read_records(workdir) -> dict | None:
  """Which records the run was trained on (data.records_identity), or None if not recorded."""
  content = _read_recipe_file(workdir)
  return content['records'] if content else None
