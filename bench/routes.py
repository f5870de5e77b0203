"""Which route generalises: weights (random, ImageNet through pip) and task/data choices, judged beyond the 12-image validation.

Each route trains the recipe (freeze/unfreeze, one-cycle) on the data `find_data_root` finds, then predicts on images
it never trained on and reports how often each group is called COVID-19 (the decision rule of the model: the COVID-19
probability against its threshold with two classes, the class with the highest probability with more):
- unseen CoronaHack Normal and other-pneumonia films (pediatric, the same hospital as the training negatives),
- held-out adult radiographs without COVID-19 (half of ../shared/data/adult-negatives, never trained on; the other half
  is what `--extra-data` adds in the routes that use it).
No hidden set is here: the adult negatives are the closest thing to the shortcut test (adult, publication source, no
COVID-19). Usage: python bench/routes.py [--size 224] [--epochs 5] [--out runs/routes]; prints a markdown table."""
import argparse, json, time, warnings
from pathlib import Path
import pandas as pd
from covid_fastai.data import find_data_root, read_metadata, images_dir, finding, POSITIVE
from covid_fastai.train import train
from covid_fastai.inference import predict_files

ADULTS = Path(__file__).resolve().parents[2]/'shared'/'data'/'adult-negatives'

ROUTES = {   # name: train() settings
    'ResNet50, random weights, covid-normal (the offline default until now)': dict(arch='resnet50', pretrained=False, slow=True),
    'EfficientNet-Lite0, ImageNet (pip), covid-normal': dict(arch='efficientnet_lite0'),
    'EfficientNet-Lite0, ImageNet, three-class': dict(arch='efficientnet_lite0', task='three-class'),
    'EfficientNet-Lite0, ImageNet, three-class + adult negatives': dict(arch='efficientnet_lite0', task='three-class', extra=True),
    'EfficientNet-Lite0, ImageNet, covid-rest + adult negatives': dict(arch='efficientnet_lite0', task='covid-rest', extra=True),
}


def split_adults(out:Path, seed:int=0)->tuple[str, list]:
    "Half the adult negatives as an extra-data CSV for training, the other half's files held out."
    meta = pd.read_csv(ADULTS/'metadata.csv')
    train_half = meta.sample(frac=0.5, random_state=seed)
    csv = out/'adults_train.csv'; csv.parent.mkdir(parents=True, exist_ok=True)
    train_half.to_csv(csv, index=False)
    held = meta.drop(train_half.index)
    return f"{csv}:{ADULTS/'images'}", [str(ADULTS/'images'/n) for n in held.X_ray_image_name]


def called_covid(model, files)->float|None:
    if not files: return None
    preds = predict_files(model, files)
    ok = preds[preds.error.isna()]
    return float((ok.label == POSITIVE).mean())


def main(a):
    out = Path(a.out); root = find_data_root()
    extra, held_adults = split_adults(out)
    meta = read_metadata(root); train_rows = meta[meta.Dataset_type == 'TRAIN']
    present = set(p.name for p in images_dir(root).iterdir())
    rows = []
    for i, (name, s) in enumerate(ROUTES.items()):
        if s.get('slow') and not a.slow: continue
        run = out/f"route{i}"
        start = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            m = train(out=run, arch=s['arch'], pretrained=s.get('pretrained', True), task=s.get('task', 'covid-normal'),
                      extra_data=[extra] if s.get('extra') else None, size=a.size, frozen_epochs=a.epochs, unfrozen_epochs=a.epochs)
        used = set(pd.read_csv(run/'split.csv').X_ray_image_name)
        unseen = train_rows[~train_rows.X_ray_image_name.isin(used) & train_rows.X_ray_image_name.isin(present)]
        kinds = finding(unseen)
        files = lambda k: [str(images_dir(root)/n) for n in unseen[kinds == k].X_ray_image_name]
        rows.append({'route': name, 'valid n': m['n'], 'valid AUC (COVID-19 vs rest)': m['roc_auc'],
                     'valid sens': m['sensitivity'], 'valid spec': m['specificity'],
                     f"unseen Normal called COVID-19": called_covid(run, files('Normal')),
                     f"unseen pneumonia called COVID-19": called_covid(run, files('Pneumonia')),
                     f"held-out adult negatives called COVID-19 (n={len(held_adults)})": called_covid(run, held_adults),
                     'minutes': round((time.time() - start)/60, 1)})
        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    (out/'routes.json').write_text(table.to_json(orient='records', indent=1))
    fmt = lambda v: '' if v is None or v != v else f"{v:.3f}" if isinstance(v, float) else str(v)
    print('| ' + ' | '.join(table.columns) + ' |\n|' + ' --- |' * len(table.columns))
    for r in table.itertuples(index=False): print('| ' + ' | '.join(map(fmt, r)) + ' |')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--size', type=int, default=224); p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--out', default='runs/routes')
    p.add_argument('--slow', action='store_true', help='also the ResNet50 route (about 3x the time of a Lite0 one)')
    main(p.parse_args())
