"""Measure what the task and the adult negatives change: K-fold cross-validation of each configuration, and how many
adult radiographs without COVID-19 each one calls COVID-19 when it has not trained on them.

    python tools/compare_tasks.py [--out runs/compare] [--folds 3] [--size 128] [--arch resnet18] [--extra CSV:IMAGES]

Each configuration is `covid-fastai train --folds K` with the same recipe; finished runs are reused, so the script can
be stopped and started again. The adult negatives are scored on models that never saw them: for a configuration
trained without them, each fold's model on all of them; for one trained with them, each fold's model on those of its
own validation fold, so each is scored once, by the model that left it out. "Called COVID-19" is the COVID-19-against-
the-rest decision of `metrics.json`: COVID-19 probability at or above the model's threshold (`predict --json`).
Prints a markdown table for the README."""
import argparse, json, subprocess, sys
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent/'covid-fastai')]   # the installed command
ADULT = ROOT.parent/'shared'/'data'/'adult-negatives'
CONFIGS = [('covid-normal (the default task)', ['--task', 'covid-normal'], False),
           ('three-class', ['--task', 'three-class'], False),
           ('three-class + adult negatives', ['--task', 'three-class'], True),
           ('covid-rest + adult negatives', ['--task', 'covid-rest'], True)]


def sh(*args):
    print('$ covid-fastai', ' '.join(map(str, args)), flush=True)
    subprocess.run([*CLI, *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def adult_called_covid(run:Path, fold:int, extra:str, with_extra:bool, source:str)->tuple[int, int]:
    "(adult negatives called COVID-19, adult negatives scored) by the model of `fold`, which did not train on them."
    import pandas as pd
    model, (csv, folder) = run/f'fold-{fold}', extra.split(':')
    names = pd.read_csv(csv, dtype=str).X_ray_image_name
    if with_extra:                       # those of its own validation fold
        split = pd.read_csv(model/'split.csv', dtype=str)
        names = split[(split.split == 'valid') & (split.source == source)].X_ray_image_name
    if not len(names): return 0, 0
    threshold = json.loads((model/'model.json').read_text())['threshold']
    res = subprocess.run([*CLI, 'predict', '--model', model, *[Path(folder)/n for n in names], '--json'],
                         capture_output=True, text=True, check=True)
    probs = [r['prob_covid'] for r in json.loads(res.stdout)]
    return sum(p >= threshold for p in probs), len(probs)


def fmt(s): return 'n/a' if s['mean'] is None else f"{s['mean']:.3f} ± {s['sd']:.3f}" if s['sd'] is not None else f"{s['mean']:.3f}"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='runs/compare'); p.add_argument('--folds', type=int, default=3)
    p.add_argument('--size', type=int, default=128); p.add_argument('--arch', default='resnet18')
    p.add_argument('--extra', default=f"{ADULT/'metadata.csv'}:{ADULT/'images'}")
    a = p.parse_args(argv)
    source = 'covid-chestxray-dataset (publications)'
    rows = []
    for name, args, with_extra in CONFIGS:
        run = Path(a.out)/(name.split(' ')[0] + ('-adult' if with_extra else ''))
        if not (run/'cv.json').is_file():
            sh('train', '--out', run, '--folds', a.folds, '--arch', a.arch, '--size', a.size, '--no-pretrained', '--num-workers', 0,
               *args, *(['--extra-data', a.extra] if with_extra else []))
        cv = json.loads((run/'cv.json').read_text())
        called = [adult_called_covid(run, i, a.extra, with_extra, source) for i in range(1, a.folds+1)]
        fp, n = map(sum, zip(*called))
        m = cv['metrics']
        rows.append(f"| {name} | {sum(cv['n'])} | {fmt(m['accuracy'])} | {fmt(m['sensitivity'])} | {fmt(m['specificity'])} "
                    f"| {fmt(m['roc_auc'])} | {fp} of {n} ({100*fp/n:.0f} %) |")
    print(f"\n{a.folds}-fold cross-validation, {a.arch} at {a.size} px, 5 + 5 epochs, no ImageNet weights; COVID-19 against the rest:\n")
    print("| configuration | images | accuracy | sensitivity | specificity | ROC AUC | adult negatives called COVID-19 (held out) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print('\n'.join(rows))


if __name__ == '__main__': main(sys.argv[1:])
