"""Tasks, extra data, metrics for more classes, results per source, and cross-validation: the command end to end.

The extra dataset is the shared copy's adult negatives (`../shared/data/adult-negatives`) when it is there; elsewhere a
stand-in in the same format, made from mirrored copies of the data root's own Normal and pneumonia films. Counts come
from the CSVs and the folders, never from one copy of the data."""
import json, os
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image, ImageOps
from conftest import REPO, run_cli, with_files

TINY = ['--arch', 'resnet18', '--size', 32, '--frozen-epochs', 1, '--unfrozen-epochs', 0, '--no-pretrained', '--num-workers', 0]
THREE = ['Normal', 'Pneumonia', 'COVID-19']


def _stand_in(metadata, images, folder):
    "A CoronaHack-format dataset of mirrored copies of the root's films: 4 Normal and 6 other pneumonias, with age, view and source."
    (folder/'images').mkdir(parents=True)
    train = metadata[(metadata.Dataset_type == 'TRAIN') & with_files(metadata, images)]
    other = train.Label_2_Virus_category != 'COVID-19'
    rows = pd.concat([train[train.Label == 'Normal'].head(4), train[(train.Label == 'Pnemonia') & other].head(6)])
    for n in rows.X_ray_image_name: ImageOps.mirror(Image.open(images/n)).save(folder/'images'/f'm-{n}')
    rows = rows.assign(X_ray_image_name='m-' + rows.X_ray_image_name, age='60', view='PA', source='stand-in')
    rows.to_csv(folder/'metadata.csv', index=False)
    return folder


@pytest.fixture(scope='module')
def extra(metadata, images, tmp_path_factory):
    "(spec 'CSV:IMAGES', its rows) of the extra dataset."
    folder = REPO.parent/'shared'/'data'/'adult-negatives'
    if not (folder/'metadata.csv').is_file(): folder = _stand_in(metadata, images, tmp_path_factory.mktemp('extra')/'stand-in')
    rows = pd.read_csv(folder/'metadata.csv', dtype=str)
    return f"{folder/'metadata.csv'}:{folder/'images'}", rows


def _source(rows, csv): return rows.source.iloc[0] if 'source' in rows else Path(csv).stem


@pytest.fixture(scope='module')
def three_run(data_root, extra, tmp_path_factory):
    "The issue's 'done when' command, at a tiny size: three classes, with the extra data."
    out = tmp_path_factory.mktemp('three')/'run'
    res = run_cli('train', '--task', 'three-class', '--extra-data', extra[0], '--out', out, *TINY)
    return out, res


def test_three_classes_with_extra_data(three_run, extra):
    out, res = three_run
    spec, rows = extra
    meta = json.loads((out/'model.json').read_text())
    assert (meta['task'], meta['classes']) == ('three-class', THREE)
    m = json.loads((out/'metrics.json').read_text())
    assert {'n', 'accuracy', 'sensitivity', 'specificity', 'roc_auc', 'confusion_matrix', 'classes', 'per_class', 'confusion_matrix_all', 'accuracy_all'} <= set(m)
    split = pd.read_csv(out/'split.csv')
    valid = split[split.split == 'valid'].target.value_counts()
    cm = np.array(m['confusion_matrix_all'])
    assert m['classes'] == THREE and cm.sum() == m['n'] == valid.sum()
    assert cm.sum(1).tolist() == [valid.get(c, 0) for c in THREE] == [m['per_class'][c]['n'] for c in THREE]
    assert m['accuracy_all'] == np.trace(cm) / cm.sum()                                      # each image its own class
    (tn, fp), (fn, tp) = m['confusion_matrix']
    assert tp + fn == valid['COVID-19'] and tn + fp == valid['Normal'] + valid['Pneumonia']   # COVID-19 against the rest
    # every extra row of a class is taken, up to that class's share (as many as the COVID-19 rows)
    n_covid, src = (split.target == 'COVID-19').sum(), _source(rows, spec.split(':')[0])
    finding = np.where(rows.Label == 'Normal', 'Normal', np.where(rows.Label_2_Virus_category == 'COVID-19', 'COVID-19', 'Pneumonia'))
    taken = split[split.source == src].target.value_counts()
    for c in ('Normal', 'Pneumonia'): assert taken.get(c, 0) == min(n_covid, (finding == c).sum())
    assert split[split.source == src].path.map(lambda p: Path(p).parent == Path(spec.split(':')[1])).all()   # their own folder
    run = json.loads((out/'run.json').read_text())
    assert run['task'] == 'three-class' and run['sources'] == split.source.value_counts().to_dict()
    assert run['groups']['near_duplicates'] is True and run['groups']['groups'] == split.group.nunique()
    assert '  Pneumonia: n=' in res.stdout and 'confusion matrix of Normal, Pneumonia, COVID-19' in res.stdout
    assert f"accuracy over the 3 classes {m['accuracy_all']:.3f}" in res.stdout and 'COVID-19 against the rest: n=' in res.stdout
    for c in THREE:   # each class's figures with their intervals, from its own counts
        pc, lo_hi = m['per_class'][c], m['per_class'][c]['intervals']['sensitivity']
        assert lo_hi[0] <= pc['sensitivity'] <= lo_hi[1] and f"sensitivity={pc['sensitivity']:.3f} [{lo_hi[0]:.3f}-{lo_hi[1]:.3f}]" in res.stdout
        k = int(cm[THREE.index(c), THREE.index(c)]); assert pc['sensitivity'] == k / pc['n']
    lo, hi = m['intervals']['accuracy_all']
    assert lo <= m['accuracy_all'] <= hi and f"{m['accuracy_all']:.3f} [{lo:.3f}-{hi:.3f}]" in res.stdout


