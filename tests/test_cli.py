"The `covid-fastai` command end to end, in subprocesses, on the shared data."
import json
import pandas as pd, pytest, torch
from conftest import run_cli


def test_summary_prints_the_seed_figures(data_root, tmp_path):
    res = run_cli('summary', '--data', data_root, '--plots', tmp_path)
    for line in ['TRAIN rows: 5286   TEST rows: 624', 'Label_2_Virus_category 5217', 'Label_1_Virus_category 1342',
                 'Pnemonia + COVID-19 (TRAIN): 58', 'Normal + COVID-19 (TRAIN): 0', 'COVID-19 in TEST: 0',
                 'unknown 98.69% | COVID-19 1.10% | others (ARDS, SARS, Streptococcus) 0.21%']:
        assert line in res.stdout
    pngs = sorted(p.name for p in tmp_path.iterdir())
    assert pngs == ['labels_known.png', 'labels_unknown.png', 'nulls.png']
    assert all((tmp_path/p).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for p in pngs)


def test_train_writes_model_metrics_history_and_plots(small_run):
    out, res = small_run
    m = json.loads((out/'metrics.json').read_text())
    assert set(m) == {'n', 'accuracy', 'sensitivity', 'specificity', 'precision', 'f1', 'roc_auc', 'threshold', 'confusion_matrix'}
    (tn, fp), (fn, tp) = m['confusion_matrix']
    assert m['n'] == tn + fp + fn + tp == 12 and tp + fn == 6          # stratified: both classes in validation
    assert m['accuracy'] == pytest.approx((tp + tn) / 12)
    hist = pd.read_csv(out/'history.csv')
    assert hist.phase.tolist() == ['frozen', 'unfrozen'] and hist.train_loss.notna().all()
    assert {p.name for p in (out/'plots').iterdir()} == {'history.png', 'confusion.png', 'roc.png', 'predictions.png'}
    run = json.loads((out/'run.json').read_text())
    assert run['settings']['size'] == 64 and run['pretrained'] is False and run['device'] == 'cpu'
    assert str(out/'model.json') in res.stdout and 'have no image file' in res.stderr   # says where things are, warns about missing files


def test_evaluate_on_the_run_validation_split_matches_train(small_run, tmp_path):
    out, _ = small_run
    run_cli('evaluate', '--model', out, '--out', tmp_path)
    again, first = json.loads((tmp_path/'metrics.json').read_text()), json.loads((out/'metrics.json').read_text())
    assert again['confusion_matrix'] == first['confusion_matrix']
    assert again['roc_auc'] == pytest.approx(first['roc_auc'], abs=1e-6)
    assert (tmp_path/'predictions.csv').is_file() and (tmp_path/'plots'/'roc.png').is_file()


def test_evaluate_on_unseen_csv_counts_what_it_leaves_out(small_run, unseen, images, tmp_path):
    csv, rows = unseen
    res = run_cli('evaluate', '--model', small_run[0], '--csv', csv, '--images', images, '--out', tmp_path)
    m = json.loads((tmp_path/'metrics.json').read_text())
    assert m['n'] == 300 - 55                        # the Normal images present and not sampled
    assert m['sensitivity'] is None and m['roc_auc'] is None
    labelled = (rows.Label == 'Normal') | (rows.Label_2_Virus_category == 'COVID-19')
    assert m['left_out'] == {'other_labels': (~labelled).sum(), 'missing_images': labelled.sum() - 245, 'unreadable': 0}
    assert 'n=245' in res.stdout


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


def test_predict_reports_a_bad_file_and_predicts_the_rest(small_run, images, tmp_path):
    bad = tmp_path/'empty.jpeg'; bad.write_bytes(b'')
    good = sorted(images.glob('IM-*.jpeg'))[0]
    res = run_cli('predict', '--model', small_run[0], good, bad, '--json', check=False)
    assert res.returncode == 1
    out = json.loads(res.stdout)
    assert out[0]['label'] in ('Normal', 'COVID-19') and 'error' not in out[0]
    assert out[1]['label'] is None and 'empty.jpeg' in out[1]['error']
    assert '1 of 2 file(s) could not be read' in res.stderr


@pytest.mark.parametrize('args, message', [
    (['summary', '--data', '/nonexistent'], '/nonexistent/Chest_xray_Corona_Metadata.csv not found'),
    (['predict', '--model', '/nonexistent', 'x.jpeg'], 'Model file /nonexistent not found'),
    (['evaluate', '--model', '/nonexistent', '--csv', 'x.csv'], '--csv needs --images'),
])
def test_failures_are_one_line_without_traceback(args, message, data_root):
    res = run_cli(*args, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith('covid-fastai: error: ') and message in res.stderr
    assert 'Traceback' not in res.stderr


def test_missing_pretrained_weights_stop_with_exit_code_3(data_root, tmp_path):
    env = {**__import__('os').environ, 'TORCH_HOME': str(tmp_path/'torch'), 'COVID_FASTAI_OFFLINE': '1'}
    res = run_cli('train', '--out', tmp_path/'run', '--size', 32, '--frozen-epochs', 1, check=False, env=env)
    assert res.returncode == 3 and 'Traceback' not in res.stderr
    assert 'resnet50-11ad3fa6.pth' in res.stderr and '--no-pretrained' in res.stderr
    assert not (tmp_path/'run'/'model.json').exists()
