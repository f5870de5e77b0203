"""The `covid-fastai` command end to end, in subprocesses, on whatever data the machine has.

Counts come from the CSV and the image folder, never from one copy of the data: the tests pass on the packaged sample,
on the shared development copy and on a complete download."""
import json, os, shutil, signal, subprocess, sys, threading
from pathlib import Path
import pandas as pd, pytest, torch
from conftest import CLI, run_cli, with_files
from covid_fastai.data import images_dir
from covid_fastai.datablock import name_group


def test_summary_prints_the_seed_figures(data_root, tmp_path):
    res = run_cli('summary', '--data', data_root, '--plots', tmp_path)
    for line in ['TRAIN rows: 5286   TEST rows: 624', 'Label_2_Virus_category 5217', 'Label_1_Virus_category 1342',
                 'Pnemonia + COVID-19 (TRAIN): 58', 'Normal + COVID-19 (TRAIN): 0', 'COVID-19 in TEST: 0',
                 'unknown 98.69% | COVID-19 1.10% | others (ARDS, SARS, Streptococcus) 0.21%']:
        assert line in res.stdout
    pngs = sorted(p.name for p in tmp_path.iterdir())
    assert pngs == ['labels_known.png', 'labels_unknown.png', 'nulls.png']
    assert all((tmp_path/p).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for p in pngs)


def test_train_writes_model_metrics_history_and_plots(small_run, metadata, images):
    out, res = small_run
    m = json.loads((out/'metrics.json').read_text())
    contract = {'n', 'accuracy', 'sensitivity', 'specificity', 'precision', 'f1', 'roc_auc', 'threshold', 'confusion_matrix'}
    assert set(m) == contract | {'intervals', 'decision', 'ece', 'threshold_choice', 'temperature', 'prevalence', 'operating_points', 'fitted_on_these_images'}
    assert m['fitted_on_these_images'] == []                # the default recipe chooses nothing on the validation images it measures
    (tn, fp), (fn, tp) = m['confusion_matrix']
    ci = m['intervals']                                     # each figure inside its 95 % interval, which the run prints
    assert ci['level'] == 0.95 and all(ci[k][0] <= m[k] <= ci[k][1] for k in ('accuracy', 'sensitivity', 'specificity', 'roc_auc'))
    assert ci['sensitivity'][1] - ci['sensitivity'][0] > 0.2   # a handful of validation positives: a wide interval
    assert f"sensitivity {ci['sensitivity'][0]:.3f}-{ci['sensitivity'][1]:.3f}" in res.stdout
    split = pd.read_csv(out/'split.csv')
    valid = split[split.split == 'valid'].target.value_counts()
    assert m['n'] == tn + fp + fn + tp == valid.sum() and tp + fn == valid['COVID-19'] and tn + fp == valid['Normal']
    per_class = split.target.value_counts()                 # stratified: each class gives about 10 % to validation
    assert all(valid[c] == min(n - 1, max(1, round(n * 0.1))) for c, n in per_class.items())
    ours = split[split.source == 'coronahack']              # a patient's or an article's films, by their names: on one side
    assert (ours.groupby(ours.X_ray_image_name.map(name_group)).split.nunique() == 1).all()
    assert m['accuracy'] == pytest.approx((tp + tn) / m['n'])
    hist = pd.read_csv(out/'history.csv')
    assert hist.phase.tolist() == ['frozen', 'unfrozen'] and hist.train_loss.notna().all()
    assert {p.name for p in (out/'plots').iterdir()} == {'history.png', 'confusion.png', 'roc.png', 'predictions.png', 'reliability.png'}
    run = json.loads((out/'run.json').read_text())
    assert run['settings']['size'] == 64 and run['pretrained'] is False and run['pretrained_weights'] is None and run['device'] == 'cpu'
    assert run['in_memory'] is True   # a balanced selection fits: InMemoryDL made the batches
    assert str(out/'model.json') in res.stdout
    assert 'train_loss' in res.stdout and '█' not in res.stdout   # stdout is a log here: the epoch table, no progress bars
    labelled = metadata[(metadata.Dataset_type == 'TRAIN') & ((metadata.Label == 'Normal') | (metadata.Label_2_Virus_category == 'COVID-19'))]
    missing = (~with_files(labelled, images)).sum()
    assert ('have no image file' in res.stderr) == (missing > 0)   # warns about missing files, once, only when there are some


