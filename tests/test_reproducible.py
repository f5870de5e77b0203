"Same seed, same result: the rows, the split and, on the CPU, the validation metrics, whatever the loader processes."
import json
import pandas as pd
from conftest import run_cli
from covid_fastai.train import train

SMALL = dict(arch='resnet18', size=32, frozen_epochs=1, unfrozen_epochs=1, pretrained=False, cpu=True, num_workers=0)


def test_same_seed_same_split_and_metrics(data_root, tmp_path):
    a = train(data_root, tmp_path/'a', **SMALL)
    b = train(data_root, tmp_path/'b', **SMALL)
    assert a == b
    assert (tmp_path/'a'/'split.csv').read_text() == (tmp_path/'b'/'split.csv').read_text()
    ha, hb = pd.read_csv(tmp_path/'a'/'history.csv'), pd.read_csv(tmp_path/'b'/'history.csv')
    pd.testing.assert_frame_equal(ha, hb)
    train(data_root, tmp_path/'c', **{**SMALL, 'seed': 7})
    assert (tmp_path/'c'/'split.csv').read_text() != (tmp_path/'a'/'split.csv').read_text()


def test_loader_workers_do_not_change_the_result(data_root, tmp_path):
    """The default of no loader processes on the CPU trains the same model as fastai's processes: randomness stays in the
    main process. Through the command: the loader forks its processes, which a test process's own threads make unsafe."""
    for w in (0, 2):
        run_cli('train', '--data', data_root, '--out', tmp_path/f'w{w}', '--arch', 'resnet18', '--size', 32, '--frozen-epochs', 1,
                '--unfrozen-epochs', 1, '--no-pretrained', '--cpu', '--num-workers', w)
    assert json.loads((tmp_path/'w0'/'metrics.json').read_text()) == json.loads((tmp_path/'w2'/'metrics.json').read_text())
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path/'w0'/'history.csv'), pd.read_csv(tmp_path/'w2'/'history.csv'))
