#!/usr/bin/env python
"""Prediction speed and latency, training memory, and metadata handling time of covid_fastai on the CPU.

    python bench/bench_infer.py [--size 256] [--bs 32] [--repeats 3] [--cold 3] [--mem-bs 8 32] [--scales 1 10 100]

1. `CovidClassifier.predict` on a folder of the ~110 balanced-selection images vs the forward-only floor
   (the same model on tensors made beforehand, under torch.inference_mode).
2. Latency of one image: from a cold process (`covid-fastai predict --model DIR IMAGE`) and from a loaded model.
3. Peak memory (VmHWM) of a few training steps at each batch size, each in its own process.
4. read_metadata + metadata_summary + select_balanced on the CSV and on copies of it 10x and 100x as long.
The model is an untrained ResNet50 saved with `save_model`: its weights do not change any of these timings.
"""
from __future__ import annotations
import argparse, csv, json, os, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (quiet, balanced, machine_info, print_block, stats, md_table, fmt, covid_fastai_cli,
                     LoadMeter, wait_for_quiet)

CPU = torch.device('cpu')


def timed(fn, repeats:int)->tuple[list[float], float]:
    "Run `fn` `repeats` times; the seconds of each run and the most cores other processes used during one."
    secs, loads = [], []
    for _ in range(repeats):
        meter = LoadMeter().start()
        fn()
        s, load, _ = meter.stop()
        secs.append(s); loads.append(load)
    return secs, max(loads)


# ---------------------------------------------------------------- the model and the images
def make_model(rows, size:int, dest:Path)->Path:
    "Save an untrained covid_learner ResNet50 to `dest` with save_model; the folder."
    from covid_fastai.datablock import covid_dataloaders
    from covid_fastai.learner import covid_learner
    from covid_fastai.inference import save_model
    dls = covid_dataloaders(rows, bs=8, size=size, num_workers=0, device=CPU)
    save_model(covid_learner(dls, arch='resnet50', pretrained=False), dest, size)
    return dest


def copy_images(rows, dest:Path)->list[Path]:
    "Copy the rows' images into the folder `dest` (as a user's folder of images); the copies, sorted."
    dest.mkdir(parents=True, exist_ok=True)
    for p in rows.path: shutil.copy(p, dest/Path(p).name)
    return sorted(dest.iterdir())


# ---------------------------------------------------------------- 1. throughput
def predict_throughput(clf, files, bs:int, repeats:int)->dict:
    "Seconds of `clf.predict` on all `files` (after one warm-up call) and of its parts: decoding and the forward floor."
    clf.predict(files[:bs], bs=bs)   # warm-up
    t0 = time.perf_counter()
    xs = [clf.prepare(f) for f in files]   # decode and resize: one thread
    prep = time.perf_counter() - t0
    batches = [clf.normalise(torch.stack(xs[i:i+bs])) for i in range(0, len(xs), bs)]
    def forward():
        with torch.inference_mode():
            for b in batches: clf.model(b)
    forward()   # warm-up
    pred, floor, loads = [], [], []
    for _ in range(repeats):   # taking turns, so that a slow spell of the machine falls on both
        for fn, secs in ((lambda: clf.predict(files, bs=bs), pred), (forward, floor)):
            s, load = timed(fn, 1)
            secs += s; loads.append(load)
    return {'n': len(files), 'predict': stats(pred), 'floor': stats(floor), 'prepare_one_thread': prep,
            'pair_ratios': [p / f for p, f in zip(pred, floor)], 'load': max(loads)}


# ---------------------------------------------------------------- 2. latency
def child_env()->dict:
    "The environment for child processes: this one, with OMP_NUM_THREADS set to this process's torch threads."
    return {**os.environ, 'OMP_NUM_THREADS': str(torch.get_num_threads())}


def warm_latency(clf, file, repeats:int)->dict:
    "Seconds of `clf.predict([file])` with the model loaded, and of the bare forward pass on one image."
    clf.predict([file])   # warm-up
    one, load = timed(lambda: clf.predict([file]), repeats)
    x = clf.normalise(clf.prepare(file)[None])
    def forward():
        with torch.inference_mode(): clf.model(x)
    forward()
    fwd, load2 = timed(forward, repeats)
    return {'predict': stats(one), 'forward': stats(fwd), 'load': max(load, load2)}