def test_evaluate_on_the_run_validation_split_matches_train(small_run, tmp_path):
    out, _ = small_run
    (tmp_path/'plots').mkdir(); (tmp_path/'plots'/'by_source.png').write_bytes(b'an earlier evaluation')   # into a folder that holds one
    (tmp_path/'predictions.csv').write_text('an earlier evaluation'); (tmp_path/'notes.txt').write_text("the user's own")
    run_cli('evaluate', '--model', out, '--out', tmp_path)
    assert not (tmp_path/'plots'/'by_source.png').exists() and (tmp_path/'notes.txt').exists()   # none of it passes for this one's
    assert 'an earlier evaluation' not in (tmp_path/'predictions.csv').read_text()
    again, first = json.loads((tmp_path/'metrics.json').read_text()), json.loads((out/'metrics.json').read_text())
    assert again['confusion_matrix'] == first['confusion_matrix']
    assert again['roc_auc'] == pytest.approx(first['roc_auc'], abs=1e-6)
    assert (tmp_path/'predictions.csv').is_file() and (tmp_path/'plots'/'roc.png').is_file()


def test_evaluate_reads_the_run_own_images_wherever_it_runs(small_run, tmp_path):
    "The run records its dataset root itself; evaluate goes back to it, not to whatever $COVID_FASTAI_DATA or the folder finds now."
    out, _ = small_run
    root = json.loads((out/'run.json').read_text())['settings']['data']
    assert Path(root).is_absolute()
    env = {k: v for k, v in os.environ.items() if k != 'COVID_FASTAI_DATA'}
    run_cli('evaluate', '--model', out, '--out', tmp_path/'e', env=env, cwd=tmp_path)
    assert pd.read_csv(tmp_path/'e'/'predictions.csv').file.map(lambda f: f.startswith(root + os.sep)).all()


def test_evaluate_leaves_the_run_own_results_and_refuses_images_without_labels(small_run, images, tmp_path):
    "The run's metrics.json and plots are its validation results: evaluate writes elsewhere; --images alone would be ignored."
    out, _ = small_run
    before = (out/'metrics.json').read_bytes()
    res = run_cli('evaluate', '--model', out, '--out', out, check=False)
    assert res.returncode == 2 and "is the model's run folder" in res.stderr and f"{out/'eval'}" in res.stderr
    assert (out/'metrics.json').read_bytes() == before
    res = run_cli('evaluate', '--model', out, '--images', images, check=False)
    assert res.returncode == 2 and '--images' in res.stderr and 'needs --csv' in res.stderr and res.stdout == ''


def test_a_file_where_a_folder_goes_is_refused_before_any_work(small_run, images, tmp_path):
    out, _ = small_run
    (tmp_path/'afile').touch()
    img = sorted(images.iterdir())[0]
    for args, option in [(['predict', '--model', out, '--heatmaps', tmp_path/'afile', img], '--heatmaps'),
                         (['evaluate', '--model', out, '--out', tmp_path/'afile'/'eval'], '--out'),
                         (['train', '--out', tmp_path/'afile', '--size', 32, '--no-pretrained'], '--out')]:
        res = run_cli(*args, check=False)
        assert res.returncode == 2 and f"{option} {args[args.index(option)+1]}" in res.stderr and 'is a file, not a folder' in res.stderr, res.stderr
        assert res.stdout == '' and 'Traceback' not in res.stderr


def test_predict_on_folders_without_images_is_an_error(small_run, tmp_path):
    out, _ = small_run
    (tmp_path/'sub').mkdir(); (tmp_path/'notes.txt').write_text('not an image')
    res = run_cli('predict', '--model', out, tmp_path, check=False)
    assert res.returncode == 2 and f'no image files in {tmp_path}' in res.stderr and 'subfolders' in res.stderr and res.stdout == ''


