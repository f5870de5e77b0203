#!/usr/bin/env python
"""Decoding alone: what prediction from image files and a first epoch pay per image before the network sees it.

    python bench/bench_decode.py [--size 256] [--rounds 5] [--workers 2]

On a GPU, prediction from JPEG files is bound by this (bench/README, issue 11), so it is measured where a CPU can
measure it. Each method turns every image of the balanced selection into the `size` x `size` grey RGB image that
`CovidClassifier.prepare` returns; methods take turns in each round, and **× now** is a method's seconds over
`load_xray`'s (median of the rounds' ratios).

* **RGB first**: the decoding of the library before this benchmark: each image made RGB, then resized and checked
  (kept here as the baseline, `rgb_first`);
* **grey first**: `load_xray` now: resized and checked in grey, the three channels made last;
* **cache, RGB entries / grey entries**: `DecodeCache.load` reading entries of each kind back;
* **prepare from the cache, through a PILImage (before) / as an array**: `CovidClassifier.prepare` reading the grey
  entries back, the way it did (`OpenXRay`'s RGB `PILImage`, made a (3, size, size) tensor) and the way it does now
  (`DecodeCache.array` made a (1, size, size) tensor, the channels left to `normalise`): what `predict` pays per image
  from a warm cache, where the GPU waited at 757 images/s against the model's 9,005 (bench/README);
* **N threads / N processes**: `load_xray` on `--workers` threads (prediction's way) and in as many processes.
  Threads that scale less than processes are waiting for the interpreter's lock: `predict` can then gain from more
  cores only through processes.
"""
from __future__ import annotations
import argparse, statistics, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor, ProcessPoolExecutor
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import quiet, balanced, machine_info, print_block, md_table, fmt, wait_for_quiet


def rgb_first(fn, size:int):
    "The library's decoding before it greyed first: RGB, then resized and checked (the same pixels, more work)."
    import numpy as np
    from PIL import Image, ImageOps
    from covid_fastai.datablock import to_rgb, check_shape, check_spread
    with Image.open(fn) as im:
        check_shape(fn, *im.size)
        im.draft(None, (size, size))
        im.load()
        im = to_rgb(ImageOps.exif_transpose(im))
    im = im.resize((size, size), Image.BILINEAR)
    check_spread(fn, np.asarray(im)[..., 0].std())
    return im


def _decode(args):
    from covid_fastai.datablock import load_xray
    fn, size = args
    return load_xray(fn, size)   # back to the parent, as threads hand theirs: the transfer is part of the processes' cost


def methods(files, size:int, workers:int, tmp:Path)->dict:
    "Name -> a function that decodes all `files` once."
    import numpy as np
    from PIL import Image
    from covid_fastai.datablock import load_xray, DecodeCache
    import torch
    from covid_fastai.datablock import OpenXRay
    from covid_fastai.inference import CovidClassifier
    rgb_cache, grey_cache = DecodeCache(tmp/'rgb'), DecodeCache(tmp/'grey')
    meta = dict(size=size, threshold=0.5, classes=['Normal', 'COVID-19'], mean=[0.5]*3, std=[0.25]*3, arch='none')
    clf, via_pil = CovidClassifier(torch.nn.Identity(), meta, torch.device('cpu'), grey_cache), OpenXRay(size, grey_cache)
    def prepare_before(f): return torch.from_numpy(np.asarray(via_pil(f), dtype=np.uint8).copy()).permute(2, 0, 1)
    for f in files:   # fill both caches: grey entries as `DecodeCache` writes them, RGB ones as it wrote them before
        grey_cache.load(f, size)
        e = rgb_cache.entry(f, size); e.parent.mkdir(parents=True, exist_ok=True)
        np.save(e, np.asarray(load_xray(f, size)))
    threads, procs = ThreadPoolExecutor(workers), ProcessPoolExecutor(workers)
    list(procs.map(_decode, [(files[0], size)] * workers))   # start the processes before timing
    return {'RGB first (before)': lambda: [rgb_first(f, size) for f in files],
            'grey first (load_xray)': lambda: [load_xray(f, size) for f in files],
            'cache, RGB entries (before)': lambda: [Image.fromarray(np.load(rgb_cache.entry(f, size))) for f in files],   # as it read them
            'cache, grey entries': lambda: [grey_cache.load(f, size) for f in files],
            'prepare from the cache, through a PILImage (before)': lambda: [prepare_before(f) for f in files],
            'prepare from the cache, as an array': lambda: [clf.prepare(f) for f in files],
            f'load_xray, {workers} threads': lambda: list(threads.map(lambda f: load_xray(f, size), files)),
            f'load_xray, {workers} processes': lambda: list(procs.map(_decode, [(f, size) for f in files], chunksize=8))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--workers', type=int, default=2, help='threads and processes (default: 2, the cores here)')
    p.add_argument('--data', default=None)
    a = p.parse_args()
    quiet()
    import numpy as np
    from covid_fastai.datablock import load_xray
    files = list(balanced(a.data).path)
    print_block('machine', machine_info())
    print(f"\n{len(files)} images of the balanced selection, decoded to {a.size} px; others' load before: "
          f"{wait_for_quiet(60):.2f} cores")
    bad = sum(not np.array_equal(np.asarray(rgb_first(f, a.size)), np.asarray(load_xray(f, a.size))) for f in files)
    print(f"grey first and RGB first give the same pixels: {len(files) - bad} of {len(files)} images")
    with tempfile.TemporaryDirectory() as d:
        ms = methods(files, a.size, a.workers, Path(d))
        secs = {k: [] for k in ms}
        for r in range(a.rounds):
            for k, fn in ms.items():
                t = time.perf_counter(); fn(); secs[k].append(time.perf_counter() - t)
    now = secs['grey first (load_xray)']
    rows = [[k, fmt(statistics.median(s)), f"{fmt(min(s))}–{fmt(max(s))}", f"{len(files) / statistics.median(s):.0f}",
             fmt(statistics.median([x / y for x, y in zip(s, now)]))] for k, s in secs.items()]
    print('\n' + md_table(['method', 's/pass (median)', 'min–max', 'images/s', '× now'], rows))
    one = statistics.median(now)
    for k in (f'load_xray, {a.workers} threads', f'load_xray, {a.workers} processes'):
        print(f"{k}: {one / statistics.median(secs[k]):.2f}x one thread")


if __name__ == '__main__': main()
