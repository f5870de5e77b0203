"A chest X-ray backbone from the radiographs the task does not use (`covid-fastai pretrain`), and `train --weights` proving that no validation image was seen in pretraining."
import json, os, shutil, warnings
from pathlib import Path
import pandas as pd, pytest, torch
from conftest import run_cli, with_files

OFFLINE = {**os.environ, 'COVID_FASTAI_OFFLINE': '1'}   # the ImageNet weights come from pip, never the network
TINY = ('--size', 64, '--num-workers', 0)


@pytest.fixture(scope='module')
def mini(metadata, images, tmp_path_factory):
    "A CoronaHack-layout root with the first few radiographs of each finding that have a file (real images, copied)."
    from covid_fastai.data import METADATA_CSV, finding, images_dir
    rows = metadata[(metadata.Dataset_type == 'TRAIN') & with_files(metadata, images)]
    rows = rows.groupby(finding(rows), group_keys=False).apply(lambda g: g.head(10))
    root = tmp_path_factory.mktemp('mini')
    images_dir(root).mkdir(parents=True)
    for n in rows.X_ray_image_name: shutil.copy(images/n, images_dir(root)/n)
    rows.to_csv(root/METADATA_CSV, index=False)
    return root, rows


def _selection(root, ratio):
    from covid_fastai.data import read_sources, select_balanced, images_dir
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return select_balanced(read_sources(root), images_dir(root), ratio=ratio, task='covid-normal')


@pytest.fixture(scope='module')
def pretrained(mini, tmp_path_factory):
    "A Lite0 backbone from the ImageNet weights of pip, pretrained tiny on what the covid-normal selection at ratio 0.5 leaves."
    root, _ = mini
    out = tmp_path_factory.mktemp('pre')/'backbone'
    res = run_cli('pretrain', '--data', root, '--out', out, '--tasks', 'covid-normal', '--ratio', 0.5, *TINY,
                  '--frozen-epochs', 1, '--unfrozen-epochs', 1, env=OFFLINE)
    return out, json.loads((out/'pretrain.json').read_text()), res


def test_pretrain_writes_a_backbone_and_the_record_of_what_it_saw(mini, pretrained):
    from covid_fastai.data import finding, POSITIVE
    from covid_fastai.learner import pretrained_state
    from covid_fastai.core import file_sha256
    root, rows = mini
    out, rec, res = pretrained
    assert 'Backbone:' in res.stdout and '--weights' in res.stdout
    names = {r['name'] for r in rec['images']}
    free = set(rows[finding(rows) != POSITIVE].X_ray_image_name) - set(_selection(root, 0.5).X_ray_image_name)
    left = rec['left_out']
    assert names <= free and len(names) == len(free) - left['same_image_as_selected'] - left['same_patient_as_selected']   # nothing else
    from covid_fastai.datablock import name_series   # no film of a patient or series that the selection holds
    sel = _selection(root, 0.5)
    selected = set(name_series(sel.X_ray_image_name, sel.source)) - {None}
    assert not selected & set(name_series(names, ['coronahack'] * len(names)))
    assert rec['left_out']['covid19'] == (finding(rows) == POSITIVE).sum()
    assert rec['n_images'] == len(names) == sum(rec['counts'].values()) and set(rec['counts']) == {'Normal', 'Pneumonia'}
    folder = root/'Coronahack-Chest-XRay-Dataset'/'Coronahack-Chest-XRay-Dataset'/'train'
    assert all(r['sha256'] == file_sha256(folder/r['name']) for r in rec['images'])
    assert rec['arch'] == 'efficientnet_lite0' and rec['started_from'] == 'imagenet'
    assert rec['weights']['sha256'] == file_sha256(out/'backbone.pth')
    mine, imagenet = pretrained_state('efficientnet_lite0', out/'backbone.pth'), pretrained_state('efficientnet_lite0')
    assert set(mine) == set(imagenet)                                          # a whole state dict, as ImageNet's file
    assert not torch.equal(mine['_conv_stem.weight'], imagenet['_conv_stem.weight'])   # the unfrozen epoch trained the body