def test_evaluate_on_unseen_csv_counts_what_it_leaves_out(small_run, unseen, images, tmp_path):
    csv, rows = unseen
    if not with_files(rows[(rows.Label == 'Normal') | (rows.Label_2_Virus_category == 'COVID-19')], images).any():
        # the packaged sample: the run used every labelled image, so nothing is left to measure, and that is said
        res = run_cli('evaluate', '--model', small_run[0], '--csv', csv, '--images', images, '--out', tmp_path, check=False)
        assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith('covid-fastai: error: No rows of'), res.stderr
        assert 'nothing to evaluate' in res.stderr and not (tmp_path/'metrics.json').exists()
        return
    res = run_cli('evaluate', '--model', small_run[0], '--csv', csv, '--images', images, '--out', tmp_path)
    m = json.loads((tmp_path/'metrics.json').read_text())
    labelled = (rows.Label == 'Normal') | (rows.Label_2_Virus_category == 'COVID-19')
    present = with_files(rows[labelled], images)
    assert m['n'] == present.sum()                   # the labelled images present and not used by the run
    if m['n'] and not (rows[labelled][present].Label_2_Virus_category == 'COVID-19').any():
        assert m['sensitivity'] is None and m['roc_auc'] is None   # no COVID-19 left over: undefined, not 0
        assert f"none of the {m['n']} images measured is COVID-19" in res.stderr   # and said
    assert m['left_out'] == {'other_labels': (~labelled).sum(), 'missing_images': (~present).sum(), 'unreadable': 0}
    assert f"n={m['n']}" in res.stdout
    assert res.stderr.count('The heat maps have 2 x 2 cells') == 1   # ResNet50 at 64 px: too coarse, said once


def test_evaluate_refuses_a_file_listed_as_train_and_test(small_run, metadata, images, tmp_path):
    rows = metadata[with_files(metadata, images) & (metadata.Label == 'Normal')].head(2)   # both splits are read from one --images folder
    csv = tmp_path/'both.csv'
    pd.concat([rows, rows.head(1).assign(Dataset_type='TEST')]).to_csv(csv, index=False)
    res = run_cli('evaluate', '--model', small_run[0], '--csv', csv, '--images', images, check=False)
    assert res.returncode == 2 and f"{csv}: image file(s) of {images} named by two rows" in res.stderr and f"two names: {rows.X_ray_image_name.iloc[0]};" in res.stderr
    assert 'Traceback' not in res.stderr and res.stdout == ''


def test_predict_agrees_with_the_library(small_run, unseen, images):
    from covid_fastai.inference import load_model
    csv, rows = unseen
    files = [images/n for n in rows.X_ray_image_name if (images/n).is_file()][:6]
    res = run_cli('predict', '--model', small_run[0], *files, '--json')
    cli = json.loads(res.stdout)
    lib = load_model(small_run[0], device=torch.device('cpu')).predict(files)
    assert [r['file'] for r in cli] == [str(f) for f in files]
    assert [r['prob_covid'] for r in cli] == pytest.approx(lib.prob_covid.tolist(), abs=1e-5)
    assert [r['label'] for r in cli] == lib.label.tolist()
    text = run_cli('predict', '--model', small_run[0], files[0]).stdout.split('\t')
    assert text[0] == str(files[0]) and text[1] in ('Normal', 'COVID-19') and float(text[2]) == pytest.approx(lib.prob_covid[0], abs=1e-4)


def test_a_model_that_outputs_nan_answers_no_image(small_run, images, tmp_path):
    "NaN's argmax is 0, which is Normal: predict must say that the model gave no number, not call the film Normal."
    from safetensors.torch import load_file, save_file
    from covid_fastai.core import file_sha256
    run = tmp_path/'nan'; shutil.copytree(small_run[0], run)
    w = load_file(run/'model.safetensors')
    last = [k for k in w if w[k].ndim == 2 and not k.startswith('ood.')][-1]   # the head's last linear layer
    w[last] = torch.full_like(w[last], float('nan')); save_file(w, run/'model.safetensors')
    meta = json.loads((run/'model.json').read_text()); meta['sha256'] = file_sha256(run/'model.safetensors')
    (run/'model.json').write_text(json.dumps(meta))
    f = sorted(images.iterdir())[0]
    res = run_cli('predict', '--model', run, '--json', f, check=False)
    rec, = json.loads(res.stdout)
    assert res.returncode == 1 and rec['label'] is None and rec['prob_covid'] is None
    assert rec['error'].startswith(f"{f}: the model's output for this image is not a number")


