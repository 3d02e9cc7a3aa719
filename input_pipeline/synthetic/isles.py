"""Synthetic ISLES 2017, 2018 and 2022: perfusion CT/MR and DWI/ADC/FLAIR in the ISLES layouts."""

from __future__ import annotations

import json
import pathlib

import numpy as np
from scipy import ndimage as ndi

from input_pipeline.synthetic import lesions as L
from input_pipeline.synthetic.common import case_record, save_volume, subject_rng


def _smooth_noise_factor(rng: np.random.Generator, shape, amount: float) -> np.ndarray:
  """1 + amount * (in-plane smoothed unit gaussian noise): the grain of perfusion maps."""
  noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (1.0, 1.0, 0.0))
  return 1.0 + np.float32(amount) * noise / noise.std()


def _perfusion(rng: np.random.Generator, s: dict, spacing, grain: float) -> dict:
  """CBF (ml/100g/min), CBV (ml/100g), MTT (s), Tmax (s) of a scene, zero outside the brain.

  The hypoperfused region (Tmax up by 5-12 s) is the lesion plus a penumbra 3-8 mm wider. In
  the lesion CBF drops by 55-90% and CBV by 30-70% of that, so MTT = 60 CBV / CBF rises; in the
  penumbra CBF drops by 15-45% and CBV rises by up to 15%.
  """
  g, w, c, core, brain = s['gm'], s['wm'], s['csf'], s['soft'], s['brain']
  sigma = rng.uniform(3.0, 8.0) / np.asarray(spacing)
  blur = ndi.gaussian_filter(s['mask'].astype(np.float32), sigma)
  pen = np.maximum(np.clip(3.0 * blur, 0.0, 1.0), core)
  outer = pen - core
  drop = rng.uniform(0.55, 0.9)  # CBV drops by a fraction of the CBF drop: MTT rises in the core
  cbf = ((55 * g + 22 * w + 3 * c) * rng.uniform(0.8, 1.25) * (1 - drop * core)
         * (1 - rng.uniform(0.15, 0.45) * outer) * _smooth_noise_factor(rng, g.shape, grain))
  cbv = ((4.5 * g + 2.3 * w + 0.6 * c) * rng.uniform(0.8, 1.25)
         * (1 - rng.uniform(0.3, 0.7) * drop * core) * (1 + 0.15 * outer)
         * _smooth_noise_factor(rng, g.shape, grain))
  cbf, cbv = np.maximum(cbf, 0.0), np.maximum(cbv, 0.0)
  mtt = np.clip(60.0 * cbv / np.maximum(cbf, 1.0), 0.0, 30.0)
  tmax = (0.3 + 1.2 * w + 1.5 * c) * _smooth_noise_factor(rng, g.shape, 2 * grain)
  tmax = np.clip(tmax + rng.uniform(5.0, 12.0) * pen, 0.0, 40.0)
  return {k: (v * brain).astype(np.float32) for k, v in
          (('CBF', cbf), ('CBV', cbv), ('MTT', mtt), ('Tmax', tmax))}


def isles2018_subject(rng: np.random.Generator) -> dict:
  """CT perfusion: 256x256 x 8-16 slices of ~0.9 x 0.9 x 5 mm; CT in HU with skull (brain
  20-45, CSF ~6, infarct 2-8 HU darker), perfusion maps as in _perfusion; mask = core."""
  xy = round(rng.uniform(0.8, 1.0), 3)
  shape, spacing = (256, 256, int(rng.integers(8, 17))), (xy, xy, 5.0)
  s = L.scene(rng, shape, spacing, volume_ml=(0.5, 120.0), num_lesions=int(rng.integers(1, 3)),
              lesion_slab=True, thick=True, head=True)
  g, w, c = s['gm'], s['wm'], s['csf']
  soft_tissue = np.clip(s['head'] - s['bone'] - g - w - c, 0.0, 1.0)
  ct = (-1000.0 * (1.0 - s['head']) + rng.uniform(700.0, 1400.0) * s['bone'] + 38 * g + 28 * w
        + 6 * c + 30 * soft_tissue - rng.uniform(2.0, 8.0) * s['soft'] * (g + w))
  ct = ct + rng.uniform(2.0, 5.0) * rng.standard_normal(shape, dtype=np.float32)
  return {'CT': ct.astype(np.float32), **_perfusion(rng, s, spacing, 0.12), 'mask': s['mask'],
          'brain': s['brain'], 'affine': s['affine']}


