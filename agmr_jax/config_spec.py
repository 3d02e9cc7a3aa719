"""Configs named on a command line: `path.py[:variant]` plus dotted `key=value` overrides.

The one parser every command uses (main's --config.field=value goes through ml_collections, which
types values the same way; crossval's --set and sweep's pass-through overrides come here):
`parse_value` reads a string as the type of the field it replaces, `set_field` refuses a field
the config does not have. JAX-free, so launchers can use it.
"""

import ast
import importlib
import importlib.util
import pathlib
from collections.abc import Iterable

import ml_collections

REPO = pathlib.Path(__file__).resolve().parent.parent


def load_module(path: str):
  """The module of a config file given as a path (configs/unet.py) or a module name."""
  file = pathlib.Path(path)
  if file.suffix != '.py':
    return importlib.import_module(path)
  if not file.exists() and not (REPO / file).exists():
    raise FileNotFoundError(f'{path}: config file not found')
  if not file.is_absolute() and (REPO / file).exists():
    return importlib.import_module('.'.join(file.with_suffix('').parts))
  spec = importlib.util.spec_from_file_location(file.stem, file)
  if spec is None:
    raise FileNotFoundError(f'{path}: not a config file')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def format_value(value) -> str:
  """A value as agmr_jax.main's --config.field= flag parses it back."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(format_value(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def parse_value(text: str, current):
  """A command-line string as the type of the field it overrides."""
  if isinstance(current, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'expected true/false, got {text!r}')
    return text.lower() in ('true', '1')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def set_field(config: ml_collections.ConfigDict, key: str, value) -> None:
  """config[key] = value for a dotted key that must already exist (as on main's command line)."""
  *path, last = key.split('.')
  node = config
  for part in path:
    if part not in node:
      raise ValueError(f'{key!r}: the config has no field {part!r}')
    node = node[part]
  if last not in node:
    raise ValueError(f'{key!r}: the config has no field {key!r}')
  node[last] = tuple(value) if isinstance(value, list) else value


def get_field(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split('.'):
    node = node[part] if part in node else None
    if node is None:
      return None
  return node


def has_field(config: ml_collections.ConfigDict, key: str) -> bool:
  node = config
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def split_spec(spec: str) -> tuple[str, str]:
  """'configs/unet.py:tiny,fold=2' -> ('configs/unet.py', 'tiny,fold=2')."""
  path, _, variant = spec.partition(':')
  return path, variant


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
  """'batch_size=16', 'data.image_size=(96, 96)': dotted fields set as --config.x=y sets them."""
  for item in overrides:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'override {item!r} is not key=value')
    key = key.strip()
    current = get_field(config, key)
    try:
      parsed = parse_value(value.strip(), current)
    except ValueError as e:
      raise ValueError(f'override {item!r}: {key} takes a {type(current).__name__} ({e})') from e
    set_field(config, key, parsed)