def test_predict_reports_a_bad_file_and_predicts_the_rest(small_run, images, tmp_path):
    bad = tmp_path/'empty.jpeg'; bad.write_bytes(b'')
    good = sorted(images.glob('IM-*.jpeg'))[0]   # a Normal film of Kermany et al., in every copy
    res = run_cli('predict', '--model', small_run[0], good, bad, '--json', check=False)
    assert res.returncode == 1
    out = json.loads(res.stdout)
    assert out[0]['label'] in ('Normal', 'COVID-19') and out[0]['error'] is None
    assert out[1]['label'] is None and 'empty.jpeg' in out[1]['error']
    assert '1 of 2 file(s) could not be read' in res.stderr
    procs = run_cli('predict', '--model', small_run[0], good, bad, '--json', '--processes', '2', check=False)   # decoded in processes
    assert (procs.returncode, json.loads(procs.stdout)) == (1, out)


def test_predict_lines_keep_their_columns_whatever_the_file_names(small_run, images, tmp_path):
    good, bad = tmp_path/'tab\there.jpeg', tmp_path/'line\nbreak.jpeg'
    shutil.copy(sorted(images.glob('IM-*.jpeg'))[0], good); bad.write_bytes(b'')
    res = run_cli('predict', '--model', small_run[0], good, bad, check=False)
    lines = [l.split('\t') for l in res.stdout.splitlines()]
    assert res.returncode == 1 and len(lines) == 2
    assert lines[0][0] == str(tmp_path/'tab\\there.jpeg') and lines[0][1] in ('Normal', 'COVID-19') and float(lines[0][2]) >= 0
    assert lines[1][:2] == [str(tmp_path/'line\\nbreak.jpeg'), 'ERROR'] and 'line\\nbreak.jpeg' in lines[1][2] and len(lines[1]) == 3


def test_a_name_that_is_not_utf8_is_predicted_drawn_and_printed_escaped(small_run, images, tmp_path):
    "A Latin-1 name, as an old share writes it: read through the decode cache, its heat map drawn, its line printed."
    folder = tmp_path/'latin1'; folder.mkdir()
    shutil.copy(sorted(images.glob('IM-*.jpeg'))[0], os.path.join(os.fsencode(folder), b'caf\xe9.jpeg'))
    res = run_cli('predict', '--model', small_run[0], folder, '--heatmaps', tmp_path/'maps', check=False,
                  env={**os.environ, 'PYTHONIOENCODING': 'utf-8', 'COVID_FASTAI_CACHE': str(tmp_path/'cache')})
    assert res.returncode == 0 and 'Traceback' not in res.stderr, res.stderr
    line, = res.stdout.splitlines()
    assert line.split('\t')[:2] in ([f'{folder}/caf\\xe9.jpeg', 'Normal'], [f'{folder}/caf\\xe9.jpeg', 'COVID-19']), line
    assert len(list((tmp_path/'cache').iterdir())) == 1 and len(list((tmp_path/'maps').iterdir())) == 1


def test_a_killed_decoding_process_is_one_error_and_the_next_call_starts_new_ones(small_run, images):
    from covid_fastai.core import CovidFastaiError
    from covid_fastai.inference import load_model
    clf = load_model(small_run[0], device=torch.device('cpu'))   # no decode cache: every call decodes
    files = sorted(images.glob('*.jp*g'))[:40] * 50              # seconds of decoding in one process
    try:
        clf.predict(files[:2], processes=1)
        worker, = clf._procs[1]._processes
        threading.Timer(0.5, os.kill, (worker, signal.SIGKILL)).start()
        with pytest.raises(CovidFastaiError, match='decoding process stopped abruptly'): clf.predict(files, processes=1)
        assert clf.predict(files[:2], processes=1).error.isna().all()
    finally: clf.close()