def test_train_weights_uses_the_backbone_and_proves_the_validation_images_unseen(mini, pretrained, tmp_path):
    from covid_fastai.inference import load_model
    from covid_fastai.learner import pretrained_state
    from covid_fastai.core import file_sha256
    root, _ = mini
    pre, rec, _ = pretrained
    run = tmp_path/'run'
    run_cli('train', '--data', root, '--out', run, '--arch', 'efficientnet_lite0', '--weights', pre/'backbone.pth', '--ratio', 0.5,
            *TINY, '--frozen-epochs', 1, '--unfrozen-epochs', 0, env=OFFLINE)
    on = json.loads((run/'run.json').read_text())['pretrained_on']
    assert on['record'] == str(pre/'pretrain.json') and on['record_sha256'] == file_sha256(pre/'pretrain.json')
    started = json.loads((run/'run.json').read_text())['pretrained_weights']   # the backbone's file, not ImageNet's
    assert Path(started['file']).samefile(pre/'backbone.pth') and started['sha256'] == file_sha256(pre/'backbone.pth')
    assert on['images_seen'] == rec['n_images'] and on['left_out']['n'] == 0
    assert on['overlap_with_valid'] == 0 and on['overlap_with_train'] == 0
    split = pd.read_csv(run/'split.csv')
    assert not set(split.X_ray_image_name) & {r['name'] for r in rec['images']}
    assert (split.split == 'valid').sum() > 0
    # the body was frozen throughout: its convolutions are the pretrained ones, not ImageNet's
    stem = load_model(run, device=torch.device('cpu')).model[0][0][0].weight
    assert torch.equal(stem, pretrained_state('efficientnet_lite0', pre/'backbone.pth')['_conv_stem.weight'])
    assert not torch.equal(stem, pretrained_state('efficientnet_lite0')['_conv_stem.weight'])
    # evaluated on the films the backbone was pretrained on, renamed: evaluate says the model has, in effect, seen them
    root_rows, seen = mini[1], [r['name'] for r in rec['images']][:4]
    (tmp_path/'imgs').mkdir()
    for n in seen: shutil.copy(root/'Coronahack-Chest-XRay-Dataset'/'Coronahack-Chest-XRay-Dataset'/'train'/n, tmp_path/'imgs'/f'copy-{n}')
    root_rows[root_rows.X_ray_image_name.isin(seen)].assign(X_ray_image_name=lambda d: 'copy-' + d.X_ray_image_name).to_csv(tmp_path/'seen.csv', index=False)
    res = run_cli('evaluate', '--model', run, '--csv', tmp_path/'seen.csv', '--images', tmp_path/'imgs', '--out', tmp_path/'ev')
    m = json.loads((tmp_path/'ev'/'metrics.json').read_text())
    assert m['seen_in_training'] == 4 and m['seen_in_training_by']['pretraining'] == 4, m['seen_in_training_by']
    assert "4 seen in pretraining the model's backbone" in res.stderr


def test_images_seen_in_pretraining_are_left_out_before_the_split(mini, pretrained, tmp_path):
    "At ratio 1 the selection takes Normal films the backbone was pretrained on: they go, before the split, and the run says so."
    root, _ = mini
    pre, rec, _ = pretrained
    seen = set(_selection(root, 1.0).X_ray_image_name) & {r['name'] for r in rec['images']}
    assert seen, 'the case needs a selection that overlaps the pretraining images'
    run = tmp_path/'run'
    res = run_cli('train', '--data', root, '--out', run, '--arch', 'efficientnet_lite0', '--weights', pre/'backbone.pth',
                  *TINY, '--frozen-epochs', 1, '--unfrozen-epochs', 0, env=OFFLINE)
    assert f"{len(seen)} of " in res.stderr and 'seen in pretraining' in res.stderr
    on = json.loads((run/'run.json').read_text())['pretrained_on']
    assert set(on['left_out']['images']) == seen and on['left_out']['by'] == {'name': len(seen)}
    assert on['overlap_with_valid'] == 0
    assert not set(pd.read_csv(run/'split.csv').X_ray_image_name) & seen


