r"""A mutation check of the modules that decide correctness (slow: run it by hand, not in CI).

  .venv/bin/python -m tests.mutation_check [--only metrics,lesions] [--out docs/testing.md]

Each target is (module, functions to mutate, tests that should notice). For every mutation point
of those functions -- a comparison flipped (< <=, > >=, == !=, in / not in), an arithmetic
operator swapped (+ -, * /), `and`/`or` swapped, a `not` dropped, a small integer or float
constant changed by one (or 0.5 for floats), a `return x` turned into `return None` -- the module
is rewritten with that one change in a scratch copy of the repository, and the tests are run
there (`pytest -x -q`, stopping at the first failure). A mutant is killed when they fail,
survives when they pass. The table of mutants tried, killed and surviving (with the source line)
is printed and, with --out, written as markdown. Nothing in the working tree is changed.
"""

import argparse
import ast
import dataclasses
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  path: str
  functions: tuple[str, ...]  # Empty: every function of the module.
  tests: tuple[str, ...]


TARGETS = (
    Target('metrics', 'agmr_jax/evaluation/metrics.py',
           ('_spacing', 'overlap_from_counts', '_empty_kind', '_crop_box', '_surface',
            'surface_distances', '_distance_metrics', 'case_metrics', '_global_dsc', 'summarize'),
           ('tests/test_metrics.py', 'tests/test_lesions.py')),
    Target('lesions', 'agmr_jax/evaluation/lesions.py', (), ('tests/test_lesions.py',)),
    Target('postprocess', 'agmr_jax/inference/postprocess.py',
           ('__call__', 'remove_small_components', 'grid', 'load', 'load_shared'),
           ('tests/test_postprocess.py', '-k', 'not training_chooses',
            'tests/test_ensemble.py::test_ensemble_post_processing_is_the_members_common_choice')),
    Target('tune', 'agmr_jax/evaluation/tune.py', ('add', 'means', 'best', '_preference'),
           ('tests/test_postprocess.py', '-k', 'not training_chooses')),
    Target('recipes', 'input_pipeline/recipes.py', (), ('tests/test_recipes.py',)),
    Target('pipeline', 'input_pipeline/pipeline.py',
           ('train_dataset', 'oversample_lesions', 'lesion_repeats', 'split_folds'),
           ('tests/test_pipeline.py',)),
    Target('orientation', 'input_pipeline/orientation.py', (),
           ('tests/test_orientation.py::test_orientation_round_trip_is_exact',
            'tests/test_orientation.py::test_every_orientation_reads_as_the_same_ras_volume')),
)

_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
            ast.IsNot: ast.Is}
_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
          ast.FloorDiv: ast.Mult}


def _in_scope(tree: ast.Module, functions: tuple[str, ...]) -> list[ast.AST]:
  if not functions:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda))]
  return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name in functions]


def mutation_points(source: str, functions: tuple[str, ...]) -> list[tuple[int, int, str]]:
  """(node index in ast.walk order, line, description) of every mutable node in scope."""
  tree = ast.parse(source)
  scope = {id(n) for f in _in_scope(tree, functions) for n in ast.walk(f)}
  points = []
  for i, node in enumerate(ast.walk(tree)):
    if id(node) not in scope:
      continue
    what = None
    if isinstance(node, ast.Compare) and type(node.ops[0]) in _COMPARE:
      what = f'{type(node.ops[0]).__name__} -> {_COMPARE[type(node.ops[0])].__name__}'
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP:
      what = f'{type(node.op).__name__} -> {_BINOP[type(node.op)].__name__}'
    elif isinstance(node, ast.BoolOp):
      what = 'and <-> or'
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
      what = 'drop not'
    elif (isinstance(node, ast.Constant) and type(node.value) in (int, float)
          and not isinstance(node.value, bool)):
      what = f'constant {node.value!r} changed'
    elif isinstance(node, ast.Return) and node.value is not None:
      what = 'return None'
    if what:
      points.append((i, node.lineno, what))
  return points


