"""What share of real images a trained model flags as out of distribution: the README's table.

    covid-fastai train --out runs/ood --arch efficientnet_lite0 --size 192 --frozen-epochs 3 --unfrozen-epochs 3 --cpu
    python tools/ood_report.py runs/ood [--data ROOT] [--adult-negatives DIR]

Sets: the run's validation images; the dataset's TRAIN images the run did not use, Normal ones and those of other
pneumonias (bacterial, viral, ARDS, SARS, Streptococcus: findings the covid-normal task never sees); the adult
negatives (adult radiographs without COVID-19, from the source of CoronaHack's COVID-19 images); and, for scale,
made-up images: noise, photo-like pictures, and unseen radiographs turned 90 degrees. Prints a Markdown table; a set
with no images on this copy (the packaged sample leaves no Normal image unused) is left out."""
import argparse, tempfile, warnings
from pathlib import Path
import numpy as np, pandas as pd, torch
from PIL import Image
from covid_fastai.core import SPLIT_CSV
from covid_fastai.data import find_data_root, images_dir, read_metadata, read_extra, add_paths
from covid_fastai.inference import load_model

ADULT = Path('../shared/data/adult-negatives')   # beside the development checkout; elsewhere give --adult-negatives, or the set is left out


def _photo_like(path, seed):
    r = np.random.default_rng(seed); yy, xx = np.mgrid[:300, :400]
    a = np.stack([xx*255/400, yy*255/300, np.full_like(xx, r.integers(0, 255))], -1).astype(np.uint8)
    for _ in range(5):
        cx, cy, rad = r.integers(0, 400), r.integers(0, 300), r.integers(20, 80)
        a[(xx-cx)**2 + (yy-cy)**2 < rad**2] = r.integers(0, 255, 3)
    Image.fromarray(a).save(path); return path


def sets(run:Path, root:Path, adult:Path, tmp:Path, n_made:int=20)->dict:
    "{name: image files} of each set of the report."
    split = pd.read_csv(run/SPLIT_CSV, dtype={'X_ray_image_name': str})
    meta = read_metadata(root)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        rows = add_paths(meta[(meta.Dataset_type == 'TRAIN') & ~meta.X_ray_image_name.isin(split.X_ray_image_name)], images_dir(root), by='Label')
    out = {'validation': split[split.split == 'valid'].path.tolist(),
           'unseen Normal': rows[rows.Label == 'Normal'].path.tolist(),
           'other pneumonias (unseen)': rows[(rows.Label == 'Pnemonia') & (rows.Label_2_Virus_category != 'COVID-19')].path.tolist()}
    if (adult/'metadata.csv').is_file():
        extra = read_extra(f"{adult/'metadata.csv'}:{adult/'images'}")
        out['adult negatives, no finding'] = extra[extra.Label == 'Normal'].path.tolist()
        out['adult negatives, other pneumonias'] = extra[extra.Label != 'Normal'].path.tolist()
    rng, made = np.random.default_rng(0), {'noise': [], 'photo-like': [], 'unseen Normal turned 90°': []}
    for i in range(n_made):
        Image.fromarray(rng.integers(0, 256, (400, 400), dtype=np.uint8)).save(tmp/f'noise{i}.png'); made['noise'].append(tmp/f'noise{i}.png')
        made['photo-like'].append(_photo_like(tmp/f'photo{i}.png', i))
    for i, f in enumerate(out['unseen Normal'][:n_made]):
        Image.open(f).rotate(90, expand=True).save(tmp/f'turned{i}.png')
        made['unseen Normal turned 90°'].append(tmp/f'turned{i}.png')
    return {k: v for k, v in {**out, **made}.items() if v}


def report(run:Path, root:Path, adult:Path=ADULT)->pd.DataFrame:
    clf = load_model(run, device=torch.device('cpu'))
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name, files in sets(run, root, adult, Path(tmp)).items():
            p = clf.predict(files); ok = p[p.error.isna()]
            rows.append({'images': name, 'n': len(ok), 'flagged': int(ok.out_of_distribution.sum()),
                         'share flagged': f"{ok.out_of_distribution.mean():.0%}", 'median ood_score': f"{ok.ood_score.median():.2f}",
                         'called COVID-19': f"{(ok.label == 'COVID-19').mean():.0%}"})
    return pd.DataFrame(rows)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('run', type=Path, help='the run folder that `covid-fastai train --out` wrote')
    p.add_argument('--data', type=Path, default=None, help='dataset root (default: as `covid-fastai train` finds it)')
    p.add_argument('--adult-negatives', type=Path, default=ADULT, help='folder with metadata.csv and images/ of the adult negatives')
    a = p.parse_args()
    t = report(a.run, find_data_root(a.data), a.adult_negatives).astype(str)
    print('\n'.join('| ' + ' | '.join(r) + ' |' for r in [list(t.columns), ['---'] * len(t.columns), *t.values.tolist()]))
