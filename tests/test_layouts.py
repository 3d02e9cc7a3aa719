"""Tests for input_pipeline.layouts on tiny trees of every layout."""

import json
import pathlib
import re

import nibabel as nib
import numpy as np
import pytest

from input_pipeline import layouts
from input_pipeline import nifti
from input_pipeline.errors import DataError

SHAPE = (4, 5, 3)


def _nii(path, data=None):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = np.zeros(SHAPE, np.uint8) if data is None else data
  nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
  return path


def _spot(x, y, z):
  mask = np.zeros(SHAPE, np.uint8)
  mask[x, y, z] = 1
  return mask


# ---- ATLAS R1.2

def _atlas_r12_subject(root, site, subject, lesions=(None,), image=True):
  t01 = root / site / subject / 't01'
  t01.mkdir(parents=True, exist_ok=True)
  if image:
    _nii(t01 / f'{subject}_t1w_deface_stx.nii.gz')
  for i, k in enumerate(lesions):
    name = f'{subject}_LesionSmooth_stx' if k is None else f'{subject}_LesionSmooth_{k}_stx'
    _nii(t01 / f'{name}.nii.gz', _spot(i, i, i % 3))
  return t01


def test_atlas_r12_unites_all_lesion_files(tmp_path):
  _atlas_r12_subject(tmp_path, 'Site2', '031859')
  _atlas_r12_subject(tmp_path, 'Site1', '031768', lesions=(10, None, 2, 1))
  cases = layouts.read_atlas_r12(tmp_path)
  assert [c.case_id for c in cases] == ['031768', '031859']
  case = cases[0]
  assert list(case.images) == ['T1'] and case.root == tmp_path / 'Site1' / '031768'
  assert [m.name for m in case.masks] == [
      '031768_LesionSmooth_stx.nii.gz', '031768_LesionSmooth_1_stx.nii.gz',
      '031768_LesionSmooth_2_stx.nii.gz', '031768_LesionSmooth_10_stx.nii.gz']
  image, mask, _ = nifti.load_case(case)
  assert image.shape == (1,) + SHAPE
  # The union of the four files' single voxels, (i, i, i % 3) for the i-th file written.
  np.testing.assert_array_equal(mask, _spot(0, 0, 0) | _spot(1, 1, 1) | _spot(2, 2, 2)
                                | _spot(3, 3, 0))


def test_atlas_r12_missing_mask_and_image(tmp_path):
  _atlas_r12_subject(tmp_path, 'Site1', 's1', lesions=())
  with pytest.raises(DataError, match=r's1: missing lesion mask'):
    layouts.read_atlas_r12(tmp_path)
  assert layouts.read_atlas_r12(tmp_path, require_masks=False)[0].masks == ()
  _atlas_r12_subject(tmp_path, 'Site1', 's0', image=False)
  with pytest.raises(DataError, match=r's0: missing T1 image.*s0_t1w_deface_stx'):
    layouts.read_atlas_r12(tmp_path)


# ---- ATLAS 2.0

def _atlas2_case(base, sub, ses='ses-1', mask=True):
  anat = base / sub / ses / 'anat'
  stem = f'{sub}_{ses}_space-MNI152NLin2009aSym'
  _nii(anat / f'{stem}_T1w.nii.gz')
  if mask:
    _nii(anat / f'{stem}_label-L_desc-T1lesion_mask.nii.gz', _spot(1, 1, 1))


def test_atlas_2_training_and_testing(tmp_path):
  _atlas2_case(tmp_path / 'Training' / 'R002', 'sub-r002s010')
  _atlas2_case(tmp_path / 'Training' / 'R001', 'sub-r001s001')
  _atlas2_case(tmp_path / 'Testing' / 'R001', 'sub-r001s900', mask=False)
  cases = layouts.read_atlas_2(tmp_path)
  assert [c.case_id for c in cases] == [
      'sub-r001s001_ses-1', 'sub-r001s900_ses-1', 'sub-r002s010_ses-1']
  assert cases[0].masks[0].name.endswith('_label-L_desc-T1lesion_mask.nii.gz')
  assert cases[1].masks == ()
  assert cases[0].root == tmp_path / 'Training' / 'R001' / 'sub-r001s001' / 'ses-1'
  assert nifti.load_case(cases[0])[1].sum() == 1


