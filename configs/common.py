"""What every model config shares, and the `file.py:key=value,...` variant parser.

A model config file calls `base()` for the fields below, sets its paper's values, then applies the
variant: `tiny` (tests: small shapes and widths, a few steps), `demo` (the README's main job),
`dataset=...`, `recipe=...`, `fold=k` (cross-validation) and its own ablation switches.
"""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'tiny,dataset=x,fold=2' -> ConfigDict; a bare key means True; types follow the defaults."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config variant key {key!r}; known: {", ".join(sorted(defaults))}')
    default = defaults[key]
    if not value:
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    elif isinstance(default, int):
      out[key] = int(value)
    elif isinstance(default, float):
      out[key] = float(value)
    else:
      out[key] = value
  return out


VARIANT_DEFAULTS = dict(tiny=False, demo=False, dataset='', recipe='', fold=-1, bf16=False,
                        seed=0)


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # The one seed: init, data order, augmentation and dropout all derive from it.
  c.deterministic = False  # Deterministic XLA GPU kernels (agmr_jax/runtime.py); slower.
  c.model = ''  # Key of agmr_jax.models.MODELS.
  c.model_kwargs = ml_collections.ConfigDict()  # Fields overriding the network's paper defaults.
  c.compute_dtype = 'float32'  # 'bfloat16': bf16 activations, fp32 params/losses/BN statistics.
  c.bn_momentum = -1.0  # BatchNorm running-statistics momentum; -1: the networks' 0.99 (Keras).

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'synthetic_atlas'  # Layout name (real data, needs manual_dir) or synthetic name.
  c.data.recipe = 'agmr_2p5d'  # Key of input_pipeline.recipes.RECIPES.
  c.data.image_size = (0, 0)  # Override the recipe's output (H, W); (0, 0) keeps it.
  c.data.data_dir = 'data'  # Built records (and synthetic NIfTI trees) live here.
  c.data.manual_dir = ''  # Folder of a real dataset, as downloaded.
  c.data.num_subjects = 20  # Synthetic datasets: how many subjects to write.
  c.data.synthetic_seed = 0  # Synthetic datasets: the writer's seed (independent of c.seed).
  c.data.num_folds = 5  # Patient-level folds the records are written in.
  c.data.split_seed = 0  # Seed of the patient -> fold assignment.
  c.data.test_fold = 4  # Held-out fold (cross-validation runs fold k with test_fold=k).
  c.data.val_fold = 3  # Validation fold for model selection; -1: none.
  c.data.augment = 'none'  # Key of input_pipeline.augment.AUGMENT_PRESETS.
  # Where it runs: 'device' (inside the jitted train step, sharded with the batch) or 'host'
  # (per slice in the Grain loader; same presets and distributions, for comparison).
  c.data.augment_on = 'device'
  c.data.lesion_oversample = 1  # Slices with a lesion appear this many times per epoch (1: off).
  # 'slice': every lesion slice lesion_oversample times; 'case': balanced so each case's lesion
  # slices get about the same share (small lesions seen as often as large ones).
  c.data.lesion_balance = 'slice'
  c.data.worker_count = 0  # Grain worker processes (0: load in the main process).
  c.data.read_threads = 2  # Loader threads: raise these to feed an accelerator (docs/scaling.md).

  c.batch_size = 8  # Global batch size, split over all devices of all processes.
  c.eval_batch_size = 16  # Slices per prediction batch (must divide over the devices).
  c.num_epochs = 150.0  # Training length in epochs of the train split...
  c.num_train_steps = -1  # ...unless this is positive.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adam'  # 'adam' | 'adamw' | 'sgd'.
  c.optimizer.learning_rate = 1e-3  # Peak learning rate.
  c.optimizer.schedule = 'exponential'  # 'constant' | 'exponential' | 'warmup_cosine'.
  c.optimizer.decay_rate = 0.96  # 'exponential': factor per epoch.
  c.optimizer.warmup_epochs = 0.0  # 'warmup_cosine': linear warm-up length.
  c.optimizer.weight_decay = 0.0  # 'adamw' only.
  c.optimizer.clip_norm = 0.0  # Global-norm gradient clipping; 0 disables.

  c.loss = ml_collections.ConfigDict()
  c.loss.name = 'dunet_mix'  # Key of agmr_jax.objectives.OBJECTIVES.
  c.loss.kwargs = ml_collections.ConfigDict()  # Its keyword arguments.

  c.log_every_steps = 50  # Training metrics to metrics.jsonl / TensorBoard.
  c.eval_every_steps = -1  # Validation period; -1: once per epoch.
  c.checkpoint_every_steps = 500  # Save period of the resumable checkpoint.
  c.max_checkpoints = 2  # Resumable checkpoints kept.
  c.stop_after_steps = -1  # Stop (with a checkpoint) after this many steps of this job; -1: never.
  c.async_checkpoints = True  # Write checkpoints in the background.
  c.final_eval = True  # After training: evaluate the test split with the best checkpoint...
  c.tune_postprocess = True  # ...post-processed as chosen on validation (postprocess.py).
  c.write_predictions = True  # ...and write its predicted masks as NIfTI into the workdir.
  return c