def test_seen_images_are_found_by_content_and_thumbnail_and_bad_records_refused(mini, pretrained, tmp_path):
    from PIL import Image
    from covid_fastai.core import ModelFileError, OptionError, EmptySelectionError
    from covid_fastai.pretrain import pretrain_record, seen_by, leave_out_pretrained, pretrain_rows
    root, _ = mini
    pre, rec, _ = pretrained
    r = pretrain_record(pre/'backbone.pth')
    folder = root/'Coronahack-Chest-XRay-Dataset'/'Coronahack-Chest-XRay-Dataset'/'train'
    a, b = rec['images'][0]['name'], rec['images'][1]['name']
    (tmp_path/'renamed.jpeg').write_bytes((folder/a).read_bytes())
    Image.open(folder/b).convert('L').resize((150, 170)).save(tmp_path/'resized.png')
    unseen = next(n for n in _selection(root, 0.5).X_ray_image_name if n not in {i['name'] for i in rec['images']})
    probe = pd.DataFrame({'X_ray_image_name': ['renamed.jpeg', 'resized.png', a, unseen], 'source': ['x', 'x', 'coronahack', 'coronahack'],
                          'path': [str(tmp_path/'renamed.jpeg'), str(tmp_path/'resized.png'), str(folder/a), str(folder/unseen)]})
    assert seen_by(probe, r['seen'], r['thumbs']).tolist() == ['content', 'near-duplicate', 'name', None]
    with pytest.raises(OptionError, match='--arch efficientnet_lite0'): leave_out_pretrained(probe, pre/'backbone.pth', 'resnet18')
    copy = tmp_path/'copy'; shutil.copytree(pre, copy)
    state = torch.load(copy/'backbone.pth'); state['_conv_stem.weight'] += 1; torch.save(state, copy/'backbone.pth')
    with pytest.raises(ModelFileError, match='SHA-256 differs'): leave_out_pretrained(probe, copy/'backbone.pth', 'efficientnet_lite0')
    bare = tmp_path/'bare'; bare.mkdir(); shutil.copy(pre/'backbone.pth', bare/'backbone.pth')   # a checkpoint without a record
    with pytest.warns(UserWarning, match='cannot be shown to be unseen'):
        kept, info = leave_out_pretrained(probe, bare/'backbone.pth', 'efficientnet_lite0')
    assert len(kept) == len(probe) and info['record'] is None
    with pytest.raises(EmptySelectionError, match='--tasks'): pretrain_rows(root, tasks='covid-normal', ratio=1.0)


def test_weights_paths_and_pretrain_options_that_cannot_work_are_one_line(mini, pretrained, tmp_path):
    "A missing --weights file, a folder, pretraining's record; no epochs, or a run's folder for pretrain: one line each, nothing written."
    root, _ = mini
    pre, _, _ = pretrained
    train = ('train', '--data', root, '--out', tmp_path/'run', '--arch', 'efficientnet_lite0', *TINY, '--frozen-epochs', 1, '--unfrozen-epochs', 0)
    for weights, says, rc in [(tmp_path/'none.pth', 'check the path given to --weights', 3), (pre, f"--weights {pre/'backbone.pth'}", 3),
                              (pre/'pretrain.json', f"--weights {pre/'backbone.pth'}", 2)]:
        res = run_cli(*train, '--weights', weights, check=False, env=OFFLINE)
        assert res.returncode == rc and says in res.stderr and 'Traceback' not in res.stderr, res.stderr
    assert not (tmp_path/'run').exists()
    res = run_cli(*train[:5], '--arch', 'resnet18', *train[7:], '--weights', pre/'backbone.pth', check=False, env=OFFLINE)   # another architecture's backbone
    assert res.returncode == 2 and 'is an efficientnet_lite0 backbone' in res.stderr and 'train with --arch efficientnet_lite0' in res.stderr, res.stderr
    from covid_fastai.core import OptionError
    from covid_fastai.pretrain import pretrain   # the command offers only these architectures; the function says so too
    with pytest.raises(OptionError, match="not 'convnext_atto'"): pretrain(root, tmp_path/'timm', arch='convnext_atto')
    assert not (tmp_path/'timm').exists()
    res = run_cli('pretrain', '--data', root, '--out', tmp_path/'p0', *TINY, '--frozen-epochs', 0, '--unfrozen-epochs', 0, check=False, env=OFFLINE)
    assert res.returncode == 2 and '--frozen-epochs 0 --unfrozen-epochs 0' in res.stderr and not (tmp_path/'p0').exists()
    res = run_cli('pretrain', '--data', root, '--out', tmp_path/'p1', *TINY, '--unfrozen-lr', 'nan', check=False, env=OFFLINE)
    assert res.returncode == 2 and '--unfrozen-lr nan: give a positive number' in res.stderr and not (tmp_path/'p1').exists()
    run = tmp_path/'a_run'; run.mkdir(); (run/'run.json').write_text('{}')
    res = run_cli('pretrain', '--data', root, '--out', run, *TINY, check=False, env=OFFLINE)
    assert res.returncode == 2 and 'holds a training run' in res.stderr and os.listdir(run) == ['run.json']


