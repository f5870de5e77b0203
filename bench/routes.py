"""Which route: a ResNet from random weights, EfficientNet-Lite0 from ImageNet weights (pip), or Lite0 pretrained on CoronaHack's other radiographs (`covid-fastai pretrain`); for each task, by K-fold cross-validation and on adult radiographs without COVID-19 that the model never trained on.

    python bench/routes.py --data ROOT --adult-negatives DIR --out FILE.json       # CPU: 128 px, 2 + 2 epochs
    python bench/routes.py --data ROOT --adult-negatives DIR --out FILE.json --size 256 --epochs 5 \\
        --pretrain-epochs 5 --pretrain-max-per-class 0 --resnet resnet50 --bs 32      # a GPU

Tasks: covid-normal (the default task), and covid-rest with the adult negatives as extra data (COVID-19 against every
other radiograph, adults without COVID-19 among them). Every route of a task trains on the same selection and folds:
the backbone is pretrained on the Normal and pneumonia films that neither task's selection takes (and on no image that
is the same picture as a selected one), so `train --weights` leaves nothing out; the script checks that and records it.
For each task and route, `train(folds=K)` with the freeze/unfreeze recipe, then:
- ROC AUC, sensitivity, specificity (COVID-19 against the rest, at the model's threshold): mean ± sd over the K
  validation folds;
- adult negatives called COVID-19 (probability of COVID-19 at or above the model's threshold), each scored by models
  that never trained on it: for covid-normal every fold's model scores all of them; for covid-rest + adult negatives
  each fold's model scores the adults of its own validation fold. The share is pooled over the folds.
Finished runs under --work are reused (delete it to start again). Writes FILE.json and prints a Markdown table; the
minutes are those of training and validating each route (all folds), on the device named in the JSON."""
import argparse, json, platform, re, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, torch
from covid_fastai.core import CV_JSON, RUN_JSON, SPLIT_CSV, MODEL_JSON, get_device
from covid_fastai.data import find_data_root
from covid_fastai.pretrain import pretrain, PRETRAIN_JSON, BACKBONE_FILE
from covid_fastai.train import train
from covid_fastai.inference import predict_files

REPO = Path(__file__).resolve().parents[1]
ADULTS = REPO.parent/'shared'/'data'/'adult-negatives'
TASKS = [('covid-normal', 'covid-normal', False), ('covid-rest + adult negatives', 'covid-rest', True)]


def routes(a, backbone:Path)->list:
    "(name, `train` settings) of each route."
    name = {'resnet18': 'ResNet18', 'resnet34': 'ResNet34', 'resnet50': 'ResNet50'}.get(a.resnet, a.resnet)
    return [(f'{name}, random weights', dict(arch=a.resnet, pretrained=False)),
            ('EfficientNet-Lite0, ImageNet (pip)', dict(arch='efficientnet_lite0')),
            ('EfficientNet-Lite0, X-ray-pretrained', dict(arch='efficientnet_lite0', weights=str(backbone)))]


def slug(s:str)->str: return re.sub(r'[^a-z0-9]+', '-', s.lower()).strip('-')


def adults_called(run:Path, folds:int, adults:Path, with_adults:bool)->list:
    "[called, scored] of adult negatives per fold, each scored by a model that did not train on it."
    names = set(pd.read_csv(adults/'metadata.csv', dtype=str).X_ray_image_name)
    out = []
    for i in range(1, folds+1):
        model = run/f'fold-{i}'
        if with_adults:                  # those of its own validation fold
            split = pd.read_csv(model/SPLIT_CSV, dtype=str)
            files = split[(split.split == 'valid') & (split.source != 'coronahack') & split.X_ray_image_name.isin(names)].path.tolist()
        else: files = [str(adults/'images'/n) for n in sorted(names)]
        if not files: out.append([0, 0]); continue
        threshold = json.loads((model/MODEL_JSON).read_text())['threshold']
        preds = predict_files(model, files)
        ok = preds[preds.error.isna()]
        out.append([int((ok.prob_covid >= threshold).sum()), len(ok)])
    return out


def fmt(s:dict)->str:
    if s['mean'] is None: return 'n/a'
    return f"{s['mean']:.3f} ± {s['sd']:.3f}" if s['sd'] is not None else f"{s['mean']:.3f}"


def table(result:dict)->str:
    "The Markdown table of `result`."
    lines = ['| task | route | images (folds) | ROC AUC | sensitivity | specificity | adult negatives called COVID-19 | minutes |',
             '| --- | --- | --- | --- | --- | --- | --- | --- |']
    for r in result['rows']:
        k, n = map(sum, zip(*r['adults_called']))
        lines.append(f"| {r['task']} | {r['route']} | {r['images']} ({r['folds']}) | {fmt(r['roc_auc'])} | {fmt(r['sensitivity'])} "
                     f"| {fmt(r['specificity'])} | {k} of {n} ({100*k/n:.0f} %) | {r['minutes']:.1f} |")
    return '\n'.join(lines)


