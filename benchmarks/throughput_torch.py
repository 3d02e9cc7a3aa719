"""PyTorch side of the throughput harness: one configuration per process.

The twin (benchmarks/torch_twins) loaded with the same synthetic variables as
the JAX run, the twin objective, `torch.optim.Adam(lr=1e-3)` (fused kernel on
CUDA). Variants: 'eager', and 'compile' (`torch.compile` of forward + loss for
training, of the predict function for inference; backward through the compiled
graph; default mode). bf16 = `torch.autocast(dtype=bfloat16)` around forward and
loss, float32 parameters, as the JAX bf16 run. Layout 'nchw' or 'channels_last'.

JAX is imported only to read the Flax model's shapes, pinned to the CPU
(JAX_PLATFORMS=cpu) so it never touches the GPU this process measures.
"""

import os
import platform
import time

from benchmarks import throughput_common as common


def _device_and_name():
  import torch  # pylint: disable=g-import-not-at-top
  if torch.cuda.is_available():
    return torch.device('cuda'), torch.cuda.get_device_name(0)
  return torch.device('cpu'), common.cpu_name()


def _build(cfg: dict, device):
  """(twin on device, image tensor, mask tensor) for the configuration."""
  import torch  # pylint: disable=g-import-not-at-top

  from agmr_jax.models import MODELS  # pylint: disable=g-import-not-at-top
  from benchmarks.torch_twins import TWINS  # pylint: disable=g-import-not-at-top
  from benchmarks.torch_twins import layers  # pylint: disable=g-import-not-at-top
  from benchmarks.torch_twins import transfer  # pylint: disable=g-import-not-at-top
  spec = common.NETWORKS[cfg['network']]
  flax_model = MODELS[cfg['network']](**spec.model_kwargs)
  variables = common.synthetic_variables(flax_model, (1, *spec.input_shape), seed=cfg['seed'])
  twin = TWINS[cfg['network']](flax_model, spec.input_shape[-1],
                              image_size=spec.input_shape[:2])
  transfer.load_flax_variables(twin, variables)
  twin.to(device)
  channels_last = cfg['layout'] == 'channels_last'
  if channels_last:
    layers.to_channels_last(twin)
  batch = common.make_batch(spec, cfg['batch'], seed=cfg['seed'])
  image = transfer.nhwc_to_torch(batch['image'], channels_last=channels_last, device=device)
  mask = torch.from_numpy(batch['mask']).to(device)
  return twin, image, mask


def _predict(logits):
  import torch  # pylint: disable=g-import-not-at-top
  logits = logits.float()
  if logits.shape[1] == 1:
    return torch.sigmoid(logits[:, 0])
  return 1.0 - torch.softmax(logits, dim=1)[:, 0]  # any class but background is lesion.


def _train_step(cfg, twin, image, mask, autocast):
  import torch  # pylint: disable=g-import-not-at-top

  from benchmarks.torch_twins import objectives  # pylint: disable=g-import-not-at-top
  spec = common.NETWORKS[cfg['network']]
  objective = objectives.make_objective(spec.objective, **spec.objective_kwargs)
  twin.train()
  opt = torch.optim.Adam(twin.parameters(), lr=1e-3, fused=image.is_cuda or None)

  def forward_loss(x, m):
    return objective(twin(x), {'mask': m}).mean()
  if cfg['variant'] == 'compile':
    forward_loss = torch.compile(forward_loss)

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = forward_loss(image, mask)
    loss.backward()
    opt.step()
    return loss
  return step, lambda out: float(out.detach())


def _infer_step(cfg, twin, image, autocast):
  import torch  # pylint: disable=g-import-not-at-top
  twin.eval()

  def predict(x):
    return _predict(twin(x)['logits'])
  if cfg['variant'] == 'compile':
    predict = torch.compile(predict)

  def step():
    with torch.inference_mode(), autocast():
      return predict(image)
  return step, lambda out: float(out.mean())


def run(cfg: dict) -> dict:
  """Times one (network, precision, batch, mode, variant, layout) configuration.

  Memory as the JAX worker's (throughput_report.MEMORY_LEGEND): JAX (imported to read the
  Flax shapes) is loaded before the baseline; the peak is reset after the first step.
  """
  os.environ['JAX_PLATFORMS'] = 'cpu'
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  import agmr_jax.models  # pylint: disable=g-import-not-at-top,unused-import # noqa: F401
  jax.devices()  # the JAX client exists in the JAX worker's baseline too.
  device, device_name = _device_and_name()
  rss_before = common.current_rss_bytes()
  torch.manual_seed(cfg['seed'])  # dropout masks.
  twin, image, mask = _build(cfg, device)
  bf16 = cfg['precision'] == 'bf16'
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
  if cfg['mode'] == 'train':
    step, check = _train_step(cfg, twin, image, mask, autocast)
  else:
    step, check = _infer_step(cfg, twin, image, autocast)
  sync = (lambda _: torch.cuda.synchronize()) if device.type == 'cuda' else (lambda _: None)
  start = time.perf_counter()
  first = step()  # eager: allocator/cuDNN warm-up; compile: tracing + codegen (+ backward).
  sync(first)
  first_step_s = time.perf_counter() - start
  reset = common.reset_peak_rss()
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  times = common.time_steps(step, sync, warmup=cfg['warmup'], repeats=cfg['repeats'],
                            steps=cfg['steps'])
  if device.type == 'cuda':
    peak = torch.cuda.max_memory_allocated()
    peak_kind = 'torch.cuda.max_memory_allocated, reset after the first step'
  else:
    peak, peak_kind = common.host_peak(rss_before, reset, 'the first step')
  versions = {'torch': torch.__version__, 'python': platform.python_version()}
  if device.type == 'cuda':
    versions.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
  return {
      **common.summarise(times, cfg['batch']),
      'compile_s': first_step_s if cfg['variant'] == 'compile' else None,
      'first_step_s': first_step_s, 'peak_memory_bytes': peak, 'peak_memory_kind': peak_kind,
      'check': check(first), 'device': device_name, 'platform': device.type,
      'versions': versions, 'threads': torch.get_num_threads(),
      'tf32': {'cudnn': torch.backends.cudnn.allow_tf32,
               'matmul': torch.backends.cuda.matmul.allow_tf32},
  }
