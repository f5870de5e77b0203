#!/usr/bin/env python
"""covid_fastai's training on the CPU with 0 and with N loader processes, taking turns: does loading in the main process pay?

    python bench/bench_workers.py [--workers 2] [--rounds 3] [--epochs 3]    # about 9 min on 2 cores

Each round trains covid_fastai (ResNet50, 256 px, batch 8, images read from a warm DecodeCache by fastai's per-item
loader on both sides, so that the workers are the only difference: with no workers, `covid_dataloaders` would otherwise
keep the images in memory) once with 0 loader workers and once with N, and takes the ratio of their median timed epochs (the first
epoch of each run is warm-up). It prints each round's ratio and their median; above 1, the workers slow training down.
"""
from __future__ import annotations
import argparse, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import parse, make_dls, run_fastai
from _common import quiet, balanced, stats, wait_for_quiet, machine_info, print_block, md_table


def main(argv=None):
    "Run the rounds and print the ratios."
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', help='dataset root (default: $COVID_FASTAI_DATA, then the usual places)')
    p.add_argument('--workers', type=int, default=2, help='loader processes to compare with none (default 2)')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--epochs', type=int, default=3, help='epochs per run, the first is warm-up (default 3)')
    a = p.parse_args(argv)
    print_block('Settings', vars(a)); print_block('Machine', machine_info()); print()
    from fastai.torch_core import set_seed
    from covid_fastai.datablock import DecodeCache
    rows, secs = balanced(a.data), {0: [], a.workers: []}
    with tempfile.TemporaryDirectory(prefix='covid_bench_') as tmp:
        cache = DecodeCache(Path(tmp))
        for r in range(a.rounds):
            for w in secs:
                cfg = parse(['--workers', str(w), '--epochs', str(a.epochs)] + (['--data', a.data] if a.data else []))
                wait_for_quiet(30); set_seed(42 + r)
                epochs = run_fastai(make_dls(rows, cfg, cache, in_memory=False), cfg, [])
                secs[w].append(stats([e.seconds for e in epochs[1:]])['median'])
                print(f"round {r+1}, {w} workers: epochs " + ', '.join(f"{e.seconds:.1f}s" for e in epochs)
                      + "; other processes' load " + ', '.join(f"{e.load:.2f}" for e in epochs), flush=True)
    ratios = [b / z for z, b in zip(secs[0], secs[a.workers])]
    print('\n' + md_table(['round', '0 workers, s/epoch', f'{a.workers} workers, s/epoch', 'ratio'],
                          [[r+1, f'{z:.2f}', f'{b:.2f}', f'{x:.2f}'] for r, (z, b, x) in enumerate(zip(secs[0], secs[a.workers], ratios))]))
    print(f"\n{a.workers} workers ÷ 0 workers, s/epoch, pair by pair: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {stats(ratios)['median']:.2f}")


if __name__ == '__main__': main()