def main(a):
    data, adults, work = find_data_root(a.data), Path(a.adult_negatives), Path(a.work)
    extra = f"{adults/'metadata.csv'}:{adults/'images'}"
    common = dict(data=data, size=a.size, bs=a.bs, seed=a.seed, num_workers=a.num_workers)
    warnings.simplefilter('ignore')
    pre = work/'pretrain'
    if not (pre/PRETRAIN_JSON).is_file():
        print(f"pretraining EfficientNet-Lite0 in {pre}", flush=True)
        pretrain(out=pre, arch='efficientnet_lite0', tasks=','.join(t for _, t, _ in TASKS), frozen_epochs=1,
                 unfrozen_epochs=a.pretrain_epochs, max_per_class=a.pretrain_max_per_class or None, **common)
    rec = json.loads((pre/PRETRAIN_JSON).read_text())
    rows = []
    for task_name, task, with_adults in TASKS:
        selections = {}
        for route, settings in routes(a, pre/BACKBONE_FILE):
            run = work/slug(task_name)/slug(route)
            if not (run/CV_JSON).is_file():
                print(f"{task_name}: {route} in {run}", flush=True)
                train(out=run, task=task, extra_data=[extra] if with_adults else None, folds=a.folds,
                      frozen_epochs=a.epochs, unfrozen_epochs=a.epochs, **common, **settings)
            cv = json.loads((run/CV_JSON).read_text())
            runs = [json.loads((run/f'fold-{i}'/RUN_JSON).read_text()) for i in range(1, a.folds+1)]
            selections[route] = sorted(pd.concat([pd.read_csv(run/f'fold-{i}'/SPLIT_CSV, dtype=str) for i in range(1, a.folds+1)])
                                       .X_ray_image_name.unique())
            on = [r.get('pretrained_on') for r in runs]
            rows.append({'task': task_name, 'route': route, 'images': sum(cv['n']), 'folds': a.folds,
                         **{k: cv['metrics'][k] for k in ('roc_auc', 'sensitivity', 'specificity', 'accuracy')},
                         'adults_called': adults_called(run, a.folds, adults, with_adults),
                         'minutes': round(sum(r['seconds'] for r in runs)/60, 1),
                         'left_out_as_seen_in_pretraining': [o['left_out']['n'] for o in on] if on[0] else None,
                         'overlap_with_valid': [o['overlap_with_valid'] for o in on] if on[0] else None,
                         'same_selection_as_first_route': selections[route] == next(iter(selections.values())),
                         'run': str(run)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ('roc_auc', 'sensitivity', 'specificity', 'accuracy')}), flush=True)
    result = {'settings': vars(a), 'device': torch.cuda.get_device_name() if get_device().type == 'cuda' else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              'data': str(data), 'pretrain': {k: rec[k] for k in ('arch', 'started_from', 'n_images', 'counts', 'left_out', 'valid', 'seconds')},
              'rows': rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + '\n')
    print(f"\n{a.folds}-fold cross-validation at {a.size} px, {a.epochs} + {a.epochs} epochs, on {result['device']}; backbone pretrained "
          f"in {rec['seconds']/60:.1f} min on {rec['n_images']} radiographs ({', '.join(f'{k} {v}' for k, v in rec['counts'].items())}), "
          f"validation accuracy {rec['valid'].get('accuracy', float('nan')):.3f}:\n")
    print(table(result))


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default=None, help='dataset root (default: as covid-fastai finds it)')
    p.add_argument('--adult-negatives', default=str(ADULTS), help='folder with metadata.csv and images/ (default: %(default)s)')
    p.add_argument('--out', default='runs/routes/routes.json', help='the JSON of every figure (default: %(default)s)')
    p.add_argument('--work', default='runs/routes', help='folder of the runs, reused when present (default: %(default)s)')
    p.add_argument('--size', type=int, default=128); p.add_argument('--epochs', type=int, default=2, help='epochs of each phase')
    p.add_argument('--folds', type=int, default=3); p.add_argument('--bs', type=int, default=16)
    p.add_argument('--resnet', default='resnet18', help='the random-weights route: resnet18 or resnet50')
    p.add_argument('--pretrain-epochs', type=int, default=2, help='unfrozen epochs of pretraining (after one frozen)')
    p.add_argument('--pretrain-max-per-class', type=int, default=150, help='radiographs of each class to pretrain on; 0: all')
    p.add_argument('--seed', type=int, default=42); p.add_argument('--num-workers', type=int, default=None)
    main(p.parse_args())
