"fastai's habits from the command: lr_find, the best epoch, test-time augmentation, and architectures by name (DenseNet-121, timm)."
import json, time
import numpy as np, pandas as pd, pytest
from conftest import run_cli

SMALL = ['--size', 32, '--no-pretrained', '--num-workers', 0]   # the smallest images the backbones take: these tests are about the command


@pytest.fixture(scope='module')
def habits_run(data_root, tmp_path_factory):
    "One epoch per phase: frozen at lr_find's suggestion, unfrozen at a rate that ruins the model, the best epoch kept."
    out = tmp_path_factory.mktemp('habits')/'run'
    run_cli('train', '--out', out, '--arch', 'resnet18', *SMALL, '--frozen-epochs', 1, '--unfrozen-epochs', 1,
            '--lr-find', '--lr-find-its', 20, '--frozen-lr', 'auto', '--unfrozen-lr', 1, '--save-best', '--no-near-dups', '--no-name-groups')
    return out


def test_no_near_dups_and_no_name_groups_make_each_image_its_own_group(habits_run):
    run, split = json.loads((habits_run/'run.json').read_text()), pd.read_csv(habits_run/'split.csv')
    assert run['settings']['near_dups'] is False and run['groups']['near_duplicates'] is False
    assert run['settings']['name_groups'] is False and run['groups']['name_groups'] is False
    assert run['groups']['groups'] == split.group.nunique() == len(split) and run['groups']['shared'] == 0


def _valid_files(run):
    split = pd.read_csv(run/'split.csv')
    return split[split.split == 'valid'].path.tolist()


def test_lr_find_before_each_phase_and_auto_uses_its_suggestion(habits_run):
    run = json.loads((habits_run/'run.json').read_text())
    assert run['settings']['frozen_lr'] == 'auto' and set(run['lr_find']) == {'frozen', 'unfrozen'}
    assert run['lr'] == {'frozen': run['lr_find']['frozen'], 'unfrozen': 1.0}
    assert 1e-7 < run['lr_find']['frozen'] < 10
    for phase in ('frozen', 'unfrozen'): assert (habits_run/'plots'/f'lr_find_{phase}.png').read_bytes()[:4] == b'\x89PNG'
    # each phase is one epoch of the same batches, so one-cycle ends both at the same fraction of its peak:
    # the frozen phase peaked at the suggestion, not at the default 1e-2
    hist = pd.read_csv(habits_run/'history.csv')
    assert hist.lr[0] / run['lr']['frozen'] == pytest.approx(hist.lr[1] / run['lr']['unfrozen'], rel=1e-6)


@pytest.fixture(scope='module')
def plain_eval(habits_run, tmp_path_factory):
    "`evaluate` of the habits run on its validation images, without test-time augmentation."
    out = tmp_path_factory.mktemp('plain')
    run_cli('evaluate', '--model', habits_run, '--out', out, '--cpu')
    return pd.read_csv(out/'predictions.csv').set_index('file')


def test_save_best_keeps_the_epoch_with_the_lowest_validation_loss(habits_run, plain_eval):
    run, hist = json.loads((habits_run/'run.json').read_text()), pd.read_csv(habits_run/'history.csv')
    best = hist.valid_loss.idxmin()
    assert run['best_epoch']['epoch'] == best and run['best_epoch']['phase'] == hist.phase[best] == 'frozen'
    assert run['best_epoch']['valid_loss'] == pytest.approx(hist.valid_loss[best])
    assert json.loads((habits_run/'metrics.json').read_text())['fitted_on_these_images'] == ['epoch']   # chosen on the images it measures
    assert hist.valid_loss.iloc[-1] > hist.valid_loss[best]        # the last epoch was worse: keeping the best mattered
    # the saved model is that epoch's: its cross-entropy on the validation images is the loss recorded then
    p_true = np.where(plain_eval.target == 'COVID-19', plain_eval.prob_covid, 1 - plain_eval.prob_covid)
    assert -np.log(p_true).mean() == pytest.approx(run['best_epoch']['valid_loss'], abs=1e-3)