def test_atlas_2_flat_tree_and_missing_mask(tmp_path):
  _atlas2_case(tmp_path, 'sub-r001s001')
  assert [c.case_id for c in layouts.read_atlas_2(tmp_path)] == ['sub-r001s001_ses-1']
  _atlas2_case(tmp_path, 'sub-r001s002', mask=False)
  with pytest.raises(DataError, match=r'sub-r001s002/ses-1: missing lesion mask'):
    layouts.read_atlas_2(tmp_path)


# ---- ISLES 2015 / 2017 / 2018 (SMIR-style folders)

def _smir_case(case_dir, prefix, series, ext='.nii', ot=True):
  for i, tag in enumerate(series):
    name = f'{prefix}.Brain.XX.O.{tag}.{70000 + i}'
    _nii(case_dir / name / f'{name}{ext}')
  if ot:
    name = f'{prefix}.Brain.XX.O.OT.{79999}'
    _nii(case_dir / name / f'{name}{ext}', _spot(0, 1, 2))


SISS = ['MR_DWI', 'MR_Flair', 'MR_T1', 'MR_T2']


def test_isles2015_numeric_order_and_modalities(tmp_path):
  for n, ext in (('10', '.nii'), ('2', '.nii.gz'), ('1', '.nii')):
    _smir_case(tmp_path / n, 'VSD', SISS, ext)
  (tmp_path / 'README.txt').write_text('not a case')
  cases = layouts.read_isles2015_siss(tmp_path)
  assert [c.case_id for c in cases] == ['1', '2', '10']
  assert list(cases[0].images) == ['T1', 'T2', 'Flair', 'DWI']
  assert cases[0].images['Flair'].name == 'VSD.Brain.XX.O.MR_Flair.70001.nii'
  assert cases[1].images['T1'].name.endswith('.nii.gz')
  image, mask, _ = nifti.load_case(cases[2])
  assert image.shape == (4,) + SHAPE and mask[0, 1, 2] == 1


def test_isles2015_missing_modality_and_mask(tmp_path):
  _smir_case(tmp_path / '1', 'VSD', ['MR_T1', 'MR_T2', 'MR_Flair'])
  with pytest.raises(DataError, match=r'/1: missing modality DWI'):
    layouts.read_isles2015_siss(tmp_path)
  _smir_case(tmp_path / '1', 'VSD', ['MR_DWI'], ot=False)
  _smir_case(tmp_path / '2', 'VSD', SISS, ot=False)
  with pytest.raises(DataError, match=r'/2: missing lesion mask'):
    layouts.read_isles2015_siss(tmp_path)


def test_isles2017_ignores_4dpwi(tmp_path):
  series = ['MR_4DPWI', 'MR_Tmax', 'MR_TTP', 'MR_MTT', 'MR_rCBV', 'MR_rCBF', 'MR_ADC']
  _smir_case(tmp_path / 'training_2', 'SMIR', series)
  _smir_case(tmp_path / 'training_1', 'SMIR', series)
  cases = layouts.read_isles2017(tmp_path)
  assert [c.case_id for c in cases] == ['training_1', 'training_2']
  assert list(cases[0].images) == ['ADC', 'rCBF', 'rCBV', 'MTT', 'TTP', 'Tmax']
  assert 'MR_ADC' in cases[0].images['ADC'].name and len(cases[0].masks) == 1


def test_isles2018_ignores_4d_series(tmp_path):
  for n in (10, 1, 2):
    _smir_case(tmp_path / f'case_{n}', 'SMIR', ['CT', 'CT_CBF', 'CT_CBV', 'CT_MTT', 'CT_Tmax'])
  pwi = 'SMIR.Brain.XX.O.CT_4DPWI.71000'
  _nii(tmp_path / 'case_1' / pwi / f'{pwi}.nii', np.zeros(SHAPE + (3,), np.float32))
  cases = layouts.read_isles2018(tmp_path)
  assert [c.case_id for c in cases] == ['case_1', 'case_2', 'case_10']
  assert list(cases[0].images) == ['CT', 'CBF', 'CBV', 'MTT', 'Tmax']
  assert cases[0].images['CT'].name == 'SMIR.Brain.XX.O.CT.70000.nii'
  assert nifti.load_case(cases[0])[0].shape == (5,) + SHAPE


