"""The installable project: pins agree with requirements.txt, every console script and every
`python -m` form the README names reaches a command's main(argv), and the layout has no import
circle."""

import ast
import importlib
import pathlib
import re
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / 'pyproject.toml').read_text())
SCRIPTS = PYPROJECT['project']['scripts']


def _pins(lines):
  return sorted(line.split('#')[0].strip() for line in lines
                if line.split('#')[0].strip())


def test_dependencies_are_the_requirements_pins():
  assert _pins(PYPROJECT['project']['dependencies']) == _pins(
      (REPO / 'requirements.txt').read_text().splitlines())


def test_console_scripts_cover_every_command():
  assert set(SCRIPTS) == {'agmr-train', 'agmr-evaluate', 'agmr-predict', 'agmr-crossval',
                          'agmr-compare', 'agmr-build', 'agmr-sweep', 'agmr-evaluate-folder',
                          'agmr-study'}


@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_console_script_target_is_a_main_taking_argv(name, capsys):
  module, _, function = SCRIPTS[name].partition(':')
  main = getattr(importlib.import_module(module), function)
  with pytest.raises(SystemExit) as exit_info:
    main(['--help'])
  assert exit_info.value.code == 0
  assert '--' in capsys.readouterr().out  # The flags are listed.


LEGACY_MODULES = ('agmr_jax.main', 'agmr_jax.evaluate', 'agmr_jax.predict', 'agmr_jax.crossval',
                  'agmr_jax.compare', 'input_pipeline.build', 'launch.sweep')


def test_python_m_forms_are_the_console_scripts():
  """Every `python -m X` form of earlier versions (and every command the README shows that way)
  is the module of a console script, whose main takes the argument list."""
  readme = (REPO / 'README.md').read_text()
  shown = {m for m in re.findall(r'python -m ([a-z_.]+)', readme)  # user commands, not the
           if m.split('.')[0] in ('agmr_jax', 'input_pipeline', 'launch')}  # developer tools
  targets = {target.partition(':')[0] for target in SCRIPTS.values()}
  assert shown <= targets and set(LEGACY_MODULES) <= targets
  for module in LEGACY_MODULES:
    assert callable(importlib.import_module(module).main), module


PACKAGES = ('agmr_jax', 'input_pipeline', 'configs', 'launch', 'benchmarks')


def _module_graph() -> dict[str, set[str]]:
  """{module: project modules it imports}, imports inside functions included."""
  files = {'.'.join(p.relative_to(REPO).with_suffix('').parts).removesuffix('.__init__'): p
           for pkg in PACKAGES for p in (REPO / pkg).rglob('*.py')}
  graph = {}
  for module, path in files.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
      else:
        continue
      for name in names:
        while name and name not in files:
          name = name.rpartition('.')[0]
        if name and name != module and not module.startswith(name + '.'):
          deps.add(name)
    graph[module] = deps
  return graph


def test_no_import_circle_and_no_file_over_400_lines():
  graph = _module_graph()
  assert len(graph) > 100

  def reaches(start, goal, seen):
    for dep in graph[start]:
      if dep == goal or (dep not in seen and (seen.add(dep) or reaches(dep, goal, seen))):
        return True
    return False

  circles = sorted(m for m in graph if reaches(m, m, set()))
  assert not circles
  long = {str(p.relative_to(REPO)): n for pkg in PACKAGES for p in (REPO / pkg).rglob('*.py')
          if (n := len(p.read_text().splitlines())) > 400}
  assert not long


def test_models_and_input_pipeline_never_import_each_other():
  graph = _module_graph()
  for module, deps in graph.items():
    if module.startswith('agmr_jax.models'):
      assert not any(d.startswith('input_pipeline') for d in deps), module
    if module.startswith('input_pipeline'):
      assert not any(d.startswith('agmr_jax.models') for d in deps), module