@pytest.mark.parametrize('folds', [[], ['--folds', 2]], ids=['one run', 'cross-validation'])
def test_resume_refuses_weights_that_changed_since_the_run_started(mini, pretrained, folds, tmp_path):
    "The run records its --weights absolute, with their SHA-256; a resume from another backbone at that path would mix two runs (or folds)."
    import signal
    from conftest import CLI, started, wait_until
    root, _ = mini
    pre, _, _ = pretrained
    shutil.copytree(pre, tmp_path/'bb')
    proc = started([*CLI, 'train', '--data', root, '--out', 'run', '--arch', 'efficientnet_lite0', '--weights', 'bb/backbone.pth',
                    '--ratio', '0.5', *TINY, '--frozen-epochs', '3', '--unfrozen-epochs', '0', *folds], tmp_path/'err', cwd=tmp_path, env=OFFLINE)
    run_json = tmp_path/'run'/'run.json'
    wait_until(run_json.exists, proc, tmp_path/'err')   # written before the first epoch
    proc.send_signal(signal.SIGKILL); proc.wait(timeout=60)
    run = json.loads(run_json.read_text())
    assert run['status'] == 'training' and run['settings']['weights'] == str(tmp_path/'bb'/'backbone.pth')   # absolute: --resume from anywhere
    state = torch.load(tmp_path/'bb'/'backbone.pth'); state['_conv_stem.weight'] += 1; torch.save(state, tmp_path/'bb'/'backbone.pth')
    res = run_cli('train', '--resume', tmp_path/'run', check=False, env=OFFLINE)
    assert res.returncode == 2 and 'changed since this run started from it' in res.stderr and 'Traceback' not in res.stderr, res.stderr


def test_pretrain_stopped_while_it_writes_its_record_leaves_no_backbone(mini, tmp_path, monkeypatch):
    "Ctrl-C after the backbone is trained but before pretrain.json is written: no backbone.pth that train --weights would take without its record."
    import covid_fastai.pretrain as P
    def stopped(obj, path): raise KeyboardInterrupt
    monkeypatch.setattr(P, 'write_json', stopped)                    # pretrain.json, the last of its record, after training
    monkeypatch.setenv('COVID_FASTAI_OFFLINE', '1')
    out = tmp_path/'pre'
    with pytest.raises(KeyboardInterrupt):
        P.pretrain(data=mini[0], out=out, tasks='covid-normal', ratio=0.5, size=32, num_workers=0, frozen_epochs=1, unfrozen_epochs=0,
                   arch='resnet18', pretrained=False, cache=False)
    assert (out/'pretrain_thumbnails.npy').exists() and (out/'history.csv').exists()   # it got as far as the record
    assert not (out/'backbone.pth').exists() and not (out/'pretrain.json').exists()