# ---- ISLES 2022

def _isles22_case(root, n, mask=True):
  sub = f'sub-strokecase{n:04d}'
  stem = f'{sub}_ses-0001'
  _nii(root / sub / 'ses-0001' / 'dwi' / f'{stem}_dwi.nii.gz')
  _nii(root / sub / 'ses-0001' / 'dwi' / f'{stem}_adc.nii.gz')
  _nii(root / sub / 'ses-0001' / 'anat' / f'{stem}_FLAIR.nii.gz')
  if mask:
    _nii(root / 'derivatives' / sub / 'ses-0001' / f'{stem}_msk.nii.gz', _spot(2, 2, 2))


def test_isles2022(tmp_path):
  _isles22_case(tmp_path, 2)
  _isles22_case(tmp_path, 1)
  (tmp_path / 'dataset_description.json').write_text('{}')
  cases = layouts.read_isles2022(tmp_path)
  assert [c.case_id for c in cases] == ['sub-strokecase0001', 'sub-strokecase0002']
  assert list(cases[0].images) == ['DWI', 'ADC', 'FLAIR']
  assert cases[0].images['ADC'].name == 'sub-strokecase0001_ses-0001_adc.nii.gz'
  assert cases[0].root == tmp_path / 'sub-strokecase0001'
  assert nifti.load_case(cases[0])[1][2, 2, 2] == 1


def test_isles2022_missing_mask_and_modality(tmp_path):
  _isles22_case(tmp_path, 1, mask=False)
  with pytest.raises(DataError, match=r'sub-strokecase0001: missing lesion mask'):
    layouts.read_isles2022(tmp_path)
  (tmp_path / 'sub-strokecase0001/ses-0001/anat/sub-strokecase0001_ses-0001_FLAIR.nii.gz').unlink()
  with pytest.raises(DataError, match=r'sub-strokecase0001: missing FLAIR image'):
    layouts.read_isles2022(tmp_path, require_masks=False)


# ---- nnU-Net

def _nnunet(root, cases=('b', 'a'), channels=('T1', 'FLAIR'), labels=True):
  root.mkdir(parents=True, exist_ok=True)
  meta = {'channel_names': {str(i): c for i, c in enumerate(channels)},
          'labels': {'background': 0, 'lesion': 1}, 'numTraining': len(cases),
          'file_ending': '.nii.gz'}
  (root / 'dataset.json').write_text(json.dumps(meta))
  for case in cases:
    for i in range(len(channels)):
      _nii(root / 'imagesTr' / f'{case}_{i:04d}.nii.gz')
    if labels:
      _nii(root / 'labelsTr' / f'{case}.nii.gz', _spot(1, 2, 0))


def test_nnunet(tmp_path):
  _nnunet(tmp_path, cases=('case_10', 'case_2'), channels=('FLAIR', 'T1', 'DWI'))
  cases = layouts.read_nnunet(tmp_path)
  assert [c.case_id for c in cases] == ['case_2', 'case_10']
  assert list(cases[0].images) == ['FLAIR', 'T1', 'DWI']
  assert cases[0].images['DWI'].name == 'case_2_0002.nii.gz'
  assert cases[0].masks == (tmp_path / 'labelsTr' / 'case_2.nii.gz',)
  assert layouts.modalities_of('nnunet', tmp_path) == ('FLAIR', 'T1', 'DWI')
  assert nifti.load_case(cases[1])[1][1, 2, 0] == 1


def test_nnunet_missing_channel_and_label(tmp_path):
  _nnunet(tmp_path)
  (tmp_path / 'imagesTr' / 'a_0001.nii.gz').unlink()
  with pytest.raises(DataError, match=r'imagesTr: case a is missing channel 0001 \(FLAIR'):
    layouts.read_nnunet(tmp_path)
  _nii(tmp_path / 'imagesTr' / 'a_0001.nii.gz')
  (tmp_path / 'labelsTr' / 'b.nii.gz').unlink()
  with pytest.raises(DataError, match=r'case b has no label'):
    layouts.read_nnunet(tmp_path)
  _nii(tmp_path / 'labelsTr' / 'b.nii.gz')
  _nii(tmp_path / 'labelsTr' / 'zz.nii.gz')
  with pytest.raises(DataError, match=r'zz.nii.gz: label without images'):
    layouts.read_nnunet(tmp_path)