def isles2017_subject(rng: np.random.Generator) -> dict:
  """MR perfusion + ADC: 192x192 x 16-24 slices of 1.2 x 1.2 x 6 mm. ADC in 1e-6 mm2/s (GM ~780,
  WM ~700, CSF ~3000, lesion 15-50% lower), rCBF/rCBV/MTT/Tmax as in _perfusion, TTP (s)."""
  shape, spacing = (192, 192, int(rng.integers(16, 25))), (1.2, 1.2, 6.0)
  s = L.scene(rng, shape, spacing, volume_ml=(1.0, 200.0), num_lesions=int(rng.integers(1, 3)),
              lesion_slab=True, thick=True)
  g, w, c = s['gm'], s['wm'], s['csf']
  adc = ((780 * g + 700 * w + 3000 * c) * rng.uniform(0.9, 1.1)
         * (1 - rng.uniform(0.15, 0.5) * s['soft']))
  adc = np.maximum(adc + rng.uniform(30.0, 60.0) * rng.standard_normal(shape, dtype=np.float32), 0)
  perf = _perfusion(rng, s, spacing, 0.2)
  ttp = rng.uniform(15.0, 30.0) + 0.8 * perf['Tmax'] + 2.0 * w
  ttp = ttp * _smooth_noise_factor(rng, shape, 0.05)
  return {'ADC': (adc * s['brain']).astype(np.float32), 'rCBF': perf['CBF'], 'rCBV': perf['CBV'],
          'MTT': perf['MTT'], 'Tmax': perf['Tmax'], 'TTP': (ttp * s['brain']).astype(np.float32),
          'mask': s['mask'], 'brain': s['brain'], 'affine': s['affine']}


def isles2022_subject(rng: np.random.Generator) -> dict:
  """DWI/ADC/FLAIR on 98x116x94 of 2 mm. Acute lesions: DWI x(1.8-3.5), ADC -30-55%, FLAIR
  +0-35%. 0-2 old-lesion mimics (not in the mask): FLAIR bright, DWI slightly bright, ADC up."""
  shape = (98, 116, 94)
  num = int(rng.choice(4, p=(0.5, 0.25, 0.15, 0.1))) + 1
  s = L.scene(rng, shape, (2.0, 2.0, 2.0), volume_ml=(0.1, 80.0), num_lesions=num,
              num_mimics=int(rng.integers(0, 3)))
  g, w, c, les, mim, brain = s['gm'], s['wm'], s['csf'], s['soft'], s['mimic'], s['brain']

  def magnitude(tissue, gain, mimic_gain, scale):
    signal = tissue * (1 + gain * les) * (1 + mimic_gain * mim) * L.bias_field(rng, shape, 0.1)
    out = np.zeros(shape, np.float32)
    out[brain] = L.rician(rng, (signal * scale)[brain], rng.uniform(0.02, 0.05) * scale)
    return out

  dwi = magnitude(1.0 * g + 0.85 * w + 0.25 * c, rng.uniform(0.8, 2.5), rng.uniform(0.1, 0.3),
                  rng.uniform(300.0, 900.0))
  adc = ((800 * g + 720 * w + 3000 * c) * (1 - rng.uniform(0.3, 0.55) * les)
         * (1 + rng.uniform(0.2, 0.5) * mim))
  adc = np.maximum(adc + rng.uniform(30.0, 60.0) * rng.standard_normal(shape, dtype=np.float32), 0)
  flair = magnitude(1.0 * g + 0.8 * w + 0.15 * c, rng.uniform(0.0, 0.35), rng.uniform(0.4, 0.8),
                    rng.uniform(200.0, 800.0))
  return {'DWI': dwi, 'ADC': (adc * brain).astype(np.float32), 'FLAIR': flair, 'mask': s['mask'],
          'brain': brain, 'affine': s['affine']}


