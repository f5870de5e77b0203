#!/usr/bin/env python
"""Training speed on the same images: (a) the seed article's loop in plain PyTorch, (b) covid_fastai, (c) the bare ResNet50 floor.

    python bench/bench_train.py [--size 256] [--bs 8] [--epochs 2] [--repeats 2] [--workers N] [--big]

Each method trains `--repeats` times from scratch for `--epochs` epochs; the methods take turns (a, b, c, a, b, c...)
so that a slow spell of the machine does not fall on one method only. The first epoch of every run is warm-up and is
left out; the figure is the median of the other epochs. See bench/README.md for what each number means.
"""
from __future__ import annotations
import argparse, sys, tempfile, time
from typing import NamedTuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch, torchvision
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from covid_fastai.data import CLASSES
from _common import quiet, balanced, machine_info, print_block, stats, md_table, fmt, LoadMeter, wait_for_quiet


class Epoch(NamedTuple):
    "What one timed epoch measured."
    seconds: float   # wall time
    images: int      # images trained on
    load: float      # cores other processes kept busy meanwhile
    cpu: float       # CPU seconds of this benchmark's processes (main + loader workers)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
METHODS = {'a': 'plain PyTorch (seed loop)', 'b': 'covid_fastai (DecodeCache empty at the start of each run, images kept in memory)',
           'c': 'floor: model step on tensors in memory', 'd': 'covid_fastai per item, no cache (decodes every epoch)'}