@pytest.mark.parametrize('content, problem', [
    (None, 'missing dataset.json'),
    ('{not json', 'invalid JSON'),
    ('{"labels": {"background": 0}}', 'channel_names'),
    ('{"channel_names": {"0": "T1", "2": "T2"}, "labels": {"background": 0}}', '0..1'),
    ('{"channel_names": {"0": "T1"}}', 'labels'),
    ('{"channel_names": {"0": "T1"}, "labels": {"a": 0}, "file_ending": ".mha"}', '.mha'),
])
def test_nnunet_bad_dataset_json(tmp_path, content, problem):
  _nnunet(tmp_path)
  if content is None:
    (tmp_path / 'dataset.json').unlink()
  else:
    (tmp_path / 'dataset.json').write_text(content)
  with pytest.raises(DataError, match='dataset.json: .*' + problem):
    layouts.read_nnunet(tmp_path)


def test_read_nnunet_images(tmp_path):
  for case in ('p2', 'p1'):
    for i in range(2):
      _nii(tmp_path / f'{case}_{i:04d}.nii.gz')
  cases = layouts.read_nnunet_images(tmp_path, 2)
  assert [c.case_id for c in cases] == ['p1', 'p2']
  assert list(cases[0].images) == ['0000', '0001'] and cases[0].masks == ()
  named = layouts.read_nnunet_images(tmp_path, ('DWI', 'ADC'))
  assert named[1].images['ADC'].name == 'p2_0001.nii.gz'
  (tmp_path / 'p2_0000.nii.gz').unlink()
  with pytest.raises(DataError, match=r'case p2 is missing channel 0000 \(DWI'):
    layouts.read_nnunet_images(tmp_path, ('DWI', 'ADC'))
  with pytest.raises(DataError, match=r'channel 0001 but only 1 channel'):
    layouts.read_nnunet_images(tmp_path, 1)


# ---- every layout

def test_registries_agree():
  assert set(layouts.LAYOUTS) == set(layouts.MODALITIES)
  # Each layout's channel order, written out (the order the readers' cases list images in).
  assert {name: layouts.modalities_of(name) for name in layouts.LAYOUTS if name != 'nnunet'} == {
      'atlas_r12': ('T1',), 'atlas_2': ('T1',), 'isles2015_siss': ('T1', 'T2', 'Flair', 'DWI'),
      'isles2017': ('ADC', 'rCBF', 'rCBV', 'MTT', 'TTP', 'Tmax'),
      'isles2018': ('CT', 'CBF', 'CBV', 'MTT', 'Tmax'), 'isles2022': ('DWI', 'ADC', 'FLAIR')}
  with pytest.raises(ValueError, match="layout 'nnunet' needs the dataset root"):
    layouts.modalities_of('nnunet')
  with pytest.raises(ValueError, match="unknown layout 'brats'; known: atlas_r12, atlas_2, "):
    layouts.modalities_of('brats')


@pytest.mark.parametrize('name', sorted(layouts.LAYOUTS))
def test_empty_missing_or_unrecognised_root(tmp_path, name):
  with pytest.raises(DataError, match='does not exist'):
    layouts.read_cases(name, tmp_path / 'absent')
  with pytest.raises(DataError, match=f'{tmp_path.name}: dataset folder is empty'):
    layouts.read_cases(name, tmp_path)
  (tmp_path / 'stuff' / 'more').mkdir(parents=True)
  (tmp_path / 'notes.txt').write_text('hello')
  problem = ('/dataset.json: missing dataset.json' if name == 'nnunet'
             else f': no {name} case found; expected ')
  with pytest.raises(DataError, match='^' + re.escape(str(tmp_path) + problem)):
    layouts.read_cases(name, tmp_path)


def test_case_is_hashable_and_comparable(tmp_path):
  _nnunet(tmp_path)
  a = layouts.read_nnunet(tmp_path)
  assert a == layouts.read_nnunet(tmp_path)
  assert len({c for c in a}) == 2
