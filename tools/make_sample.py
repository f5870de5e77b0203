"""Make `covid_fastai/sample/`, a small real data sample shipped inside the package, and `covid_fastai/metadata/`.

Why: the tests, the tutorials and `make run` need real radiographs in CoronaHack's layout, and most machines do not
have the 1.2 GB Kaggle download. This tool takes 80 images from a CoronaHack copy and writes them, shrunk, in exactly
CoronaHack's layout, so that code pointed at the sample runs unchanged on the full dataset, and vice versa:

    covid_fastai/sample/
      Chest_xray_Corona_Metadata.csv        the sample's rows, in CoronaHack's format, with their ORIGINAL index values
      Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset/train/<X_ray_image_name>
      README.md                             dataset card: counts per class (computed here), sources, licences, caveat

What goes in (all TRAIN rows whose image file exists under `--src`, chosen at random with `--seed`):
  30 COVID-19 (Label Pnemonia, Label_2_Virus_category COVID-19), 30 Normal, and 20 other pneumonias: every
  ARDS/SARS/Streptococcus row that has a file, the rest ordinary pneumonia (Label_1 bacteria or Virus, no Label_2),
  half bacteria, half virus (bacteria get the odd one).
Images keep their published names and formats: the longer side shrunk to at most 320 px (LANCZOS, after applying the
EXIF orientation), JPEG at quality 85, PNG as PNG, both with optimize=True; the mode is kept (grey stays grey, RGB
stays RGB) unless JPEG cannot hold it.

It also copies the full published metadata CSV (all 5910 rows, unchanged) to `covid_fastai/metadata/`, with a short
README, so that `covid-fastai summary` can print the seed article's figures without the download.

The sample is deterministic for a given source folder and seed: rows are ordered by their original index before the
seeded draw (Python's `random.Random(seed)`). Which rows can be drawn depends on which image files the source holds,
so a full Kaggle copy gives a different (equally valid) sample than a partial copy. The encoded bytes depend on the
Pillow version.

Usage:  python tools/make_sample.py [--src ROOT] [--seed 0]
ROOT defaults to $COVID_FASTAI_DATA, then /work/shared/data/coronahack-chest-xraydataset. Needs pandas and Pillow."""
import argparse, os, random, shutil, subprocess, sys
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'covid_fastai'
CSV = 'Chest_xray_Corona_Metadata.csv'
TRAIN = Path('Coronahack-Chest-XRay-Dataset')/'Coronahack-Chest-XRay-Dataset'/'train'
MAX_SIDE, JPEG_QUALITY = 320, 85
N_COVID, N_NORMAL, N_OTHER = 30, 30, 20
RARE = ('ARDS', 'SARS', 'Streptococcus')
LIMIT_BYTES = 3_000_000
COMMAND = 'python tools/make_sample.py --seed {seed}'


def read_meta(path):
    "CoronaHack's metadata as strings, indexed by the original (unnamed) first column, kept as text."
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[''], index_col=0)


def write_meta(df, path):
    "Write `df` as CoronaHack does: unnamed index first, empty fields for missing values, '\\n' line ends."
    df.to_csv(path, index=True, index_label='', lineterminator='\n')


def _draw(df, n, rng, what):
    "`n` rows of `df`, drawn with `rng` after ordering by the original index."
    if len(df) < n: sys.exit(f"make_sample: only {len(df)} {what} rows with image files, {n} needed")
    keys = sorted(df.index, key=int)
    return df.loc[sorted(rng.sample(keys, n), key=int)]


def choose(meta, have, seed):
    "The sample's rows: TRAIN rows whose file is in `have`, drawn with `seed`, ordered by original index."
    rng = random.Random(seed)
    m = meta[(meta.Dataset_type == 'TRAIN') & meta.X_ray_image_name.isin(have)]
    l2, l1 = m.Label_2_Virus_category, m.Label_1_Virus_category
    pneu = m.Label == 'Pnemonia'
    covid = m[pneu & (l2 == 'COVID-19')]
    normal = m[m.Label == 'Normal']
    rare = m[pneu & l2.isin(RARE)]
    n_ord = N_OTHER - len(rare)
    if n_ord < 0: sys.exit(f"make_sample: {len(rare)} ARDS/SARS/Streptococcus rows do not fit in {N_OTHER}")
    n_bac = (n_ord + 1)//2
    parts = [_draw(covid, N_COVID, rng, 'COVID-19'), _draw(normal, N_NORMAL, rng, 'Normal'), rare,
             _draw(m[pneu & l2.isna() & (l1 == 'bacteria')], n_bac, rng, 'bacterial pneumonia'),
             _draw(m[pneu & l2.isna() & (l1 == 'Virus')], n_ord - n_bac, rng, 'viral pneumonia')]
    return pd.concat(parts).sort_index(key=lambda ix: ix.astype(int))