LEFT_OPEN = """
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
import torch
from covid_fastai.inference import load_model

def predict_and_keep(model, files):
    global clf   # kept, as a notebook keeps it, with its decoding processes: never closed
    clf = load_model(model, device=torch.device('cpu'))
    return clf.predict(files, processes=1).label.tolist()

if __name__ == '__main__':
    with ProcessPoolExecutor(1, mp_context=get_context('spawn')) as pool: print(pool.submit(predict_and_keep, sys.argv[1], sys.argv[2:]).result())
    print('the pool ended')
"""

def test_decoding_processes_left_open_in_a_pool_process_let_it_end(small_run, images, tmp_path):
    "A classifier that predicted in processes, inside a process of a pool (as nbdev_test runs a notebook): the pool's process ends, not waiting for them."
    (tmp_path/'left_open.py').write_text(LEFT_OPEN)
    files = [str(f) for f in sorted(images.glob('*.jp*g'))[:2]]
    proc = subprocess.Popen([sys.executable, tmp_path/'left_open.py', small_run[0], *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)   # its own group: on failure, every process it started is stopped
    try: out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL); proc.communicate()
        pytest.fail("the pool's process did not end: it waited for the decoding processes it had left open")
    assert proc.returncode == 0 and out.splitlines()[-1] == 'the pool ended', err[-3000:]


