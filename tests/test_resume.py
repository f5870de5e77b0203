"Interrupted training: a real training process is stopped after an epoch, then resumed to the same result."
import json, signal
import pandas as pd, pytest, torch
from conftest import CLI, ctrl_c_reaches, run_cli, selection_root, started, wait_until

SMALL = ['--arch', 'resnet18', '--size', 96,   # epochs long enough (seconds, on any copy) to interrupt the run between them
          '--frozen-epochs', 2, '--unfrozen-epochs', 3, '--no-pretrained', '--num-workers', 0]


def _interrupt_after_first_epoch(out, sig, *args):
    "Start training into `out` (with more `args`) and send `sig` as soon as its first epoch checkpoint exists."
    err = out.parent/f'{out.name}.err'; out.parent.mkdir(parents=True, exist_ok=True)
    proc = started([*CLI, 'train', '--out', out, *SMALL, *args], err, preexec_fn=ctrl_c_reaches)
    wait_until((out/'checkpoint.pth').exists, proc, err)
    proc.send_signal(sig); proc.wait(timeout=120)
    return proc.returncode, err.read_text()


@pytest.fixture(scope='module')
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('whole')/'run'
    run_cli('train', '--out', out, *SMALL)
    return out


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGKILL])
def test_resume_ends_where_an_uninterrupted_run_ends(sig, uninterrupted, data_root, tmp_path):
    out = tmp_path/'run'
    rc, err = _interrupt_after_first_epoch(out, sig)
    assert rc != 0
    if sig == signal.SIGINT: assert rc == 130 and f'covid-fastai train --resume {out}' in err and 'Traceback' not in err
    assert not (out/'model.json').exists() and not (out/'metrics.json').exists()    # nothing half-done where finished files go
    assert not list(out.glob('.*.tmp'))
    run_cli('train', '--resume', out)
    assert json.loads((out/'metrics.json').read_text()) == json.loads((uninterrupted/'metrics.json').read_text())
    pd.testing.assert_frame_equal(pd.read_csv(out/'history.csv').drop(columns='lr'),
                                  pd.read_csv(uninterrupted/'history.csv').drop(columns='lr'))
    assert (out/'model.safetensors').read_bytes() == (uninterrupted/'model.safetensors').read_bytes()
    run = json.loads((out/'run.json').read_text())
    assert not (out/'checkpoint.pth').exists() and run['status'] == 'done'
    assert run['resumed']['phase'] == 'frozen' and run['resumed']['epoch'] >= 1 and run['resumed']['processes'] == 1   # says where it went on
    assert json.loads((uninterrupted/'run.json').read_text())['resumed'] is None


def test_a_new_run_drops_the_checkpoint_of_the_run_it_replaces(data_root, tmp_path):
    "A new run in the folder of an interrupted one: the old checkpoint goes before the new run.json is written, or --resume would mix the two."
    out = tmp_path/'run'
    rc, err = _interrupt_after_first_epoch(out, signal.SIGINT)
    assert rc == 130 and (out/'checkpoint.pth').exists(), (rc, sorted(p.name for p in out.iterdir()), err[-2000:])
    proc = started([*CLI, 'train', '--out', out, *SMALL, '--seed', '7'], tmp_path/'err')
    try:
        # run.json is replaced whole, never half-written
        wait_until(lambda: json.loads((out/'run.json').read_text())['settings']['seed'] == 7, proc, tmp_path/'err')
        assert not (out/'checkpoint.pth').exists()   # the new run's first epoch takes seconds: no checkpoint of its own yet
    finally: proc.kill(); proc.wait(timeout=60)


def test_resume_without_a_run_says_so(tmp_path):
    res = run_cli('train', '--resume', tmp_path, check=False)
    assert res.returncode == 2 and 'is not the folder of a run' in res.stderr


def test_resume_refuses_images_that_changed_since_the_run_started(data_root, images, tmp_path):
    "An image of the interrupted run's split moved away: resumed, the split would differ, and validation might hold trained images."
    import shutil
    from covid_fastai.data import read_metadata
    root, out = selection_root(data_root, images, tmp_path/'data'), tmp_path/'run'
    rc, err = _interrupt_after_first_epoch(out, signal.SIGINT, '--data', root)
    assert rc == 130, err[-2000:]
    split = pd.read_csv(out/'split.csv')                                   # written when the run started
    assert len(split) == len(read_metadata(root)) and set(split.split) == {'train', 'valid'}
    moved = split[split.split == 'train'].path.iloc[0]
    shutil.move(moved, tmp_path/'moved.jpeg')
    res = run_cli('train', '--resume', out, check=False)
    assert res.returncode == 2 and 'Traceback' not in res.stderr, res.stderr[-2000:]
    assert 'the images changed since this run started' in res.stderr and 'train again without --resume' in res.stderr
    shutil.move(tmp_path/'moved.jpeg', moved)                              # put back: the run goes on
    run_cli('train', '--resume', out)
    assert json.loads((out/'run.json').read_text())['status'] == 'done'


def test_resume_may_choose_the_threshold_anew(uninterrupted, data_root, tmp_path):
    "The settings used after the last epoch may change on --resume (a rule no threshold met stops the run there); the training is the same."
    out = tmp_path/'run'
    rc, err = _interrupt_after_first_epoch(out, signal.SIGINT)
    assert rc == 130, err[-2000:]
    res = run_cli('train', '--resume', out, '--threshold', 'youden', '--seed', 7, check=False)
    assert res.returncode == 2 and '--seed would be ignored' in res.stderr and '--threshold' not in res.stderr.split('ignored')[0]
    run_cli('train', '--resume', out, '--threshold', 'youden')
    metrics, whole = (json.loads((o/'metrics.json').read_text()) for o in (out, uninterrupted))
    assert metrics['threshold_choice']['rule'] == 'youden' and whole['threshold_choice']['rule'] == 'fixed'
    assert metrics['threshold'] == json.loads((out/'model.json').read_text())['threshold']
    assert json.loads((out/'run.json').read_text())['settings']['threshold'] == 'youden'
    from safetensors.torch import load_file   # the header differs: it keeps model.json's copy, threshold included
    mine, theirs = load_file(out/'model.safetensors'), load_file(uninterrupted/'model.safetensors')
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)   # the same training
    assert metrics['roc_auc'] == whole['roc_auc']


def test_resume_of_a_run_begun_before_newer_settings_and_of_a_run_whose_data_moved(data_root, images, tmp_path):
    "A run.json without `optimizer` is a run trained with fastai's Adam (the default then); a dataset root that moved is named, with the way out."
    root, out = selection_root(data_root, images, tmp_path/'data'), tmp_path/'run'
    rc, err = _interrupt_after_first_epoch(out, signal.SIGINT, '--data', root, '--optimizer', 'fastai')
    assert rc == 130, err[-2000:]
    run = json.loads((out/'run.json').read_text()); del run['settings']['optimizer']
    (out/'run.json').write_text(json.dumps(run))
    root.rename(tmp_path/'moved')
    res = run_cli('train', '--resume', out, check=False)
    assert res.returncode == 2 and f"this run's dataset root {root} (recorded in its run.json) is not there any more" in res.stderr
    assert 'Traceback' not in res.stderr and '--data' not in res.stderr   # not an option --resume would refuse
    (tmp_path/'moved').rename(root)
    run_cli('train', '--resume', out)
    done = json.loads((out/'run.json').read_text())
    assert done['status'] == 'done' and done['settings']['optimizer'] == 'fastai'