def shrink(src, dst):
    "Copy image `src` to `dst` in its own format, longer side at most MAX_SIDE px."
    with Image.open(src) as im:
        fmt = im.format
        im = ImageOps.exif_transpose(im)
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
        if fmt == 'JPEG':
            if im.mode not in ('L', 'RGB', 'CMYK'):
                im = im.convert('L' if im.mode in ('LA', 'I', 'I;16', 'F', '1') else 'RGB')
            im.save(dst, 'JPEG', quality=JPEG_QUALITY, optimize=True)
        elif fmt == 'PNG': im.save(dst, 'PNG', optimize=True)
        else: sys.exit(f"make_sample: {src} is {fmt}, neither JPEG nor PNG")


def class_of(r):
    if r.Label == 'Normal': return 'Normal'
    if pd.notna(r.Label_2_Virus_category): return f"Pnemonia, {r.Label_2_Virus_category}"
    return f"Pnemonia, {r.Label_1_Virus_category} (no Label_2)"


def counts(sample):
    "Rows per class, in a fixed order, as (class, n) pairs."
    c = sample.apply(class_of, axis=1).value_counts()
    order = ['Pnemonia, COVID-19', 'Normal'] + [f'Pnemonia, {x}' for x in RARE] + \
            ['Pnemonia, bacteria (no Label_2)', 'Pnemonia, Virus (no Label_2)']
    return [(k, int(c[k])) for k in order if k in c] + [(k, int(v)) for k, v in c.items() if k not in order]