@pytest.mark.parametrize('args, message', [
    (['summary', '--data', '/nonexistent'], '/nonexistent/Chest_xray_Corona_Metadata.csv not found'),
    (['predict', '--model', '/nonexistent', 'x.jpeg'], 'Model file /nonexistent not found'),
    (['evaluate', '--model', '/nonexistent', '--csv', 'x.csv'], '--csv needs --images'),
    (['train', '--resume', '/nonexistent', '--size', '64', '--no-pretrained'], '--size, --no-pretrained would be ignored'),
    (['train', '--resume', '/nonexistent', '--arch', 'resnet50'], '--arch would be ignored'),   # typed, though it is the default
    (['train', '--out', '/nonexistent/run', '--no-pretrained', '--weights', '/nonexistent.pth'], '--no-pretrained and --weights contradict each other'),
])
def test_failures_are_one_line_without_traceback(args, message, data_root):
    res = run_cli(*args, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith('covid-fastai: error: ') and message in res.stderr
    assert 'Traceback' not in res.stderr


@pytest.mark.parametrize('option, value, message', [
    ('--clip', '-0.1', '--clip -0.1: give 0 (no clipping) or more'), ('--wd', '-1', '--wd -1.0: give a weight decay of 0 or more'),
    ('--num-workers', '-1', '--num-workers -1: give 0'), ('--lr-find-its', '0', '--lr-find-its 0: give 1 or more')])
def test_training_numbers_out_of_range_are_one_line_before_any_work(option, value, message, data_root, tmp_path):
    res = run_cli('train', '--out', tmp_path/'run', option, value, '--no-pretrained', check=False)
    lines = res.stderr.strip().splitlines()   # one line, before the data is read: no warning about it either
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith('covid-fastai: error: ') and message in lines[0], lines
    assert not (tmp_path/'run').exists()


def test_a_run_that_diverges_says_so_in_one_line(data_root, tmp_path):
    "A learning rate far too high: NaN losses, and the error written for them rather than sklearn's on the epoch's ROC AUC."
    res = run_cli('train', '--out', tmp_path/'run', '--arch', 'resnet18', '--size', 64, '--frozen-epochs', 1, '--unfrozen-epochs', 0,
                  '--no-pretrained', '--frozen-lr', '1e8', '--clip', 0, '--num-workers', 0, check=False)
    assert res.returncode == 2 and 'Traceback' not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith('covid-fastai: error: ') and 'did training diverge?' in res.stderr


def test_missing_pretrained_weights_stop_with_exit_code_3(data_root, tmp_path):
    env = {**__import__('os').environ, 'TORCH_HOME': str(tmp_path/'torch'), 'COVID_FASTAI_OFFLINE': '1'}
    res = run_cli('train', '--out', tmp_path/'run', '--size', 32, '--frozen-epochs', 1, check=False, env=env)
    assert res.returncode == 3 and 'Traceback' not in res.stderr
    assert 'resnet50-11ad3fa6.pth' in res.stderr and '--no-pretrained' in res.stderr
    assert not (tmp_path/'run'/'model.json').exists()


def test_model_is_the_run_folder_or_either_of_its_files(small_run, images):
    out = small_run[0]
    files = sorted(images.glob('IM-*.jpeg'))[:2]
    answers = [json.loads(run_cli('predict', '--model', m, *files, '--json').stdout) for m in (out, out/'model.json', out/'model.safetensors')]
    assert answers[0] == answers[1] == answers[2] and all(r['label'] for r in answers[0])
    mode = lambda f: (out/f).stat().st_mode & 0o777
    assert mode('model.safetensors') == mode('model.json') == mode('metrics.json')   # by the umask, readable by whoever may read the run (safetensors alone wrote 0600)


@pytest.fixture(scope='module')
def complete_root(data_root, metadata, images, tmp_path_factory):
    "A complete download's layout: every COVID-19 row of the CSV with its file (copies for the ones this copy lacks), and a test/ folder."
    root = tmp_path_factory.mktemp('complete')/'coronahack-chest-xraydataset'
    train_dir, test_dir = images_dir(root), images_dir(root, 'test')
    train_dir.mkdir(parents=True); test_dir.mkdir(parents=True)
    train = metadata[metadata.Dataset_type == 'TRAIN']
    covid, normal = train[train.Label_2_Virus_category == 'COVID-19'], train[train.Label == 'Normal']
    have = lambda d: d[with_files(d, images)].X_ray_image_name.tolist()
    for name in have(covid) + have(normal)[:len(covid)]: shutil.copy(images/name, train_dir/name)
    donors = have(covid)
    for i, name in enumerate(n for n in covid.X_ray_image_name if not (train_dir/n).exists()):
        shutil.copy(images/donors[i % len(donors)], train_dir/name)   # a stand-in for a file this copy lacks
    test = metadata[metadata.Dataset_type == 'TEST'].head(4)
    if test.empty:                                                    # the sample has no TEST rows: make four
        test = normal.head(4).assign(Dataset_type='TEST', X_ray_image_name=[f'test-{i}.jpeg' for i in range(4)])
    for name, src in zip(test.X_ray_image_name, have(normal)): shutil.copy(images/src, test_dir/name)
    rows = pd.concat([covid, normal[normal.X_ray_image_name.isin(have(normal)[:len(covid)])], test])
    rows.to_csv(root/'Chest_xray_Corona_Metadata.csv')
    return root, len(covid), test


def test_a_complete_download_selects_every_positive_and_trains(complete_root, tmp_path):
    import warnings
    from covid_fastai.data import read_metadata, select_balanced
    root, n_covid, test = complete_root
    with warnings.catch_warnings():
        warnings.simplefilter('error')                # complete: not one row is left out
        rows = select_balanced(read_metadata(root), images_dir(root))
    assert rows.target.value_counts().to_dict() == {'COVID-19': n_covid, 'Normal': n_covid}
    out = tmp_path/'run'
    res = run_cli('train', '--data', root, '--out', out, '--arch', 'resnet18', '--size', 32, '--frozen-epochs', 1,
                  '--unfrozen-epochs', 0, '--no-pretrained', '--num-workers', 0)
    assert 'have no image file' not in res.stderr
    split = pd.read_csv(out/'split.csv')
    assert len(split) == 2 * n_covid and (split.split == 'valid').sum() == 2 * min(n_covid - 1, max(1, round(n_covid * 0.1)))
    test.to_csv(tmp_path/'test.csv')
    run_cli('evaluate', '--model', out, '--csv', tmp_path/'test.csv', '--images', images_dir(root, 'test'), '--out', tmp_path/'eval')
    m = json.loads((tmp_path/'eval'/'metrics.json').read_text())
    assert m['n'] == (test.Label == 'Normal').sum() + (test.Label_2_Virus_category == 'COVID-19').sum()


def test_predict_into_a_closed_pipe_stops_quietly(small_run, images):
    "`predict ... | head -1`: the reader has what it wanted, and no 'error: Broken pipe' follows it."
    files = sorted(images.iterdir())[:10]
    proc = subprocess.Popen([*CLI, 'predict', '--model', str(small_run[0]), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()   # closed before the first line is written
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and 'error' not in err and 'Traceback' not in err, err[-2000:]