def _write_smir(case_dir: pathlib.Path, base_id: int, series: dict, mask: np.ndarray,
                affine: np.ndarray, int16: tuple[str, ...]) -> None:
  """SMIR.Brain.XX.O.{series}.{id}/SMIR.Brain.XX.O.{series}.{id}.nii per series, then OT."""
  items = list(series.items()) + [('OT', mask)]
  for k, (tag, data) in enumerate(items):
    name = f'SMIR.Brain.XX.O.{tag}.{base_id + k}'
    kind = 'mask' if tag == 'OT' else ('int16' if tag in int16 else 'scaled')
    save_volume(case_dir / name / f'{name}.nii', data, affine, kind)


def write_isles2018_case(root: pathlib.Path, index: int, seed: int) -> dict:
  """{root}/case_{n}/SMIR.Brain.XX.O.{CT,CT_CBF,CT_CBV,CT_MTT,CT_Tmax,OT}.{id}/...nii."""
  case_id = f'case_{index + 1}'
  case = isles2018_subject(subject_rng('isles2018', seed, index))
  series = {'CT': case['CT'], **{f'CT_{m}': case[m] for m in ('CBF', 'CBV', 'MTT', 'Tmax')}}
  _write_smir(root / case_id, 345000 + 10 * index, series, case['mask'], case['affine'], ('CT',))
  return case_record(case_id, [case['mask']])


def write_isles2017_case(root: pathlib.Path, index: int, seed: int) -> dict:
  """{root}/training_{n}/SMIR.Brain.XX.O.MR_{mod}.{id}/...nii and SMIR.Brain.XX.O.OT.{id}."""
  case_id = f'training_{index + 1}'
  case = isles2017_subject(subject_rng('isles2017', seed, index))
  series = {f'MR_{m}': case[m] for m in ('ADC', 'MTT', 'rCBF', 'rCBV', 'Tmax', 'TTP')}
  _write_smir(root / case_id, 188000 + 10 * index, series, case['mask'], case['affine'],
              ('MR_ADC',))
  return case_record(case_id, [case['mask']])


def write_isles2022_case(root: pathlib.Path, index: int, seed: int) -> dict:
  """BIDS: sub-strokecase{NNNN}/ses-0001/{dwi,anat}/..., mask under derivatives/."""
  sub = f'sub-strokecase{index + 1:04d}'
  stem = f'{sub}_ses-0001'
  case = isles2022_subject(subject_rng('isles2022', seed, index))
  ses = root / sub / 'ses-0001'
  for folder, suffix, key in (('dwi', 'dwi', 'DWI'), ('dwi', 'adc', 'ADC'),
                              ('anat', 'FLAIR', 'FLAIR')):
    save_volume(ses / folder / f'{stem}_{suffix}.nii.gz', case[key], case['affine'], 'int16')
  save_volume(root / 'derivatives' / sub / 'ses-0001' / f'{stem}_msk.nii.gz', case['mask'],
              case['affine'], 'mask')
  return case_record(sub, [case['mask']])


def write_isles2022_description(root: pathlib.Path) -> None:
  """{root}/dataset_description.json, the BIDS file at the top of an ISLES 2022 tree."""
  desc = {'Name': 'ISLES 2022 (synthetic)', 'BIDSVersion': '1.7.0', 'DatasetType': 'raw'}
  (root / 'dataset_description.json').write_text(json.dumps(desc, indent=2) + '\n')