def test_evaluate_and_predict_carry_the_three_classes(three_run, extra, tmp_path):
    out, _ = three_run
    spec, rows = extra
    csv, folder = spec.split(':')
    res = run_cli('evaluate', '--model', out, '--csv', csv, '--images', folder, '--by', 'source', '--out', tmp_path/'e')
    m = json.loads((tmp_path/'e'/'metrics.json').read_text())
    assert m['classes'] == THREE and m['n'] == len(rows) and m['left_out'] == {'other_labels': 0, 'missing_images': 0, 'unreadable': 0}
    assert list(m['by']) == [_source(rows, csv)] and m['by_column'] == 'source' and m['by'][_source(rows, csv)]['n'] == len(rows)
    assert (tmp_path/'e'/'plots'/'by_source.png').is_file() and f"source = {_source(rows, csv)}: n={len(rows)}" in res.stdout
    b = m['by'][_source(rows, csv)]; lo, hi = b['intervals']['specificity']   # negatives only: specificity, with its interval
    assert b['sensitivity'] is None and f"specificity={b['specificity']:.3f} [{lo:.3f}-{hi:.3f}]" in res.stdout
    preds = pd.read_csv(tmp_path/'e'/'predictions.csv')
    assert np.allclose(preds[[f'prob_{c}' for c in THREE]].sum(1), 1, atol=1e-5)
    # on the run's own validation images, each source apart
    run_cli('evaluate', '--model', out, '--by', 'source', '--out', tmp_path/'v')
    v, split = json.loads((tmp_path/'v'/'metrics.json').read_text()), pd.read_csv(out/'split.csv').query("split == 'valid'")
    assert {k: b['n'] for k, b in v['by'].items()} == split.source.value_counts().sort_index().to_dict()
    files = [Path(folder)/n for n in rows.X_ray_image_name[:3]]
    recs = json.loads(run_cli('predict', '--model', out, *files, '--json').stdout)
    threshold = json.loads((out/'model.json').read_text())['threshold']
    for r in recs:   # the one rule: COVID-19 at the threshold, else the most probable other class
        assert list(r['probs']) == THREE and abs(sum(r['probs'].values()) - 1) < 1e-5 and r['prob_covid'] == r['probs']['COVID-19']
        assert r['label'] == ('COVID-19' if r['prob_covid'] >= threshold else max(THREE[:2], key=r['probs'].get))
    called = preds.label == 'COVID-19'   # the labels are what the COVID-19 figures count
    assert m['confusion_matrix'][0][1] + m['confusion_matrix'][1][1] == called.sum() == np.array(m['confusion_matrix_all'])[:, 2].sum()