def test_tta_is_fastai_s_and_repeatable(habits_run, plain_eval, tmp_path):
    files = _valid_files(habits_run)[:3]
    tta = json.loads(run_cli('predict', '--model', habits_run, '--json', '--cpu', '--tta', *files).stdout)
    assert all(r['tta'] is True for r in tta)
    assert max(abs(r['prob_covid'] - plain_eval.prob_covid[r['file']]) for r in tta) > 1e-4
    run_cli('evaluate', '--model', habits_run, '--tta', '--cpu', '--out', tmp_path)
    assert json.loads((tmp_path/'metrics.json').read_text())['tta'] == {'n': 4, 'beta': 0.25, 'seed': 0}
    by_file = pd.read_csv(tmp_path/'predictions.csv').set_index('file').prob_covid   # another process, other batches: the same answers
    for r in tta: assert by_file[r['file']] == pytest.approx(r['prob_covid'], abs=1e-5)


def test_a_learning_rate_is_a_number_or_auto(tmp_path):
    res = run_cli('train', '--out', tmp_path, '--frozen-lr', 'fast', check=False)
    assert res.returncode == 2 and "'fast' is neither a number nor 'auto'" in res.stderr


def test_densenet121_from_the_command(data_root, tmp_path):
    out = tmp_path/'dense'
    run_cli('train', '--out', out, '--arch', 'densenet121', *SMALL, '--frozen-epochs', 1, '--unfrozen-epochs', 0)
    assert json.loads((out/'model.json').read_text())['arch'] == 'densenet121'
    assert json.loads((out/'run.json').read_text())['lr'] == {'frozen': 1e-2, 'unfrozen': None}   # no unfrozen epoch: no rate
    file = _valid_files(out)[0]
    assert json.loads(run_cli('predict', '--model', out, '--json', file).stdout)[0]['label'] in ('Normal', 'COVID-19')


@pytest.fixture
def timm():
    return pytest.importorskip('timm')


def test_a_timm_architecture_trains_saves_loads_and_explains(timm, data_root, tmp_path):
    out = tmp_path/'convnext'
    run_cli('train', '--out', out, '--arch', 'convnext_atto', *SMALL, '--frozen-epochs', 1, '--unfrozen-epochs', 0)
    meta = json.loads((out/'model.json').read_text())
    cfg = timm.models.get_pretrained_cfg('convnext_atto')
    assert meta['arch'] == 'convnext_atto' and meta['builder'] == {'library': 'timm', 'version': timm.__version__}
    assert (meta['mean'], meta['std']) == (list(cfg.mean), list(cfg.std))
    file = _valid_files(out)[0]
    rec = json.loads(run_cli('predict', '--model', out, '--json', '--heatmaps', tmp_path/'maps', file).stdout)[0]
    assert 0 <= rec['prob_covid'] <= 1 and 0 <= rec['shortcut'] <= 1 and len(list((tmp_path/'maps').glob('*.png'))) == 1


def test_timm_pretrained_weights_offline_fail_fast_with_one_line(timm, data_root, tmp_path):
    start = time.time()
    res = run_cli('train', '--out', tmp_path/'r', '--arch', 'convnext_atto', '--size', 32, check=False,
                  env={**__import__('os').environ, 'HF_HUB_CACHE': str(tmp_path/'hub'), 'HF_HUB_OFFLINE': '0'})
    errors = [l for l in res.stderr.splitlines() if l.startswith('covid-fastai: error:')]
    assert res.returncode == 3 and len(errors) == 1 and 'Traceback' not in res.stderr, res.stderr
    assert 'not in its cache' in errors[0] and str(tmp_path/'hub') in errors[0] and '--no-pretrained' in errors[0]
    assert not (tmp_path/'r'/'model.json').exists() and time.time() - start < 120


def test_an_unknown_architecture_names_those_like_it(timm, tmp_path):
    res = run_cli('train', '--out', tmp_path, '--arch', 'convnext_tinny', check=False)
    assert res.returncode == 2 and 'convnext_tiny' in res.stderr and 'resnet50' in res.stderr
