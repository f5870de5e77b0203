"bench/gpu_check.py, the script a lent GPU machine runs, in its smoke form on the CPU: it must not rot between the rare sessions that have a GPU."
import json, subprocess, sys
from conftest import REPO


def test_gpu_check_smoke_run_measures_the_modes_asked_for_and_saves_them(data_root, tmp_path):
    out = tmp_path/'gpu_check.json'
    modes = ['AdamW, fp32', "AdamW, fp32, fastai's affine"]
    res = subprocess.run([sys.executable, REPO/'bench'/'gpu_check.py', '--allow-cpu', '--data', data_root, '--parts', 'train,infer,agree',
                          '--bs', '8', '--modes', *modes, '--infer-files', '16', '--out', out], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got['complete'] and got['device']['device'] == 'cpu'
    assert [r['mode'] for r in got['training']] == modes
    for r in got['training']: assert r['images_per_epoch'] > 0 and r['images_per_s'] > 0 and r['timed_epochs'] == 1
    paths = {r['path'] for r in got['inference']}
    assert {'predict, CPU decoding', 'predict, DecodeCache', 'floor: model on tensors'} <= paths
    assert all(r['images_per_s'] > 0 for r in got['inference'])
    assert "SameSizeAffine vs fastai's affine transform" in got['markdown']   # the ratio between the two modes
    assert all(r['gpu_decode_fallbacks'] == 0 for r in got['inference'] if r['path'].startswith('predict'))   # counted in every prediction figure
    assert len(got['agreement']) == 2 and all(r['ok'] and r['max_abs_logodds_diff'] >= 0 for r in got['agreement'])


def test_gpu_check_names_the_modes_this_device_has(data_root):
    res = subprocess.run([sys.executable, REPO/'bench'/'gpu_check.py', '--allow-cpu', '--modes', 'AdamW, amp+channels_last'],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "unknown --modes ['AdamW, amp+channels_last']" in res.stderr and "'AdamW, fp32'" in res.stderr