# ---------------------------------------------------------------- (a) the seed article's loop, in plain PyTorch
class SeedDataset(Dataset):
    "The seed's Dataset: PIL opens each file and converts it to RGB, torchvision's transforms resize and augment."
    def __init__(self, paths, labels, size:int):
        self.paths, self.labels = list(paths), list(labels)
        self.tfms = T.Compose([T.Resize((size, size)), T.RandomHorizontalFlip(), T.RandomRotation(10),
                               T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    def __len__(self): return len(self.paths)
    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im: return self.tfms(im.convert('RGB')), self.labels[i]


def seed_model()->nn.Module:
    "torchvision's ResNet50 without pretrained weights, its `fc` replaced by a 2-class linear layer."
    m = torchvision.models.resnet50(weights=None)
    m.fc = nn.Linear(2048, 2)
    return m


def train_step(model, opt, x, y, clip:float=0.1):
    "One optimiser step: cross entropy on the logits, backward, clip each gradient element, step."
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    nn.utils.clip_grad_value_(model.parameters(), clip)
    opt.step()


def run_seed(rows, cfg)->list[Epoch]:
    "Train the seed model for `cfg.epochs` epochs, training only; an `Epoch` for each."
    labels = [CLASSES.index(t) for t in rows.target]
    dl = DataLoader(SeedDataset(rows.path, labels, cfg.size), batch_size=cfg.bs, shuffle=True,
                    num_workers=cfg.workers, drop_last=True)   # drop_last: the same batches as fastai's training loader
    model = seed_model()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=len(dl))
    out = []
    for _ in range(cfg.epochs):
        model.train()
        meter, n = LoadMeter().start(), 0
        for x, y in dl:
            train_step(model, opt, x, y)
            sched.step()
            n += len(y)
        secs, load, cpu = meter.stop()
        out.append(Epoch(secs, n, load, cpu))
    return out


# ---------------------------------------------------------------- (b) covid_fastai
def make_timer():
    "A fastai callback that times each epoch's training phase (before_train to after_train) and its whole epoch."
    from fastai.callback.core import Callback
    from fastai.torch_core import find_bs

    class TrainPhaseTimer(Callback):
        "An `Epoch` for each training phase (validation left out), and the seconds of each whole epoch."
        def before_fit(self): self.train, self.whole = [], []
        def before_epoch(self): self.t_epoch = time.perf_counter()
        def before_train(self): self.meter, self.n = LoadMeter().start(), 0
        def after_batch(self):
            if self.training: self.n += find_bs(self.yb)
        def after_train(self):
            secs, load, cpu = self.meter.stop()
            self.train.append(Epoch(secs, self.n, load, cpu))
        def after_epoch(self): self.whole.append(time.perf_counter() - self.t_epoch)
    return TrainPhaseTimer()


def make_dls(rows, cfg, cache=None, in_memory:bool|None=None):
    "covid_fastai's DataLoaders on `rows` on the CPU, through `cache` (a DecodeCache) if given, kept in memory by default where they fit."
    from covid_fastai.datablock import covid_dataloaders
    return covid_dataloaders(rows, bs=cfg.bs, size=cfg.size, num_workers=cfg.workers, device=torch.device('cpu'),
                             seed=cfg.seed, cache=cache, in_memory=in_memory)


def run_fastai(dls, cfg, valid_seconds:list)->list[Epoch]:
    "Train covid_learner (resnet50, random weights, body unfrozen) with fit_one_cycle; an `Epoch` for each training phase."
    from covid_fastai.learner import covid_learner
    timer = make_timer()
    learn = covid_learner(dls, arch='resnet50', pretrained=False, cbs=[timer])
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(cfg.epochs, cfg.lr)
    valid_seconds += [w - e.seconds for w, e in zip(timer.whole, timer.train)]
    return timer.train


# ---------------------------------------------------------------- (c) the floor
def premade_batches(dls)->list[tuple[torch.Tensor, torch.Tensor]]:
    "One epoch of covid_fastai's training batches, decoded and augmented once, kept in memory as plain tensors."
    return [(x.as_subclass(torch.Tensor).clone(), y.as_subclass(torch.Tensor).clone()) for x, y in dls.train]


def run_floor(dls, batches, cfg)->list[Epoch]:
    "Forward, backward and Adam step of covid_fastai's model on `batches`, nothing else; an `Epoch` for each pass."
    from covid_fastai.learner import covid_learner
    model = covid_learner(dls, arch='resnet50', pretrained=False).model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    out = []
    for _ in range(cfg.epochs):
        meter = LoadMeter().start()
        for x, y in batches: train_step(model, opt, x, y)
        secs, load, cpu = meter.stop()
        out.append(Epoch(secs, sum(len(y) for _, y in batches), load, cpu))
    return out


# ---------------------------------------------------------------- --big: radiograph-sized copies
def enlarge(src:str, dest_dir:Path, side:int)->str:
    "Save a copy of image `src` in `dest_dir` resized (bicubic) so that its long side is `side` pixels; its path."
    dest = dest_dir/Path(src).name
    with Image.open(src) as im:
        im.load()
        w, h = im.size
        big = im.resize((round(w*side/max(w, h)), round(h*side/max(w, h))), Image.BICUBIC)
        big.save(dest, quality=90) if dest.suffix.lower() in ('.jpg', '.jpeg') else big.save(dest)
    return str(dest)


def enlarge_rows(rows, dest_dir:Path, side:int, workers:int=2):
    "`rows` with `path` pointing at enlarged copies written into `dest_dir`."
    with ThreadPoolExecutor(workers) as pool:
        paths = list(pool.map(lambda p: enlarge(p, dest_dir, side), rows.path))
    return rows.assign(path=paths)


# ---------------------------------------------------------------- the benchmark
def setup(cfg, tmp:Path):
    "The balanced rows (enlarged with --big), covid_fastai's per-item DataLoaders on them (no cache, not kept: d), and the floor's pre-made batches."
    rows = balanced(cfg.data)
    if cfg.big:
        t0 = time.perf_counter()
        rows = enlarge_rows(rows, tmp, cfg.big_side)
        print(f"--big: wrote {len(rows)} copies with a {cfg.big_side} px long side to {tmp} in {time.perf_counter()-t0:.0f} s")
    dls = make_dls(rows, cfg, in_memory=False)
    return rows, dls, premade_batches(dls)


def run_all(cfg, rows, dls, batches, tmp:Path)->tuple[dict, list]:
    "Every method `cfg.repeats` times, taking turns; the `Epoch`s of each run, by method, and covid_fastai's validation seconds."
    from fastai.torch_core import set_seed
    from covid_fastai.datablock import DecodeCache
    train_rows = dls.train_ds.items   # (a) trains on exactly the rows of fastai's training split
    results, valid_seconds = {m: [] for m in cfg.methods}, []
    for r in range(cfg.repeats):
        for m in cfg.methods:
            if cfg.wait_idle: wait_for_quiet(cfg.wait_idle)
            set_seed(cfg.seed + r)
            t0 = time.perf_counter()
            if m == 'a': epochs = run_seed(train_rows, cfg)
            elif m == 'b': epochs = run_fastai(make_dls(rows, cfg, DecodeCache(tmp/f'cache_{r}'), in_memory=True), cfg, valid_seconds)
            elif m == 'd': epochs = run_fastai(dls, cfg, [])
            else: epochs = run_floor(dls, batches, cfg)
            results[m].append(epochs)
            print(f"run {r+1}/{cfg.repeats} {m}) {METHODS[m]}: epochs " + ', '.join(f"{e.seconds:.1f}s" for e in epochs)
                  + ", CPU " + ', '.join(f"{e.cpu:.1f}s" for e in epochs)
                  + "; other processes' load " + ', '.join(f"{e.load:.2f}" for e in epochs)
                  + f" cores (run total {time.perf_counter()-t0:.0f} s)", flush=True)
    return results, valid_seconds


def summarise(results:dict)->dict:
    "Per method: statistics of the timed epochs (warm-up left out), warm-up seconds, images per epoch, images/s, others' load."
    out = {}
    for m, runs in results.items():
        timed = [e for run in runs for e in run[1:]]
        st = stats([e.seconds for e in timed])
        images = timed[0].images
        out[m] = {**st, 'warmup': stats([run[0].seconds for run in runs])['median'], 'images': images,
                  'ips': images / st['median'], 'load': max(e.load for e in timed),
                  'cpu': stats([e.cpu for e in timed])['median']}
    return out


def pair_ratios(results:dict, x:str, y:str)->list[float]:
    "For each round r: the median timed epoch of method x's run r over method y's run r (the two ran side by side)."
    med = lambda run: stats([e.seconds for e in run[1:]])['median']
    return [med(rx) / med(ry) for rx, ry in zip(results[x], results[y])]


def ratio_line(results:dict, x:str, y:str, what:str)->str:
    "'x/y (what): median of the pair ratios, each pair's ratio'."
    rs = pair_ratios(results, x, y)
    return f"{x}/{y} ({what}, s/epoch): {stats(rs)['median']:.2f}  (pair by pair: {', '.join(f'{r:.2f}' for r in rs)})"


def settings(cfg, n_rows:int)->dict:
    "The settings to print beside the figures."
    return {'images (balanced selection)': n_rows,
            'image source': f"copies enlarged to a {cfg.big_side} px long side (--big)" if cfg.big else 'shared copy (long side <= 1024 px)',
            'size': cfg.size, 'batch size': cfg.bs, 'num_workers': cfg.workers, 'torch threads': torch.get_num_threads(),
            'epochs per run': cfg.epochs, 'runs per method': cfg.repeats, 'timed epochs per method': (cfg.epochs - 1) * cfg.repeats,
            'peak lr': cfg.lr, 'waited for a quiet machine': f"up to {cfg.wait_idle} s before each run" if cfg.wait_idle else 'no'}


def report(cfg, results:dict, valid_seconds:list, n_rows:int, info:dict):
    "Print settings, machine, and the Markdown table with the ratios."
    summary = summarise(results)
    print_block('Settings', settings(cfg, n_rows))
    print_block('Machine', info)
    if valid_seconds:
        print(f"\ncovid_fastai validation per epoch (left out of its figure): median {stats(valid_seconds)['median']:.1f} s")
    floor = summary.get('c')
    rows = [[f"{m}) {METHODS[m]}", fmt(s['median']), f"{fmt(s['min'])}–{fmt(s['max'])}", s['n'], fmt(s['warmup']),
             s['images'], fmt(s['ips']), fmt(s['median'] / floor['median']) if floor else 'n/a', fmt(s['cpu'], 1),
             fmt(s['load'])]
            for m, s in summary.items()]
    print(f"\n### Training speed: ResNet50, {cfg.size} px, batch {cfg.bs}, {cfg.workers} loader workers"
          f"{', ' + str(cfg.big_side) + ' px source images' if cfg.big else ''}\n\n"
          f"{info['cpu']}, {info['usable cores']} cores, torch {info['torch']} with {torch.get_num_threads()} threads; "
          f"median of {(cfg.epochs - 1) * cfg.repeats} training epochs per method after a warm-up epoch per run\n")
    print(md_table(['method', 's/epoch (median)', 'min–max', 'timed epochs', 'warm-up epoch s', 'images/epoch',
                    'images/s', '× floor', 'CPU s/epoch (median)', "others' load (cores, max)"], rows))
    print()
    if 'a' in summary and 'b' in summary: print(ratio_line(results, 'b', 'a', 'covid_fastai ÷ plain PyTorch'))
    if 'b' in summary and floor: print(ratio_line(results, 'b', 'c', 'covid_fastai ÷ floor'))
    if 'd' in summary and floor: print(ratio_line(results, 'd', 'c', 'covid_fastai per item, no cache ÷ floor'))
    if 'b' in summary and 'd' in summary:
        b, d = summary['b'], summary['d']
        print(f"decode cache and memory: first epoch {b['warmup']:.1f} s with them (filling them) vs {d['warmup']:.1f} s decoding; "
              f"later epochs {b['median']:.1f} s vs {d['median']:.1f} s (without ÷ with: {d['median'] / b['median']:.2f})")
    if 'a' in summary and 'b' in summary:
        print(f"b/a in CPU seconds: {summary['b']['cpu'] / summary['a']['cpu']:.2f}"
              + (f"; b/c in CPU seconds: {summary['b']['cpu'] / floor['cpu']:.2f}" if floor else ''))
    busy = max(s['load'] for s in summary.values())
    if busy > 0.2: print(f"\nWARNING: other processes kept up to {busy:.1f} cores busy during timed epochs, so the wall times "
                         "are slowed by them and not comparable; rerun on a quiet machine. With --threads 1 the CPU seconds "
                         "still compare the work each method does.")


def parse(argv=None):
    "The command-line settings."
    from covid_fastai.datablock import default_workers
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', help='dataset root (default: $COVID_FASTAI_DATA, then the usual places)')
    p.add_argument('--size', type=int, default=256, help='image side (default 256)')
    p.add_argument('--bs', type=int, default=8, help='batch size (default 8)')
    p.add_argument('--epochs', type=int, default=2, help='epochs per run, the first one is warm-up (default 2)')
    p.add_argument('--repeats', type=int, default=2, help='runs per method (default 2)')
    p.add_argument('--workers', type=int, default=default_workers(torch.device('cpu')),
                   help="DataLoader processes of a), b) and d) (default: covid_fastai's default on the CPU, 0)")
    p.add_argument('--threads', type=int, default=None, help="torch intra-op threads (default torch's: one per core)")
    p.add_argument('--lr', type=float, default=1e-2, help='peak learning rate (default 1e-2)')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--big', action='store_true', help='train on copies enlarged to radiograph size (see --big-side)')
    p.add_argument('--big-side', type=int, default=2500, help='long side of the --big copies in pixels (default 2500)')
    p.add_argument('--methods', default='abcd', help='which of a (plain PyTorch), b (covid_fastai), c (floor), d (covid_fastai '
                   'per item, without the decode cache or memory) to run (default abcd)')
    p.add_argument('--wait-idle', type=float, default=30, help='before each run, wait up to this many seconds for other '
                   'processes to use under 0.2 cores (default 30; 0: do not wait)')
    cfg = p.parse_args(argv)
    if cfg.epochs < 2: p.error('--epochs must be at least 2: the first epoch of each run is warm-up and is not timed')
    cfg.methods = [m for m in 'abcd' if m in cfg.methods]
    return cfg


def main(argv=None):
    "Run the benchmark and print its tables."
    quiet()
    cfg = parse(argv)
    if cfg.threads: torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='covid_bench_') as tmp:
        rows, dls, batches = setup(cfg, Path(tmp))
        n_rows = len(dls.train_ds) + len(dls.valid_ds)
        print(f"{len(dls.train_ds)} training rows, {len(batches)} batches of {cfg.bs} per epoch; "
              f"{len(dls.valid_ds)} validation rows (used by covid_fastai only, not timed)", flush=True)
        results, valid_seconds = run_all(cfg, rows, dls, batches, Path(tmp))
    report(cfg, results, valid_seconds, n_rows, machine_info())
    print(f"\nTotal wall time: {time.perf_counter()-start:.0f} s")


if __name__ == '__main__': main()
