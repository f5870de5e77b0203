#!/usr/bin/env python
"""The training loader alone, without the model: fastai's per-item `TfmdDL` (0 and N loader processes) against `InMemoryDL`.

    python bench/bench_loader.py [--size 256] [--bs 64] [--oversample 16] [--epochs 4] [--rounds 3] [--workers 2]

What a GPU waits for between steps is the loader's side of training, and a CPU can measure it: each method makes
every training batch of an epoch, as uint8 tensors on the CPU, with the batch transforms (augmentation, normalisation:
the GPU's work when there is one) left out. The balanced selection's training rows are repeated `--oversample` times
(gpu_check.py's default setting), its images read from a warm DecodeCache, as `covid-fastai train` reads them after
`check_images`. Methods, taking turns in each round:

* **per item, 0 processes**: `TfmdDL` in the main process (the CPU's default before `InMemoryDL`);
* **per item, N processes**: `TfmdDL` with `--workers` loader processes (one per core was the GPU's default), which fastai
  starts again at every epoch;
* **in memory**: `InMemoryDL`, the default now where the images fit; its first epoch makes and keeps the items.

The first epoch of each run is shown apart; **s/epoch** is the median of the later ones, and **× in memory** is each
method's s/epoch over the in-memory one's in the same round (median of the rounds).
"""
from __future__ import annotations
import argparse, statistics, sys, tempfile, time
from types import SimpleNamespace
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import quiet, balanced, machine_info, print_block, md_table, fmt, wait_for_quiet, LoadMeter
from gpu_check import make_dls


def loader(rows, a, cache, in_memory:bool, workers:int):
    "gpu_check's training loader (the training rows repeated `a.oversample` times), on the CPU and without batch transforms."
    import torch
    from fastai.vision.all import Pipeline
    setting = SimpleNamespace(size=a.size, oversample=a.oversample, workers=workers)
    dl = make_dls(rows, setting, a.bs, cache, torch.device('cpu'), in_memory).train
    dl.after_batch = Pipeline([])   # the augmentation is the GPU's work
    return dl


def epochs(dl, n:int)->tuple[list[float], float, int]:
    "Seconds of each of `n` passes over `dl`, the other processes' load during them, and the images of a pass."
    secs, meter, images = [], LoadMeter().start(), 0
    for _ in range(n):
        t, images = time.perf_counter(), 0
        for xb, yb in dl: images += len(xb)
        secs.append(time.perf_counter() - t)
    return secs, meter.stop()[1], images


def main(argv=None):
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', help='dataset root (default: $COVID_FASTAI_DATA, then the usual places)')
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--oversample', type=int, default=16, help='times the training rows are repeated (default 16)')
    p.add_argument('--epochs', type=int, default=4, help='epochs per run, the first is shown apart (default 4)')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--workers', type=int, default=2, help='loader processes of the second method (default 2)')
    a = p.parse_args(argv)
    from covid_fastai.datablock import DecodeCache, check_images
    start = time.perf_counter()
    methods = {'per item, 0 processes': (False, 0), f'per item, {a.workers} processes': (False, a.workers), 'in memory': (True, 0)}
    rows = balanced(a.data)
    firsts, laters, loads = ({m: [] for m in methods} for _ in range(3))
    with tempfile.TemporaryDirectory(prefix='covid_bench_') as tmp:
        cache = DecodeCache(Path(tmp))
        rows = check_images(rows, size=a.size, cache=cache)   # warm, as after `covid-fastai train`'s check
        for r in range(a.rounds):
            for m, (in_memory, workers) in methods.items():
                wait_for_quiet(30)
                secs, load, images = epochs(loader(rows, a, cache, in_memory, workers), a.epochs)
                firsts[m].append(secs[0]); laters[m].append(statistics.median(secs[1:])); loads[m].append(load)
                print(f"round {r+1}, {m}: epochs {', '.join(f'{s:.3f}' for s in secs)} s ({images} images); "
                      f"other processes' load {load:.2f}", flush=True)
    print_block('Machine', machine_info())
    print(f"\n### The training loader alone: {images} images an epoch (the training rows x {a.oversample}), "
          f"{a.size} px, batch {a.bs}, images from a warm DecodeCache, no batch transforms; {a.rounds} rounds of {a.epochs} epochs\n")
    mem = laters['in memory']
    table = [[m, fmt(statistics.median(laters[m]), 3), f"{fmt(min(laters[m]), 3)}–{fmt(max(laters[m]), 3)}",
              f"{images / statistics.median(laters[m]):,.0f}", fmt(statistics.median(firsts[m]), 3),
              fmt(statistics.median(x / y for x, y in zip(laters[m], mem))), fmt(max(loads[m]))] for m in methods]
    print(md_table(['method', 's/epoch (median, later epochs)', 'min–max', 'images/s', 'first epoch s', '× in memory',
                    "others' load (max)"], table))
    for m in methods:
        if m != 'in memory': print(f"\n{m} ÷ in memory, round by round: {', '.join(fmt(x / y) for x, y in zip(laters[m], mem))}")
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == '__main__': main()