def mutate(tree: ast.Module, index: int) -> ast.Module:
  """The tree with its `index`-th node (ast.walk order) mutated as mutation_points describes."""
  nodes = list(ast.walk(tree))
  target = nodes[index]
  if isinstance(target, ast.Compare):
    target.ops[0] = _COMPARE[type(target.ops[0])]()
  elif isinstance(target, ast.BinOp):
    target.op = _BINOP[type(target.op)]()
  elif isinstance(target, ast.BoolOp):
    target.op = ast.Or() if isinstance(target.op, ast.And) else ast.And()
  elif isinstance(target, ast.UnaryOp):
    parent = next(n for n in nodes for child in ast.iter_child_nodes(n) if child is target)
    for field, value in ast.iter_fields(parent):
      if value is target:
        setattr(parent, field, target.operand)
      elif isinstance(value, list):
        setattr(parent, field, [target.operand if v is target else v for v in value])
  elif isinstance(target, ast.Constant):
    target.value = target.value + (1 if isinstance(target.value, int) else 0.5)
  elif isinstance(target, ast.Return):
    target.value = ast.Constant(None)
  return ast.fix_missing_locations(tree)


def run_target(target: Target, scratch: pathlib.Path, timeout: float) -> list[dict]:
  source = (REPO / target.path).read_text()
  lines = source.splitlines()
  results = []
  for index, line, what in mutation_points(source, target.functions):
    mutant = ast.unparse(mutate(ast.parse(source), index))
    (scratch / target.path).write_text(mutant)
    t0 = time.perf_counter()
    try:
      proc = subprocess.run(
          [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', *target.tests],
          cwd=scratch, capture_output=True, timeout=timeout, check=False)
      killed = proc.returncode != 0
    except subprocess.TimeoutExpired:
      killed = True  # A mutant that hangs the tests is noticed too.
    results.append({'target': target.name, 'line': line, 'mutation': what, 'killed': killed,
                    'code': lines[line - 1].strip(), 'seconds': time.perf_counter() - t0})
    print(f"{target.name}:{line} {what}: {'killed' if killed else 'SURVIVED'}", flush=True)
  (scratch / target.path).write_text(source)
  return results


def markdown(results: list[dict]) -> str:
  lines = ['| module | mutants | killed | survived |', '|---|---|---|---|']
  for name in dict.fromkeys(r['target'] for r in results):
    rows = [r for r in results if r['target'] == name]
    killed = sum(r['killed'] for r in rows)
    lines.append(f'| {name} | {len(rows)} | {killed} | {len(rows) - killed} |')
  survivors = [r for r in results if not r['killed']]
  if survivors:
    lines += ['', 'Survivors:', '', '| module | line | mutation | code |', '|---|---|---|---|']
    lines += [f"| {r['target']} | {r['line']} | {r['mutation']} | `{r['code']}` |"
              for r in survivors]
  return '\n'.join(lines) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--only', default='', help='comma-separated target names')
  parser.add_argument('--out', help='write the markdown table here')
  parser.add_argument('--timeout', type=float, default=300, help='seconds per mutant')
  args = parser.parse_args()
  wanted = set(filter(None, args.only.split(',')))
  targets = [t for t in TARGETS if not wanted or t.name in wanted]
  with tempfile.TemporaryDirectory(prefix='mutation-') as tmp:
    scratch = pathlib.Path(tmp) / 'repo'
    shutil.copytree(REPO, scratch, ignore=shutil.ignore_patterns(
        '.venv', '.git', 'data', 'runs', '__pycache__', '*.egg-info'))
    results = [r for t in targets for r in run_target(t, scratch, args.timeout)]
  table = markdown(results)
  print(table)
  if args.out:
    pathlib.Path(args.out).write_text(table)


if __name__ == '__main__':
  main()