def cold_latency(model_dir:Path, file:Path, repeats:int)->dict:
    "Wall seconds of `covid-fastai predict --cpu --model DIR IMAGE` in a new process, and of importing the library alone."
    cmd = [covid_fastai_cli(), 'predict', '--cpu', '--no-cache', '--model', str(model_dir), str(file)]   # the user's decode cache keeps nothing of a temporary file
    imp = [sys.executable, '-c', 'import covid_fastai.inference']
    def run(c):
        r = subprocess.run(c, capture_output=True, text=True, env=child_env())
        if r.returncode: raise RuntimeError(f"{' '.join(c)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    run(imp)   # warm the page cache, as a user's second call would find it
    cold, load = timed(lambda: run(cmd), repeats)
    just_import, load2 = timed(lambda: run(imp), repeats)
    return {'cli': stats(cold), 'import': stats(just_import), 'load': max(load, load2)}


# ---------------------------------------------------------------- 3. training memory, one process per batch size
def peak_rss_mib()->float:
    """This process's peak resident set size in MiB: VmHWM from /proc/self/status.
    Not ru_maxrss: Linux carries the parent's peak over into a child's ru_maxrss across fork and exec,
    so a child of a big process would report the parent's peak. ru_maxrss is the fallback where /proc is missing."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024
    except OSError: pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def mem_child(cfg):
    "In a fresh process: train `cfg.steps` batches of size `cfg.mem_child` on the CPU and print the peaks as JSON."
    from fastai.callback.core import Callback, CancelFitException
    from covid_fastai.datablock import covid_dataloaders
    from covid_fastai.learner import covid_learner
    after_import = peak_rss_mib()
    class StopAfter(Callback):
        "Stop the fit after `n` training batches."
        def __init__(self, n): self.n = n
        def after_batch(self):
            if self.training and self.iter + 1 >= self.n: raise CancelFitException()
    dls = covid_dataloaders(balanced(cfg.data), bs=cfg.mem_child, size=cfg.size, num_workers=cfg.workers, device=CPU)
    learn = covid_learner(dls, arch='resnet50', pretrained=False, cbs=[StopAfter(cfg.steps)])
    learn.unfreeze()
    before = peak_rss_mib()
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-2)
    print(json.dumps({'bs': cfg.mem_child, 'steps': cfg.steps, 'after_import': after_import, 'before_fit': before,
                      'peak': peak_rss_mib(),
                      'seconds': time.perf_counter() - t0}))


def training_memory(cfg)->list[dict]:
    "Run `mem_child` in a new process for each of `cfg.mem_bs`; their reports."
    out = []
    for bs in cfg.mem_bs:
        cmd = [sys.executable, __file__, '--mem-child', str(bs), '--steps', str(cfg.steps), '--size', str(cfg.size),
               '--workers', str(cfg.workers)] + (['--data', cfg.data] if cfg.data else [])
        r = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
        if r.returncode: raise RuntimeError(f"memory run at batch {bs} failed: {r.stderr.strip()[-800:]}")
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"memory run, batch {bs}: peak {out[-1]['peak']:.0f} MiB", flush=True)
    return out


# ---------------------------------------------------------------- 4. metadata
def replicate_csv(src:Path, dest:Path, times:int)->Path:
    "Write `src` `times` times over into `dest`, copies k>0 with file names prefixed 'copyK_' and a fresh index."
    with open(src, newline='') as f: header, *rows = list(csv.reader(f))
    name = header.index('X_ray_image_name')
    with open(dest, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(header)
        for k in range(times):
            for i, r in enumerate(rows):
                r = list(r)
                r[0] = str(k*len(rows) + i)
                if k: r[name] = f"copy{k}_{r[name]}"
                w.writerow(r)
    return dest


def metadata_timing(root:Path, scales:list[int], repeats:int, tmp:Path)->list[dict]:
    "Median seconds of read_metadata, metadata_summary and select_balanced on the CSV copied `scale` times over."
    from covid_fastai.data import read_metadata, metadata_summary, select_balanced, images_dir, METADATA_CSV
    folder, out = images_dir(root), []
    for k in scales:
        src = root/METADATA_CSV if k == 1 else replicate_csv(root/METADATA_CSV, tmp/f'metadata_x{k}.csv', k)
        parts = {'read': [], 'summary': [], 'select': []}
        for _ in range(repeats):
            t0 = time.perf_counter(); df = read_metadata(src)
            t1 = time.perf_counter(); metadata_summary(df)
            t2 = time.perf_counter(); sel = select_balanced(df, folder)
            t3 = time.perf_counter()
            for key, s in zip(parts, (t1-t0, t2-t1, t3-t2)): parts[key].append(s)
        out.append({'scale': k, 'rows': len(df), 'selected': len(sel), **{key: stats(v)['median'] for key, v in parts.items()}})
        print(f"metadata x{k}: {len(df)} rows, {sum(out[-1][p] for p in parts):.2f} s", flush=True)
    return out


# ---------------------------------------------------------------- report
def report(cfg, thr:dict, warm:dict, cold:dict, mem:list, meta:list, info:dict):
    "Print settings, machine and the four Markdown tables."
    print_block('Settings', {'images': thr['n'], 'size': cfg.size, 'batch size (predict)': cfg.bs,
                             'repeats (median)': cfg.repeats, 'cold starts': cfg.cold, 'memory: batch sizes': cfg.mem_bs,
                             'memory: training steps': cfg.steps, 'memory: num_workers': cfg.workers,
                             'torch threads': torch.get_num_threads()})
    print_block('Machine', info)
    p, f = thr['predict']['median'], thr['floor']['median']
    print(f"\n### Prediction throughput: ResNet50, {cfg.size} px, batch {cfg.bs}, {thr['n']} images, CPU "
          f"({info['cpu']}, {info['usable cores']} cores, torch {info['torch']}, {torch.get_num_threads()} threads)\n")
    print(md_table(['what', 's (median)', 'min–max', 'images/s'], [
        ['CovidClassifier.predict (decode in 4 threads + forward)', fmt(p), f"{fmt(thr['predict']['min'])}–{fmt(thr['predict']['max'])}", fmt(thr['n']/p, 1)],
        ['floor: forward only on tensors made beforehand (inference_mode)', fmt(f), f"{fmt(thr['floor']['min'])}–{fmt(thr['floor']['max'])}", fmt(thr['n']/f, 1)],
        ['decode + resize alone (prepare, one thread)', fmt(thr['prepare_one_thread']), '', fmt(thr['n']/thr['prepare_one_thread'], 1)]]))
    print(f"\npredict ÷ floor: {stats(thr['pair_ratios'])['median']:.2f} (median of the pairs, each predict call timed "
          f"beside a floor pass: {', '.join(f'{r:.2f}' for r in thr['pair_ratios'])})")
    print("\n### Latency of one image\n")
    print(md_table(['what', 's (median)', 'min–max', 'runs'], [
        ['cold: `covid-fastai predict --cpu --model DIR IMAGE` (new process)', fmt(cold['cli']['median']), f"{fmt(cold['cli']['min'])}–{fmt(cold['cli']['max'])}", cold['cli']['n']],
        ['of which: `python -c "import covid_fastai.inference"`', fmt(cold['import']['median']), f"{fmt(cold['import']['min'])}–{fmt(cold['import']['max'])}", cold['import']['n']],
        ['warm: `clf.predict([image])`, model loaded', fmt(warm['predict']['median'], 3), f"{fmt(warm['predict']['min'], 3)}–{fmt(warm['predict']['max'], 3)}", warm['predict']['n']],
        ['floor: forward of one prepared image', fmt(warm['forward']['median'], 3), f"{fmt(warm['forward']['min'], 3)}–{fmt(warm['forward']['max'], 3)}", warm['forward']['n']]]))
    if mem:
        print(f"\n### Peak memory of CPU training (peak RSS = VmHWM, MiB; {mem[0]['steps']} training steps, {cfg.size} px, "
              f"{cfg.workers} loader workers{' (not counted)' if cfg.workers else ''}; a new process per batch size)\n")
        print(md_table(['batch', 'peak after imports', 'peak before fit (data + model)', 'peak during training', 'training adds', 'fit s'],
                       [[m['bs'], f"{m['after_import']:.0f}", f"{m['before_fit']:.0f}", f"{m['peak']:.0f}",
                         f"{m['peak'] - m['before_fit']:.0f}", fmt(m['seconds'], 1)] for m in mem]))
    if meta:
        print("\n### Metadata: read_metadata + metadata_summary + select_balanced (s, median)\n")
        print(md_table(['CSV', 'rows', 'read_metadata', 'metadata_summary', 'select_balanced', 'total', 'rows selected'],
                       [[f"x{m['scale']}", m['rows'], fmt(m['read'], 3), fmt(m['summary'], 3), fmt(m['select'], 3),
                         fmt(m['read'] + m['summary'] + m['select'], 3), m['selected']] for m in meta]))
    busy = max(thr['load'], warm['load'], cold['load'])
    if busy > 0.2: print(f"\nWARNING: other processes kept up to {busy:.1f} cores busy during the timings; "
                         "these figures are slowed by that. Rerun on a quiet machine.")


def parse(argv=None):
    "The command-line settings."
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', help='dataset root (default: $COVID_FASTAI_DATA, then the usual places)')
    p.add_argument('--size', type=int, default=256, help='image side (default 256)')
    p.add_argument('--bs', type=int, default=32, help='batch size of predict (default 32)')
    p.add_argument('--repeats', type=int, default=3, help='timed repeats of throughput and warm latency, median (default 3)')
    p.add_argument('--latency-repeats', type=int, default=10, help='timed repeats of the warm one-image latency (default 10)')
    p.add_argument('--cold', type=int, default=3, help='cold-process runs of covid-fastai predict (default 3)')
    p.add_argument('--mem-bs', type=int, nargs='*', default=[8, 32], help='batch sizes of the memory runs (default 8 32; none: skip)')
    p.add_argument('--steps', type=int, default=3, help='training steps per memory run (default 3)')
    p.add_argument('--workers', type=int, default=0, help='DataLoader processes in the memory runs (default 0: all in one process)')
    p.add_argument('--scales', type=int, nargs='*', default=[1, 10, 100], help='CSV copies for the metadata timing (default 1 10 100)')
    p.add_argument('--meta-repeats', type=int, default=3, help='repeats of the metadata timing, median (default 3)')
    p.add_argument('--wait-idle', type=float, default=30, help='wait up to this many seconds for other processes to go quiet first (default 30; 0: do not wait)')
    p.add_argument('--threads', type=int, default=None, help="torch intra-op threads, here and in the child processes (default torch's: one per core)")
    p.add_argument('--mem-child', type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    "Run the prediction, memory and metadata benchmarks and print their tables."
    quiet()
    cfg = parse(argv)
    if cfg.threads: torch.set_num_threads(cfg.threads)
    if cfg.mem_child: return mem_child(cfg)
    from covid_fastai.data import find_data_root
    from covid_fastai.inference import load_model
    start = time.perf_counter()
    rows = balanced(cfg.data)
    with tempfile.TemporaryDirectory(prefix='covid_bench_') as tmp:
        tmp = Path(tmp)
        files = copy_images(rows, tmp/'images')
        model_dir = make_model(rows, cfg.size, tmp/'model')
        clf = load_model(model_dir, device=CPU)
        if cfg.wait_idle: wait_for_quiet(cfg.wait_idle)
        thr = predict_throughput(clf, files, cfg.bs, cfg.repeats)
        print(f"predict: {thr['n']/thr['predict']['median']:.1f} images/s", flush=True)
        warm = warm_latency(clf, files[0], cfg.latency_repeats)
        cold = cold_latency(model_dir, files[0], cfg.cold)
        print(f"cold start: {cold['cli']['median']:.1f} s", flush=True)
        mem = training_memory(cfg)
        meta = metadata_timing(find_data_root(cfg.data), cfg.scales, cfg.meta_repeats, tmp)
    report(cfg, thr, warm, cold, mem, meta, machine_info())
    print(f"\nTotal wall time: {time.perf_counter()-start:.0f} s")


if __name__ == '__main__': main()