def apply_variant(c: ml_collections.ConfigDict, v: ml_collections.ConfigDict) -> None:
  """Applies the generic variant keys (model-specific ones are the model config's job)."""
  c.seed = v.seed
  if v.dataset:
    c.data.dataset = v.dataset
  if v.recipe:
    c.data.recipe = v.recipe
  if v.fold >= 0:
    c.data.test_fold = v.fold
    c.data.val_fold = (v.fold + 1) % c.data.num_folds
  if v.bf16:
    c.compute_dtype = 'bfloat16'
  if v.tiny:
    c.data.dataset = v.dataset or 'synthetic_tiny'
    c.data.recipe = v.recipe or 'tiny_2p5d'
    c.data.num_subjects = 10
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 6
    c.log_every_steps = 2
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 3
    c.async_checkpoints = False
    c.write_predictions = False


def apply_demo(c: ml_collections.ConfigDict) -> None:
  """The README's main job: a CPU-sized run that still learns the synthetic lesions."""
  c.data.num_subjects = 20
  c.data.image_size = (64, 64)
  c.batch_size = 16
  c.eval_batch_size = 64
  c.num_train_steps = 500
  c.log_every_steps = 25
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 100
  # A few hundred steps: running statistics with the papers' 0.99 still lag the weights by ~100
  # steps at the end (train_step.rescale_batch_stats).
  c.bn_momentum = 0.9


def apply_atlas_demo(c: ml_collections.ConfigDict) -> None:
  """apply_demo for the ATLAS-like 2.5D networks (D-UNet, AGMR-Net): the README's main job.

  60 subjects (36 train, 12 validation, 12 test): with 12 training subjects the networks learned
  where the training lesions were (training-case DSC 0.8, validation 0.05), and 8 test cases
  left the reported mean at the mercy of which subjects fell in the test fold (per-case DSC
  spans 0 to 0.85, so 8 cases give it a standard error of about 0.1). Light augmentation; lesion
  slices oversampled 3x (6x was no better), balanced by case: slice-uniform oversampling shows
  the network five slices of a 100 ml infarct for each of a 1 ml lacune, and on the same 24
  validation and test subjects (synthetic_atlas v2) balancing by case raised the mean per-case
  DSC from 0.49 to 0.53 (threshold 0.3, components under 200 mm3 removed). Quarter widths,
  which learned as fast per step as half widths and step faster (eighth widths step 1.8x faster
  but 3500 of their steps learned no more than 2000 quarter-width ones). Batch 8 for 2000 steps
  learned more per second than batch 16 for 1500; learning rates 2e-3 and 3e-3 did worse than
  the paper's 1e-3; a Dice per slice instead of per batch traded false positives on lesion-free
  subjects for under-segmented large lesions (0.49 either way). Cosine decay so the last steps
  settle, and so validation only at the end (a mid-run one costs 40 s).
  """
  apply_demo(c)
  c.data.num_subjects = 60
  c.data.image_size = (64, 64)
  c.data.augment = 'demo'
  c.data.lesion_oversample = 3
  c.data.lesion_balance = 'case'
  c.model_kwargs.features = (8, 16, 32, 64, 128)
  c.model_kwargs.features_3d = (4, 8, 16)
  c.batch_size = 8
  c.num_train_steps = 2000
  c.log_every_steps = 100
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 500
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_epochs = 0.05
