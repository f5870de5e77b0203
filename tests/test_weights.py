"Pretrained weights offline: the torch hub cache, a local checkpoint, and a fast, clear failure when neither exists."
import time, urllib.error
import pytest, torch, torchvision
from covid_fastai.core import WeightsNotFoundError, ModelFileError
from covid_fastai.learner import cached_weights_path, pretrained_state, covid_learner


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))
    def no_network(*args, **kwargs): raise urllib.error.URLError('network is unreachable (test)')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', no_network)
    return tmp_path/'torch'


@pytest.fixture(scope='module')
def dls(data_root, images):
    import warnings
    from covid_fastai.data import read_metadata, select_balanced
    from covid_fastai.datablock import covid_dataloaders
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        rows = select_balanced(read_metadata(data_root), images)
    return covid_dataloaders(rows, size=32, num_workers=0, device=torch.device('cpu'))


def _real_checkpoint(arch, path):
    "A real torchvision checkpoint of `arch` (random weights: ImageNet's cannot be downloaded here), saved at `path`."
    torch.manual_seed(0)
    state = getattr(torchvision.models, arch)().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_cached_file_is_used_without_network(torch_home, dls):
    path = cached_weights_path('resnet18')
    assert path == torch_home/'hub'/'checkpoints'/'resnet18-f37072fd.pth'
    state = _real_checkpoint('resnet18', path)
    learn = covid_learner(dls, 'resnet18')          # pretrained=True is the default
    assert learn.pretrained
    assert torch.equal(learn.model[0][0].weight, state['conv1.weight'])
    assert torch.equal(learn.model[0][7][1].bn2.running_var, state['layer4.1.bn2.running_var'])


def test_resnet50_cache_name_is_torchvisions_default(torch_home):
    assert cached_weights_path('resnet50').name == 'resnet50-11ad3fa6.pth'


def test_local_checkpoint_path(torch_home, tmp_path, dls):
    state = _real_checkpoint('resnet18', tmp_path/'mine.pth')
    torch.save({'state_dict': state}, tmp_path/'wrapped.pth')      # as training scripts often save
    for f in ('mine.pth', 'wrapped.pth'):
        learn = covid_learner(dls, 'resnet18', weights=tmp_path/f)
        assert torch.equal(learn.model[0][4][0].conv1.weight, state['layer1.0.conv1.weight'])


def test_no_weights_fails_fast_naming_file_and_ways_out(torch_home, dls):
    start = time.time()
    with pytest.raises(WeightsNotFoundError) as e: covid_learner(dls, 'resnet50')
    assert time.time() - start < 5
    msg = str(e.value)
    assert str(torch_home/'hub'/'checkpoints') in msg and 'resnet50-11ad3fa6.pth' in msg
    assert '--weights PATH' in msg and '--no-pretrained' in msg


def test_wrong_or_broken_checkpoints_are_refused(torch_home, tmp_path, dls):
    _real_checkpoint('resnet18', tmp_path/'r18.pth')
    with pytest.raises(ModelFileError, match='do not fit resnet50'): covid_learner(dls, 'resnet50', weights=tmp_path/'r18.pth')
    (tmp_path/'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ModelFileError, match='not a readable PyTorch checkpoint'): pretrained_state('resnet18', tmp_path/'junk.pth')
    with pytest.raises(WeightsNotFoundError, match='nowhere.pth not found'): pretrained_state('resnet18', tmp_path/'nowhere.pth')
