"""Grad-CAM and the shortcut score.

A model whose only signal is a marker in a corner is flagged and one whose signal is central is not; on real
radiographs a `Learner` and the model loaded back give the same maps, the overlays are valid PNGs, one per file; flat
images give no NaN; the model is left as it was found."""
import math
from pathlib import Path
import numpy as np, pytest, torch, torch.nn as nn
from PIL import Image
from fastai.vision.all import (ConvLayer, create_head, create_vision_model, DataLoaders, Learner, CrossEntropyLossFlat,
                               accuracy, set_seed)
from covid_fastai.core import CovidFastaiError
from covid_fastai.data import select_balanced, POSITIVE
from covid_fastai.datablock import covid_dataloaders
from covid_fastai.learner import covid_learner, arch_fn
from covid_fastai.inference import save_model, load_model
from covid_fastai.explain import *

SIZE, SIDE = 64, 12


def marker_images(n, where, seed):
    "`n` noise images; every other one (class 1) has a bright SIDE-pixel square in the top-left corner or the centre."
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 1, SIZE, SIZE, generator=g), torch.arange(n) % 2
    r = 0 if where == 'corner' else (SIZE - SIDE)//2
    x[y == 1, :, r:r+SIDE, r:r+SIDE] = 2.
    return x.expand(-1, 3, -1, -1) - 0.5, y


@pytest.fixture(scope='module')
def marker_models():
    "A small CNN (8 x 8 cells at 64 px, fastai's head) trained on each kind of marker image, with its validation images."
    out = {}
    for where in ('corner', 'centre'):
        set_seed(0, reproducible=True)
        (xt, yt), (xv, yv) = marker_images(64, where, 0), marker_images(32, where, 1)
        dls = DataLoaders.from_dsets(list(zip(xt, yt)), list(zip(xv, yv)), bs=16, device='cpu')
        body = nn.Sequential(ConvLayer(3, 16, stride=2), ConvLayer(16, 32, stride=2), ConvLayer(32, 64, stride=2))
        learn = Learner(dls, nn.Sequential(body, create_head(64, 2)), loss_func=CrossEntropyLossFlat(), metrics=accuracy)
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 1e-2)
        with learn.no_bar(): acc = learn.validate()[1]
        out[where] = learn, xv, yv, acc
    return out