def test_folds_write_cv_json_and_keep_patients_together(data_root, extra, tmp_path):
    spec, rows = extra
    csv, folder = spec.split(':')
    (rows.assign(patient=[f'p{i // 2}' for i in range(len(rows))])).to_csv(tmp_path/'patients.csv', index=False)
    out = tmp_path/'cv'
    (out/'plots').mkdir(parents=True); (out/'model.json').write_text('{}'); (out/'plots'/'confusion.png').write_bytes(b'')   # an earlier single run's
    res = run_cli('train', '--task', 'covid-rest', '--extra-data', f"patients.csv:{folder}", '--folds', 2,   # the CSV relative to the folder it runs in
                  '--group-col', 'patient', '--calibrate', '--out', out, *TINY, cwd=tmp_path)
    assert json.loads((out/'run.json').read_text())['settings']['extra_data'] == [f"{tmp_path/'patients.csv'}:{folder}"]   # --resume from anywhere
    assert not (out/'model.json').exists() and not (out/'plots'/'confusion.png').exists()   # nothing of the earlier run passes for this one's
    res_eval = run_cli('evaluate', '--model', out, check=False)
    assert res_eval.returncode == 2 and 'holds a cross-validation' in res_eval.stderr and str(out/'fold-1') in res_eval.stderr
    cv = json.loads((out/'cv.json').read_text())
    folds = [json.loads((out/f'fold-{i}'/'metrics.json').read_text()) for i in (1, 2)]
    assert cv['folds'] == 2 and cv['runs'] == ['fold-1', 'fold-2'] and cv['n'] == [f['n'] for f in folds]
    assert (cv['arch'], cv['pretrained'], cv['weights']) == ('resnet18', False, None) and 'weights_sha256' not in cv   # what every fold started from
    for k in ('accuracy', 'sensitivity', 'specificity', 'roc_auc', 'threshold'):   # each fold's own threshold, and its spread
        s = cv['metrics'][k]
        assert s['folds'] == [f[k] for f in folds]
        ok = [x for x in s['folds'] if x is not None]
        assert s['mean'] == pytest.approx(np.mean(ok)) and (s['sd'] == pytest.approx(np.std(ok, ddof=1)) if len(ok) == 2 else s['sd'] is None)
    assert (out/'plots'/'cv.png').is_file() and 'Cross-validation, 2 folds' in res.stdout
    assert cv['calibrated'] and cv['fitted_on_these_images'] == ['temperature'] and all(f['temperature'] != 1.0 for f in folds)
    assert "--calibrate: each fold's chosen on its own validation images, which cv.json measures" in res.stderr   # said once, after the folds
    (tn, fp), (fn, tp) = np.sum([f['confusion_matrix'] for f in folds], 0)   # pooled: the folds' counts together, with intervals
    pooled = cv['pooled']
    assert pooled['sensitivity'] == tp / (tp + fn) and pooled['specificity'] == tn / (tn + fp) and tn + fp + fn + tp == sum(cv['n'])
    lo, hi = pooled['intervals']['specificity']
    assert lo <= pooled['specificity'] <= hi and f"specificity={pooled['specificity']:.3f} [{lo:.3f}-{hi:.3f}]" in res.stdout
    valid = pd.concat([pd.read_csv(out/f'fold-{i}'/'split.csv').query("split == 'valid'").assign(fold=i) for i in (1, 2)])
    assert valid.X_ray_image_name.is_unique and len(valid) == len(pd.read_csv(out/'fold-1'/'split.csv'))   # each row validated once
    assert valid.target.value_counts().to_dict() == pd.read_csv(out/'fold-1'/'split.csv').target.value_counts().to_dict()
    assert valid.dropna(subset=['patient']).groupby('patient').fold.nunique().max() == 1                 # a patient in one fold
    counts = pd.crosstab(valid.target, valid.fold)
    assert (counts[1] - counts[2]).abs().max() <= 2                                                    # stratified, up to a pair
    run = json.loads((out/'fold-2'/'run.json').read_text())
    assert run['settings']['fold'] == 2 and run['groups']['column'] == 'patient' and run['groups']['shared'] >= len(rows) // 2
    # a fold judged on a CSV of images it trained on says so, and counts them
    trained = {Path(p).resolve() for p in pd.read_csv(out/'fold-1'/'split.csv').query("split == 'train'").path}
    expected = sum((Path(folder)/n).resolve() in trained for n in rows.X_ray_image_name)
    assert expected > 0
    res_eval = run_cli('evaluate', '--model', out/'fold-1', '--csv', tmp_path/'patients.csv', '--images', folder, '--out', tmp_path/'ev')
    ev = json.loads((tmp_path/'ev'/'metrics.json').read_text())
    assert ev['seen_in_training'] == expected and ev['seen_in_training_by']['file'] == expected
    assert f"{expected} of the " in res_eval.stderr and "among the model's training images" in res_eval.stderr


@pytest.mark.parametrize('args, message', [
    (['--task', 'covid'], "argument --task: invalid choice: 'covid'"),
    (['--extra-data', 'metadata.csv'], "--extra-data 'metadata.csv' is not CSV:IMAGES"),
    (['--extra-data', 'BADCSV'], 'lacks column(s) Label'),
    (['--folds', 10_000], 'too few for 10000 folds'),
    (['--group-col', 'patient'], '--group-col patient: no such column'),
    (['--unfrozen-lr', -1], '--unfrozen-lr -1.0: give a positive number'),   # refused before the frozen phase, not after it
    (['--frozen-lr', 'inf'], '--frozen-lr inf: give a positive number'),
])
def test_bad_inputs_are_one_line_and_write_nothing(args, message, data_root, extra, tmp_path):
    if 'BADCSV' in args:
        csv, folder = extra[0].split(':')
        extra[1].drop(columns='Label').to_csv(tmp_path/'bad.csv', index=False)
        args = ['--extra-data', f"{tmp_path/'bad.csv'}:{folder}"]
    res = run_cli('train', '--out', tmp_path/'run', *args, *TINY, check=False)
    errors = [l for l in res.stderr.splitlines() if 'error:' in l]
    assert res.returncode == 2 and len(errors) == 1 and errors[0].startswith('covid-fastai: error: ') and message in errors[0]
    assert res.stderr.strip().splitlines()[-1] == errors[0] and 'Traceback' not in res.stderr
    assert not (tmp_path/'run').exists()