def disk_usage(path):
    "`du -sk` of `path` in KiB, or None where there is no du."
    if not shutil.which('du'): return None
    return int(subprocess.run(['du', '-sk', str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


SAMPLE_README = """# CoronaHack sample: 80 real chest radiographs

A small sample of the CoronaHack chest X-ray dataset, in CoronaHack's own layout, shipped with the package so that
the tests, the tutorials and `make run` work on a machine without the dataset. **It is far too small to judge any
model**: use it to check that code runs, not how well it works.

```
Chest_xray_Corona_Metadata.csv      the sample's {n} rows in CoronaHack's format; the first (unnamed) column
                                    keeps each row's index in the full published CSV
Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset/train/<X_ray_image_name>
```

## Contents

All rows are `Dataset_type` TRAIN (there is no `test/` folder). The label is spelled `Pnemonia`, as in the data.

| Label, category | images |
| --- | --- |
{table}
| **total** | **{n}** |

Formats: {formats}.
Images keep their published names and formats, shrunk so that the longer side is at most {side} px (JPEG quality
{q}); grey images stay grey and colour images stay colour, as in the original.

## How it was made

```
{command}
```

run from the repository root on a CoronaHack copy (`--src ROOT`, default `$COVID_FASTAI_DATA`). The tool takes, at
random with the seed, only TRAIN rows whose image file exists: {n_covid} COVID-19, {n_normal} Normal, and {n_other}
other pneumonias (every ARDS, SARS and Streptococcus row with a file, the rest ordinary bacterial and viral pneumonia,
about half each). See the docstring of `tools/make_sample.py`.

## Sources and licences

- Normal and pneumonia (bacteria, Virus) images: Kermany, Zhang, Goldbaum et al., "Identifying Medical Diagnoses
  and Treatable Diseases by Image-Based Deep Learning", *Cell* 2018; data under CC BY 4.0.
- COVID-19, ARDS, SARS and Streptococcus images: Cohen et al., "COVID-19 image data collection"
  (covid-chestxray-dataset, 2020); each image is under the licence of its source publication.
- Assembled as "CoronaHack - Chest X-Ray-Dataset" on Kaggle (praveengovi/coronahack-chest-xraydataset).

## Caveat

The COVID-19 images are adult radiographs taken from publications; the Normal images are pediatric films from one
hospital. A model can learn age and source instead of disease, and score well doing so.

## The real data

```
kaggle datasets download -d praveengovi/coronahack-chest-xraydataset
unzip coronahack-chest-xraydataset.zip -d coronahack-chest-xraydataset
```

then pass `--data ROOT` or set `COVID_FASTAI_DATA=ROOT`, where ROOT is the folder that holds
`Chest_xray_Corona_Metadata.csv`.
"""

METADATA_README = """# CoronaHack metadata

`Chest_xray_Corona_Metadata.csv` is the published metadata of the Kaggle dataset "CoronaHack - Chest X-Ray-Dataset"
(praveengovi/coronahack-chest-xraydataset), all {n} rows, unchanged (no images). It ships with the package so that
`covid-fastai summary` can print the seed article's figures (rows per label, category and split) without the
download. Copied by `tools/make_sample.py`; images: Kermany et al. (Cell 2018, CC BY 4.0) and Cohen et al.
(covid-chestxray-dataset, 2020, licence per source publication).
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--src', metavar='ROOT', type=Path,
                   default=Path(os.environ.get('COVID_FASTAI_DATA') or '/work/shared/data/coronahack-chest-xraydataset'),
                   help='CoronaHack root (default: $COVID_FASTAI_DATA, then /work/shared/data/coronahack-chest-xraydataset)')
    p.add_argument('--seed', type=int, default=0, help='seed of the draw (default 0)')
    a = p.parse_args(argv)
    src_csv, src_img = a.src/CSV, a.src/TRAIN
    if not src_csv.is_file() or not src_img.is_dir(): sys.exit(f"make_sample: {a.src} has no {CSV} or no {TRAIN}/")

    meta = read_meta(src_csv)
    have = {f.name for f in src_img.iterdir() if f.is_file()}
    sample = choose(meta, have, a.seed)

    out = PKG/'sample'
    if (out/'Coronahack-Chest-XRay-Dataset').exists(): shutil.rmtree(out/'Coronahack-Chest-XRay-Dataset')
    (out/TRAIN).mkdir(parents=True)
    for name in sample.X_ray_image_name: shrink(src_img/name, out/TRAIN/name)
    write_meta(sample, out/CSV)

    fmts = {}
    for name in sample.X_ray_image_name:
        with Image.open(out/TRAIN/name) as im: fmts[(im.format, im.mode)] = fmts.get((im.format, im.mode), 0) + 1
    formats = ', '.join(f"{n} {f} {m}" for (f, m), n in sorted(fmts.items()))
    cnt = counts(sample)
    table = '\n'.join(f"| {k} | {v} |" for k, v in cnt)
    n_other = len(sample) - N_COVID - N_NORMAL
    (out/'README.md').write_text(SAMPLE_README.format(
        n=len(sample), table=table, formats=formats, side=MAX_SIDE, q=JPEG_QUALITY, command=COMMAND.format(seed=a.seed),
        n_covid=N_COVID, n_normal=N_NORMAL, n_other=n_other))

    md = PKG/'metadata'
    md.mkdir(exist_ok=True)
    shutil.copyfile(src_csv, md/CSV)
    (md/'README.md').write_text(METADATA_README.format(n=len(meta)))

    total = sum(f.stat().st_size for f in out.rglob('*') if f.is_file())
    du = disk_usage(out)
    print(f"{len(sample)} rows from {a.src} (seed {a.seed}) -> {out.relative_to(ROOT)}")
    for k, v in cnt: print(f"  {v:3d}  {k}")
    print(f"  formats: {formats}")
    print(f"size: {total:,} bytes in files" + (f", du -sk {du} KiB" if du is not None else ''))
    print(f"copied {len(meta)}-row metadata -> {(md/CSV).relative_to(ROOT)}")
    if total > LIMIT_BYTES or (du is not None and du*1024 > LIMIT_BYTES):
        sys.exit(f"make_sample: the sample is over {LIMIT_BYTES:,} bytes")


if __name__ == '__main__': main()
