"""Sweep points as cluster jobs: a SLURM array script and a Kubernetes list of Jobs.

Each point is one single-host job running `python -m agmr_jax.main <the point's arguments>` from
the repository root; its workdir is on storage every node sees, so a re-submitted or restarted
point resumes from its checkpoint. A point stopped by SIGTERM exits with status 75 after saving:
the SLURM task re-queues itself, and the Kubernetes Job recreates the pod without counting a
failure (podFailurePolicy), as it does for node drains and preemptions (DisruptionTarget).
"""

import json
import pathlib
import re
import shlex

from agmr_jax import runtime

REPO = pathlib.Path(__file__).resolve().parent.parent
EXIT_PREEMPTED = runtime.EXIT_PREEMPTED

_SLURM_HEADER = """#!/bin/bash
# Written by launch.sweep: {n} unfinished points of {config}, one array task each.
#   sbatch {script}   (then `python -m launch.sweep ... --run none` tabulates the results)
# Variables: PYTHON (default {python}) runs each point.
#SBATCH --job-name={job}
#SBATCH --array=0-{last}
#SBATCH --nodes=1
#SBATCH --ntasks=1
{gres}#SBATCH --output={root}/slurm-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
: "${{SLURM_ARRAY_TASK_ID:?submit this script with sbatch (it is an array job)}}"
cd {repo}
"""

_SLURM_BODY = """eval "args=(${{points[$SLURM_ARRAY_TASK_ID]}})"
status=0
"${{PYTHON:-{python}}}" -m agmr_jax.main "${{args[@]}}" || status=$?
if [ "$status" -eq {preempted} ]; then
  # Preempted or out of time after a checkpoint: queue this task again; it resumes.
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
exit "$status"
"""


def _job_name(root: pathlib.Path) -> str:
  return re.sub(r'[^a-z0-9-]', '-', root.name.lower()).strip('-')[:40] or 'sweep'


def write_slurm_array(points, root: pathlib.Path, *, python: str, gpus: int) -> pathlib.Path:
  """Writes `root/sweep.sbatch`: array task i runs points[i]."""
  script = root / 'sweep.sbatch'
  config = points[0].args[0].partition('=')[2]
  lines = [_SLURM_HEADER.format(
      n=len(points), config=config, script=shlex.quote(str(script)), python=python,
      job=_job_name(root), last=len(points) - 1, root=root,
      gres=f'#SBATCH --gres=gpu:{gpus}\n' if gpus > 0 else '', repo=shlex.quote(str(REPO)))]
  lines.append('points=(')
  for point in points:
    lines.append('  ' + shlex.quote(' '.join(shlex.quote(a) for a in point.args)) +
                 f'  # {point.name}')
  lines.append(')')
  lines.append(_SLURM_BODY.format(python=python, preempted=EXIT_PREEMPTED))
  root.mkdir(parents=True, exist_ok=True)
  script.write_text('\n'.join(lines).rstrip('\n') + '\n')
  script.chmod(0o755)
  return script


def k8s_job(point, index: int, *, prefix: str, image: str, pvc: str, mount: str, gpus: int,
            repo_dir: str) -> dict:
  """One batch/v1 Job running one point; the PVC is mounted where the workdirs live."""
  resources = {'limits': {'nvidia.com/gpu': gpus}} if gpus > 0 else {}
  return {
      'apiVersion': 'batch/v1',
      'kind': 'Job',
      'metadata': {'name': f'{prefix}-{index}',
                   'labels': {'app': 'agmr-jax-sweep', 'sweep': prefix},
                   'annotations': {'agmr-jax/point': point.name}},
      'spec': {
          'backoffLimit': 2,
          'podFailurePolicy': {'rules': [
              {'action': 'Ignore', 'onExitCodes': {'operator': 'In',
                                                   'values': [EXIT_PREEMPTED]}},
              {'action': 'Ignore', 'onPodConditions': [{'type': 'DisruptionTarget'}]},
          ]},
          'template': {'spec': {
              'restartPolicy': 'Never',
              'containers': [{
                  'name': 'train',
                  'image': image,
                  'workingDir': repo_dir,
                  'command': ['python', '-m', 'agmr_jax.main', *point.args],
                  'resources': resources,
                  'volumeMounts': [{'name': 'runs', 'mountPath': mount}],
              }],
              'volumes': [{'name': 'runs', 'persistentVolumeClaim': {'claimName': pvc}}],
          }},
      },
  }


def write_k8s_jobs(points, root: pathlib.Path, *, image: str, pvc: str, gpus: int,
                   repo_dir: str | None = None) -> pathlib.Path:
  """Writes `root/sweep_jobs.json`, a v1 List (JSON is YAML: `kubectl apply -f` takes it).

  `repo_dir` is where the image holds this repository (default: the same path as here). The PVC
  is mounted at the workdir root, so the points' absolute workdirs hold inside the pod too; a
  relative `data.data_dir` resolves against `repo_dir`.
  """
  prefix = _job_name(root)
  items = [k8s_job(p, i, prefix=prefix, image=image, pvc=pvc, mount=str(root), gpus=gpus,
                   repo_dir=repo_dir or str(REPO)) for i, p in enumerate(points)]
  path = root / 'sweep_jobs.json'
  root.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({'apiVersion': 'v1', 'kind': 'List', 'items': items}, indent=2))
  return path