def test_a_model_that_reads_a_corner_marker_is_flagged(marker_models):
    base, scores, peaks = shortcut_baseline(SIZE), {}, {}
    for where, (learn, xv, yv, acc) in marker_models.items():
        assert acc == 1., f"the {where} model did not learn its marker (accuracy {acc})"
        cams = grad_cam(learn.model, xv[yv == 1], 1)
        assert (cams.probs[:, 1] > 0.9).all()
        scores[where] = shortcut_score(cams.maps)
        flat = cams.maps.flatten(1).argmax(1)
        peaks[where] = torch.stack([flat // SIZE, flat % SIZE], 1)
    # every marked image of the corner model scores above a uniform map, every one of the centre model far below
    assert scores['corner'].min() > base + 0.03, (scores['corner'], base)
    assert scores['centre'].max() < base - 0.15, (scores['centre'], base)
    assert scores['corner'].min() > scores['centre'].max() + 0.25
    # and the strongest evidence is on the marker: the top-left 16 x 16 cell-pair, the central 16 x 16
    assert (peaks['corner'] < 16).all(), peaks['corner']
    assert ((peaks['centre'] - SIZE//2).abs() <= 8).all(), peaks['centre']


def test_the_map_explains_the_class_asked_for(marker_models):
    learn, xv, yv, _ = marker_models['corner']
    marked = xv[yv == 1][:4]
    for_1, for_0 = grad_cam(learn.model, marked, 1), grad_cam(learn.model, marked, 0)
    assert not torch.allclose(for_1.maps, for_0.maps)
    mixed = grad_cam(learn.model, marked, [1, 0, 1, 0])
    torch.testing.assert_close(mixed.maps[0::2], for_1.maps[0::2], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed.maps[1::2], for_0.maps[1::2], atol=1e-5, rtol=0)


def test_the_model_is_left_as_it_was(marker_models):
    learn, xv, _, _ = marker_models['corner']
    model = learn.model.train()
    model[1].eval()
    model.zero_grad(set_to_none=True)                      # training leaves (zeroed) gradients behind
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode(): cams = grad_cam(model, xv[:4])
    assert [m.training for m in (model, model[0], model[1])] == [True, True, False]
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # batch-norm statistics untouched
    assert not cam_layer(model)._forward_hooks
    with pytest.raises(CovidFastaiError, match='not a class index'): grad_cam(model, xv[:4], 5)
    assert not cam_layer(model)._forward_hooks and model.training
    torch.testing.assert_close(grad_cam(model, xv[:4]).maps, cams.maps)
    with torch.inference_mode(): inference_tensor = xv[:4] * 1
    with torch.no_grad(): torch.testing.assert_close(grad_cam(model, inference_tensor).maps, cams.maps)
    model.eval()


@pytest.mark.parametrize('arch', ['resnet18', 'efficientnet_lite0'])
def test_flat_images_give_no_nan(arch):
    model = create_vision_model(arch_fn(arch), 2, pretrained=False)
    flat = torch.stack([torch.full((3, 96, 96), v) for v in (-3., 0., 3.)])
    for cls in (0, 1):
        maps = grad_cam(model, flat, cls).maps
        assert not maps.isnan().any() and maps.min() >= 0 and maps.max() <= 1
        assert ((maps.flatten(1).amax(1) == 1) | (maps.flatten(1).amax(1) == 0)).all()


def test_the_shortcut_score():
    corner, centre = torch.zeros(2, 100, 100)
    corner[:15, :15], centre[30:70, 30:70] = 1, 1
    assert shortcut_score(corner) == 1. and shortcut_score(centre) == 0.
    assert shortcut_score(torch.ones(100, 100)) == pytest.approx(1 - (1 - 2*0.15)**2) == shortcut_baseline(100)
    np.testing.assert_allclose(shortcut_score(torch.stack([corner, centre, corner + centre, torch.zeros(100, 100)])),
                               [1, 0, 225/(225 + 1600), np.nan])
    assert shortcut_score(corner[:, :16], band=0.25) == pytest.approx(1.)   # rows 0-14 of 100: inside a 25 % frame
    with pytest.raises(CovidFastaiError, match='between 0 and 0.5'): shortcut_score(corner, band=0.6)


def test_maps_of_two_by_two_cells_warn_and_all_score_alike():
    "The documented limit: a ResNet at 64 px has 2 x 2 cells, and by symmetry every such map has the frame's share."
    set_seed(1)
    model = create_vision_model(arch_fn('resnet18'), 2, pretrained=False)
    with pytest.warns(UserWarning, match='too coarse'): cams = grad_cam(model, torch.randn(4, 3, 64, 64), 1)
    scores = shortcut_score(cams.maps)
    np.testing.assert_allclose(scores[~np.isnan(scores)], shortcut_baseline(64), atol=1e-5)


@pytest.fixture(scope='module', params=[('efficientnet_lite0', True, 128), ('resnet18', False, 96)], ids=lambda p: p[0])
def real_model(request, metadata, images, tmp_path_factory):
    "A learner trained one epoch on a few real radiographs of each class, and the same model saved and loaded back."
    arch, pretrained, size = request.param
    set_seed(42, reproducible=True)
    rows = select_balanced(metadata, images).groupby('target').head(8)
    dls = covid_dataloaders(rows, size=size, bs=8, num_workers=0, valid_pct=0.25)
    learn = covid_learner(dls, arch, pretrained=pretrained)
    with learn.no_bar(), learn.no_logging(): learn.fit_recipe(1, 0)
    out = tmp_path_factory.mktemp(arch)
    clf = load_model(save_model(learn, out, size=size), device=torch.device('cpu'))
    return learn, clf, dls.valid_ds.items, size


def test_maps_of_real_radiographs(real_model):
    learn, clf, valid, size = real_model
    cams, preds = clf_cams(clf, valid.path, bs=3), clf.predict(valid.path)
    assert cams.maps.shape == (len(valid), size, size) and cams.maps.dtype == torch.float32
    assert cams.maps.min() >= 0 and not cams.maps.isnan().any()
    assert ((cams.maps.flatten(1).amax(1) - 1).abs() < 1e-6).all()          # each map is scaled to its maximum
    np.testing.assert_allclose(cams.probs[:, clf.positive].numpy(), preds.prob_covid.values, atol=1e-5)
    assert [clf.classes[c] for c in cams.cls] == preds.label.tolist()       # by default the class predict gives
    scores = shortcut_score(cams.maps)
    assert scores.shape == (len(valid),) and ((scores >= 0) & (scores <= 1)).all()


def test_the_learner_and_the_loaded_model_give_the_same_maps(real_model):
    learn, clf, valid, _ = real_model
    training = learn.model.training
    by_clf = clf_cams(clf, valid.path)
    by_learn = learner_cams(learn, valid.path, bs=4)
    torch.testing.assert_close(by_learn.probs, by_clf.probs, atol=1e-4, rtol=0)
    assert torch.equal(by_learn.cls, by_clf.cls)
    torch.testing.assert_close(by_learn.maps, by_clf.maps, atol=2e-3, rtol=0)
    covid = clf_cams(clf, valid.path, cls=POSITIVE)
    torch.testing.assert_close(learner_cams(learn, valid.path, cls=POSITIVE).maps, covid.maps, atol=2e-3, rtol=0)
    assert (covid.cls == clf.positive).all()
    assert learn.model.training == training and not clf.model.training
    assert all(p.grad is None for p in clf.model.parameters())


def test_an_explicit_class_carries_the_probabilities_predict_gives(real_model):
    "A calibrated model's maps of a chosen class are titled with predict's probabilities, not the plain pass's softmax."
    _, clf, valid, _ = real_model
    plain, saved = clf_cams(clf, valid.path, cls=POSITIVE).probs, clf.temperature
    clf.temperature = saved * 3
    try: cams, preds = clf_cams(clf, valid.path, cls=POSITIVE), clf.predict(valid.path)
    finally: clf.temperature = saved
    np.testing.assert_allclose(cams.probs[:, clf.positive].numpy(), preds.prob_covid.values, atol=1e-5)
    assert not torch.allclose(cams.probs, plain, atol=1e-3)   # the temperature moved them


def test_overlays_one_valid_png_per_file(real_model, tmp_path):
    _, clf, valid, size = real_model
    src = [Path(p) for p in valid.path[:3]]
    (tmp_path/'a').mkdir(); (tmp_path/'b').mkdir()
    files = [tmp_path/'a'/'x.jpeg', tmp_path/'b'/'x.jpeg', tmp_path/'b'/'Röntgen (1).png']
    for s, f in zip(src, files): f.write_bytes(s.read_bytes())    # a PNG name with a JPEG inside: decoded by content
    cams = clf_cams(clf, files)
    written = save_overlays(files, cams, clf.classes, tmp_path/'heatmaps')
    assert [p.name for p in written] == ['x_cam.png', 'x_2_cam.png', 'R_ntgen__1__cam.png']
    assert sorted(p.name for p in (tmp_path/'heatmaps').iterdir()) == sorted(p.name for p in written)   # no temporary file left
    for p in written:
        with Image.open(p) as im: im.verify()
        with Image.open(p) as im: assert im.format == 'PNG' and im.size[0] > im.size[1] > 100
    from covid_fastai.explain import _title   # an image out of distribution says so on its overlay, which is shared on its own
    assert 'OUT-OF-DISTRIBUTION' in _title(0, cams, clf.classes, 0.15, True) and 'OUT' not in _title(0, cams, clf.classes, 0.15)
    flagged = save_overlays(files, cams, clf.classes, tmp_path/'flagged', flagged=[True, False, False])
    same = [np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(written, flagged)]
    assert same == [False, True, True]


def test_flat_radiograph_files_give_no_nan(real_model, tmp_path):
    _, clf, _, _ = real_model
    "Flat files never reach the model (load_xray refuses a blank image); flat tensors fed to it directly give no NaN."
    from covid_fastai.core import NotRadiographError
    Image.new('L', (300, 240), 128).save(tmp_path/'flat.png')
    with pytest.raises(NotRadiographError, match='blank'): clf_cams(clf, [tmp_path/'flat.png'])
    x = clf.normalise(torch.stack([torch.full((3, clf.size, clf.size), v, dtype=torch.uint8) for v in (0, 128, 255)]))
    for cls in (None, 0, 1):
        maps = grad_cam(clf.model, x, cls=cls).maps
        assert not maps.isnan().any() and maps.min() >= 0 and maps.max() <= 1


def test_top_losses(real_model):
    _, clf, valid, _ = real_model
    cams, targets = clf_cams(clf, valid.path), valid.target.tolist()
    losses, order = top_losses(cams.probs, targets, classes=clf.classes)
    true = torch.tensor([clf.classes.index(t) for t in targets])
    expected = -cams.probs.gather(1, true[:, None])[:, 0].clamp_min(1e-12).log()
    np.testing.assert_allclose(losses, expected[order].numpy(), rtol=1e-6)
    assert (np.diff(losses) <= 0).all() and sorted(order) == list(range(len(valid)))
    fig = plot_top_losses_cams(valid.path, cams, targets, clf.classes, k=2)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 2
    for ax, i in zip(shown, order[:2]):
        assert Path(valid.path.iloc[i]).name[:28] in ax.get_title()
        wrong = int(cams.cls[i]) != clf.classes.index(targets[i])
        assert (ax.title.get_color() == 'tab:red') == wrong


def test_predict_heatmaps_and_evaluate_top_losses_from_the_command(small_run, images, tmp_path):
    "predict --heatmaps writes one overlay per readable image and gives each its shortcut score; evaluate writes top_losses.png."
    import json
    from conftest import run_cli
    out = small_run[0]
    files = sorted(images.glob('IM-*.jpeg'))[:2]
    (tmp_path/'broken.jpeg').write_bytes(b'')
    res = run_cli('predict', '--model', out, *files, tmp_path/'broken.jpeg', '--heatmaps', tmp_path/'maps', '--json', check=False)
    records = json.loads(res.stdout)
    assert res.returncode == 1 and all('shortcut' in r for r in records) and records[2]['shortcut'] is None
    assert all(r['shortcut'] is None or 0 <= r['shortcut'] <= 1 for r in records[:2])   # None: a map with no evidence (2 x 2 at 64 px)
    pngs = sorted((tmp_path/'maps').iterdir())
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for p in pngs)
    assert sorted(r['heatmap_file'] for r in records[:2]) == list(map(str, pngs)) and records[2]['heatmap_file'] is None   # which is whose
    lines = run_cli('predict', '--model', out, *files, '--heatmaps', tmp_path/'maps2').stdout.splitlines()   # the score in the text too
    assert len(lines) == 2 and all(l.split('\t')[-1].startswith('shortcut ') for l in lines), lines
    run_cli('evaluate', '--model', out, '--out', tmp_path/'eval')
    m = json.loads((tmp_path/'eval'/'metrics.json').read_text())
    assert (m['shortcut_score'] is None or 0 <= m['shortcut_score'] <= 1) and 0 < m['shortcut_baseline'] < 1
    assert (tmp_path/'eval'/'plots'/'top_losses.png').read_bytes()[:4] == b'\x89PNG'
    import pandas as pd
    assert 'shortcut' in pd.read_csv(tmp_path/'eval'/'predictions.csv')


def test_evaluate_reports_the_mean_shortcut_score(real_model, images, tmp_path):
    "metrics.json's shortcut_score is the mean of predictions.csv's scores, on maps fine enough to have one (3 x 3 cells or more)."
    import json, pandas as pd
    from covid_fastai.data import COLUMNS
    from covid_fastai.evaluate import evaluate
    learn, _, valid, size = real_model
    model = save_model(learn, tmp_path/'model', size=size)
    valid[COLUMNS].to_csv(tmp_path/'valid.csv')
    evaluate(model, csv=tmp_path/'valid.csv', images=images, out=tmp_path/'eval', cpu=True, cache=False)
    m = json.loads((tmp_path/'eval'/'metrics.json').read_text())
    scores = pd.read_csv(tmp_path/'eval'/'predictions.csv').shortcut
    assert scores.notna().all() and m['shortcut_score'] is not None
    assert m['shortcut_score'] == pytest.approx(scores.mean()) and 0 <= m['shortcut_score'] <= 1
    assert m['shortcut_baseline'] == pytest.approx(shortcut_baseline(size))
