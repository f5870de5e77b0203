#!/usr/bin/env python
"""GPU check (issue 4): training and prediction speed of covid_fastai on CUDA, and CUDA vs CPU agreement.

    python bench/gpu_check.py [--data ROOT] [--out results.json]      # on a CUDA machine, ~3-5 min on an H100
    python bench/gpu_check.py --allow-cpu                             # tiny smoke run of the same code on the CPU
    python bench/gpu_check.py --export-subset DIR                     # copy just the images it needs, then --data DIR

1. The device: name, memory, torch / CUDA / cuDNN versions and settings.
2. Training throughput of `covid_learner` (ResNet50, random weights) on the balanced selection at 256 px, batch 8 and
   64, in fp32, mixed precision (covid_learner's own `to_fp16`), and mixed precision + channels_last. Each run trains
   `--epochs` epochs with `fit_one_cycle` after `unfreeze`; the first epoch is warm-up and left out, the figure is the
   median of the others. Timed: the training phase of each epoch (a callback reads the clock, after
   `torch.cuda.synchronize`, at before_train and after_train), so validation is left out; the whole epoch is shown too.
   The balanced selection has only 98 training images, 1 batch of 64 (the last incomplete batch is dropped): the
   training rows are therefore repeated `--oversample` times (8: 784 images, 98 batches of 8 or 12 of 64). The
   validation rows (12) are covid_dataloaders' own stratified split, not repeated.
   Then, per batch size in fp32 and amp, where a training step's time goes (waiting for the batch, forward, backward,
   optimizer step), from a second epoch with the GPU synchronised at every boundary.
3. Prediction throughput of a model saved with `save_model` and read back with `load_model` on CUDA: the library's
   `predict` (autocast fp16 on CUDA) against the same with autocast off (fp32), at batch 8 and 64, decoding every
   image (what a user gets) and reading them from a warm DecodeCache (what is left when decoding is free), and the
   floor: the model alone on tensors already on the GPU.
4. Agreement: the same saved model on `--agree-n` images (the validation images first) on CUDA and on the CPU; exit
   status 1 if prob_covid differs by more than 1e-2 anywhere or a label differs.
5. A Markdown summary of every figure; `--out` also writes them as JSON.

Without CUDA the script stops at once with exit status 2, unless `--allow-cpu` is given: then it runs the same steps
tiny (ResNet18, size 64, 2 epochs, no oversampling, no loader workers, few images) to check the script itself; its
figures mean nothing.
"""
from __future__ import annotations
import argparse, contextlib, io, json, os, platform, shutil, statistics, sys, tempfile, time, types, warnings
from pathlib import Path

import torch

SEED = 42
THRESH = 1e-2   # largest allowed |prob_covid(CUDA) - prob_covid(CPU)|
CPU = torch.device('cpu')
T0 = time.perf_counter()


# ---------------------------------------------------------------- settings
def parse_args(argv=None)->argparse.Namespace:
    "The command line, with the smoke defaults filled in on the CPU."
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', help='dataset root (default: $COVID_FASTAI_DATA, then the usual places)')
    p.add_argument('--out', help='write all figures to this JSON file')
    p.add_argument('--allow-cpu', action='store_true', help='without CUDA, run a tiny smoke version on the CPU')
    p.add_argument('--export-subset', metavar='DIR', help='copy the metadata and the balanced images into DIR and stop')
    p.add_argument('--arch', help='backbone (default resnet50; resnet18 on the CPU)')
    p.add_argument('--size', type=int, help='image side (default 256; 64 on the CPU)')
    p.add_argument('--bs', type=int, nargs='+', default=[8, 64], help='batch sizes (default 8 64)')
    p.add_argument('--epochs', type=int, help='epochs per training run, the first is warm-up (default 4; 2 on the CPU)')
    p.add_argument('--oversample', type=int, help='times the training rows are repeated (default 8; 1 on the CPU)')
    p.add_argument('--workers', type=int, help="DataLoader workers (default: covid_dataloaders' own, default_workers: one per core up to 16 on CUDA; "
                                               "0 on the CPU)")
    p.add_argument('--infer-files', type=int, help='files per predict call, the images cycled (default 512; 24 on the CPU)')
    p.add_argument('--repeats', type=int, help='timed predict calls per figure (default 3; 1 on the CPU)')
    p.add_argument('--floor-iters', type=int, help='timed forward passes per floor figure (default 30; 2 on the CPU)')
    p.add_argument('--agree-n', type=int, default=20, help='images in the CUDA vs CPU agreement check (default 20)')
    a = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    smoke = [('arch', 'resnet50', 'resnet18'), ('workers', None, 0), ('size', 256, 64), ('epochs', 4, 2),
             ('oversample', 8, 1), ('infer_files', 512, 24), ('repeats', 3, 1), ('floor_iters', 30, 2)]
    for k, on_gpu, on_cpu in smoke:
        if getattr(a, k) is None: setattr(a, k, on_gpu if gpu else on_cpu)
    if a.epochs < 2: p.error('--epochs must be at least 2: the first one is warm-up')
    return a


def pick_device(a)->torch.device:
    "CUDA, or the CPU with --allow-cpu; otherwise stop with exit status 2 and say why."
    if torch.cuda.is_available(): return torch.device('cuda')
    if a.allow_cpu:
        print('*** No CUDA: smoke run on the CPU (--allow-cpu). The figures below only show that the script works. ***')
        return CPU
    print(f"gpu_check: CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
          "run this on the GPU machine, or pass --allow-cpu for a tiny smoke run on the CPU", file=sys.stderr)
    sys.exit(2)


def step(msg:str):
    "Print a progress line with the seconds since start."
    print(f"[{time.perf_counter()-T0:6.1f} s] {msg}", flush=True)


def sync(device:torch.device):
    "Wait for the GPU's queued work, so that the clock reads what it really took."
    if device.type == 'cuda': torch.cuda.synchronize(device)


def device_info(device:torch.device)->dict:
    "The GPU (or CPU) and the versions and settings that decide the timings."
    import fastai
    info = {'device': device.type, 'python': platform.python_version(), 'torch': torch.__version__,
            'torch cuda': torch.version.cuda, 'fastai': fastai.__version__, 'cpu cores': os.cpu_count()}
    if device.type == 'cuda':
        pr = torch.cuda.get_device_properties(device)
        info.update({'gpu': torch.cuda.get_device_name(device), 'gpu memory GiB': round(pr.total_memory / 2**30, 1),
                     'capability': f"{pr.major}.{pr.minor}", 'multiprocessors': pr.multi_processor_count,
                     'cudnn': torch.backends.cudnn.version(), 'cudnn.benchmark': torch.backends.cudnn.benchmark,
                     'cudnn.allow_tf32': torch.backends.cudnn.allow_tf32,
                     'matmul.allow_tf32': torch.backends.cuda.matmul.allow_tf32})
    return info


# ---------------------------------------------------------------- data
def balanced_rows(data:str|None, size:int, cache):
    "The balanced selection, decoded once at `size` into `cache` (unreadable images left out)."
    from covid_fastai.data import find_data_root, read_metadata, images_dir, select_balanced
    from covid_fastai.datablock import check_images
    root = find_data_root(data)
    rows = select_balanced(read_metadata(root), images_dir(root), ratio=1.0, seed=SEED)
    with contextlib.redirect_stdout(io.StringIO()):   # check_images' progress bar
        rows = check_images(rows, size=size, cache=cache, workers=min(16, os.cpu_count() or 1))
    return rows, root


def export_subset(data:str|None, dest:Path):
    "Copy the metadata CSV and the balanced selection's images into `dest`, laid out as a dataset root."
    from covid_fastai.data import find_data_root, read_metadata, images_dir, select_balanced, METADATA_CSV
    root = find_data_root(data)
    rows = select_balanced(read_metadata(root), images_dir(root), ratio=1.0, seed=SEED)
    folder = images_dir(dest)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(root/METADATA_CSV, dest/METADATA_CSV)
    for p in rows.path: shutil.copy(p, folder/Path(p).name)
    mb = sum(f.stat().st_size for f in dest.rglob('*') if f.is_file()) / 2**20
    print(f"Copied {METADATA_CSV} and {len(rows)} images ({mb:.1f} MiB) to {dest}; "
          f"select_balanced picks the same rows there. Run with --data {dest}")


def make_dls(rows, a, bs:int, cache, device):
    "covid_dataloaders on the balanced rows; with --oversample N the training rows (not the validation ones) repeated N times."
    import pandas as pd
    from fastai.vision.all import IndexSplitter, ifnone
    from covid_fastai.datablock import covid_dataloaders, covid_datablock, default_workers
    kw = dict(size=a.size, seed=SEED, cache=cache)
    if a.oversample == 1: return covid_dataloaders(rows, bs=bs, device=device, num_workers=a.workers, **kw)
    dblock = covid_datablock(**kw)                       # what covid_dataloaders builds...
    train_idx, valid_idx = dblock.splitter(rows)         # ...and its stratified split
    train, valid = rows.iloc[list(train_idx)], rows.iloc[list(valid_idx)]
    items = pd.concat([train] * a.oversample + [valid], ignore_index=True)
    dblock.splitter = IndexSplitter(list(range(len(train) * a.oversample, len(items))))
    return dblock.dataloaders(items, bs=bs, device=device, num_workers=ifnone(a.workers, default_workers(device)))


# ---------------------------------------------------------------- 2. training
def epoch_timer(device):
    "A fastai callback that records, per epoch, the training phase's seconds, the whole epoch's, and the images trained on."
    from fastai.callback.core import Callback
    class EpochTimer(Callback):
        order = 99   # after the other callbacks' before_* and after_*
        def before_fit(self): self.rows = []
        def before_epoch(self): sync(device); self.t_epoch = time.perf_counter()
        def before_train(self): sync(device); self.t_train, self.n = time.perf_counter(), 0
        def after_batch(self):
            if self.training: self.n += len(self.learn.yb[0])
        def after_train(self): sync(device); self.train_s = time.perf_counter() - self.t_train
        def after_epoch(self):
            sync(device)
            self.rows.append({'train_s': self.train_s, 'epoch_s': time.perf_counter() - self.t_epoch, 'images': self.n})
    return EpochTimer()


MODES = {'fp32': (False, False), 'amp': (True, False), 'amp+channels_last': (True, True)}   # (mixed precision, channels_last)
CPU_MODES = ('fp32', 'fp32+channels_last')   # fastai's mixed precision needs CUDA


def train_once(rows, a, bs:int, mode:str, cache, device):
    "Train one fresh covid_learner in `mode`; its learner and the figures (first epoch = warm-up, median of the rest)."
    from covid_fastai.learner import covid_learner
    dls = make_dls(rows, a, bs, cache, device)
    timer = epoch_timer(device)
    learn = covid_learner(dls, arch=a.arch, pretrained=False, cbs=timer)   # on CUDA it has called to_fp16() already
    if not mode.startswith('amp'): learn.to_fp32()
    if mode.endswith('channels_last'): learn.model.to(memory_format=torch.channels_last)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    learn.unfreeze()
    with learn.no_logging(), learn.no_bar(): learn.fit_one_cycle(a.epochs, 1e-3)
    timed = timer.rows[1:]
    train_s = [r['train_s'] for r in timed]
    med = statistics.median(train_s)
    res = {'bs': bs, 'mode': mode, 'images_per_epoch': timed[0]['images'], 'train_rows': len(dls.train_ds),
           'valid_rows': len(dls.valid_ds), 'warmup_s': timer.rows[0]['train_s'], 'train_s': med,
           'train_s_min': min(train_s), 'train_s_max': max(train_s), 'epoch_s': statistics.median(r['epoch_s'] for r in timed),
           'images_per_s': timed[0]['images'] / med, 'timed_epochs': len(timed),
           'peak_gpu_GiB': torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None}
    step(f"train bs {bs:>3} {mode:<18} {med:6.2f} s/epoch ({res['images_per_epoch']} images)  "
         f"{res['images_per_s']:8.1f} images/s  (warm-up epoch {res['warmup_s']:.2f} s, whole epoch {res['epoch_s']:.2f} s)")
    return learn, res


def training(rows, a, cache, device, model_dir:Path)->list[dict]:
    "Every batch size x mode; the first run's trained model is saved to `model_dir` for steps 3 and 4."
    from covid_fastai.inference import save_model
    results = []
    for bs in a.bs:
        for mode in (MODES if device.type == 'cuda' else CPU_MODES):
            learn, res = train_once(rows, a, bs, mode, cache, device)
            results.append(res)
            if not (model_dir/'model.json').exists(): save_model(learn, model_dir, size=a.size)
            del learn
            if device.type == 'cuda': torch.cuda.empty_cache()
    return results


PHASES = ('wait for batch', 'forward + loss', 'backward + clip', 'optimizer step', 'rest')


def phase_timer(device):
    "A fastai callback that splits each training step into PHASES, synchronising the GPU at every boundary."
    from fastai.callback.core import Callback
    class PhaseTimer(Callback):
        order = 99   # last at each event: 'backward + clip' includes ClipGradValue and MixedPrecision's unscaling
        def before_fit(self): self.epochs = []
        def before_train(self): self.rows, self.last = [], None
        def now(self): sync(device); return time.perf_counter()
        def before_batch(self):
            if self.training: self.t = [self.now()]
        def after_loss(self):
            if self.training: self.t.append(self.now())
        def before_step(self):
            if self.training: self.t.append(self.now())
        def after_step(self):
            if self.training: self.t.append(self.now())
        def after_batch(self):
            if not self.training: return
            t = self.t + [self.now()]
            if self.last is not None:   # 'wait': from the end of the last step to this batch's arrival, augmented
                self.rows.append(dict(zip(PHASES, [t[0] - self.last, *(b - a for a, b in zip(t, t[1:]))])))
            self.last = t[-1]
        def after_train(self): self.epochs.append(self.rows)
    return PhaseTimer()


def torch_adamw(device):
    "An experiment, not the library's recipe: fastai's Adam (decoupled weight decay) as torch's AdamW, fused on CUDA."
    from functools import partial
    from fastai.optimizer import OptimWrapper
    kind = {'fused': True} if device.type == 'cuda' else {'foreach': True}
    return partial(OptimWrapper, opt=partial(torch.optim.AdamW, betas=(0.9, 0.99), eps=1e-5, **kind))


def breakdown(rows, a, cache, device)->list[dict]:
    """Milliseconds per training step in each of PHASES (median over the second epoch), per batch size: fp32, amp, and fp32
    with torch's AdamW in place of fastai's Adam (an experiment: fastai's steps each parameter in Python)."""
    from covid_fastai.learner import covid_learner
    out = []
    for bs in a.bs:
        for mode in (('fp32', 'amp', 'fp32, torch AdamW') if device.type == 'cuda' else ('fp32', 'fp32, torch AdamW')):
            timer = phase_timer(device)
            learn = covid_learner(make_dls(rows, a, bs, cache, device), arch=a.arch, pretrained=False, cbs=timer)
            if mode.startswith('fp32'): learn.to_fp32()
            if mode.endswith('torch AdamW'): learn.opt_func = torch_adamw(device)
            learn.unfreeze()
            with learn.no_logging(), learn.no_bar(): learn.fit_one_cycle(2, 1e-3)
            steps = timer.epochs[-1]
            if not steps:   # one batch per epoch: no step has a 'wait' to measure
                step(f"step breakdown bs {bs:>3} {mode:<5} skipped: one batch per epoch"); continue
            r = {'bs': bs, 'mode': mode, 'steps': len(steps),
                 **{p: 1000 * statistics.median(st[p] for st in steps) for p in PHASES}}
            r['total'] = sum(r[p] for p in PHASES)
            out.append(r)
            step(f"step breakdown bs {bs:>3} {mode:<5} " + ', '.join(f"{p} {r[p]:.1f}" for p in PHASES) + f" ms (total {r['total']:.1f})")
            del learn
            if device.type == 'cuda': torch.cuda.empty_cache()
    return out


def channels_last_verdict(results:list[dict])->list[str]:
    "For each batch size: does channels_last speed up mixed-precision training?"
    out = []
    for bs in sorted({r['bs'] for r in results}):
        by = {r['mode']: r for r in results if r['bs'] == bs}
        base, cl = by.get('amp', by.get('fp32')), by.get('amp+channels_last', by.get('fp32+channels_last'))
        if not (base and cl): continue
        ratio = cl['images_per_s'] / base['images_per_s']
        word = 'helps' if ratio > 1.05 else 'hurts' if ratio < 0.95 else 'makes no clear difference (within 5 %)'
        out.append(f"batch {bs}: channels_last {word}: {cl['images_per_s']:.0f} vs {base['images_per_s']:.0f} images/s "
                   f"({ratio:.2f}x, {cl['mode']} vs {base['mode']})")
    return out


# ---------------------------------------------------------------- 3. prediction
def _probs_fp32(self, xs):
    "CovidClassifier._probs without autocast: the same steps in fp32."
    x = self.normalise(torch.stack(xs))
    if self.device.type == 'cuda': x = x.contiguous(memory_format=torch.channels_last)
    from covid_fastai.ood import features_and_logits
    with torch.inference_mode(): feats, logits = features_and_logits(self.model, x) if self.ood is not None else (None, self.model(x))
    return (torch.softmax(logits.float() / self.temperature, dim=1).cpu().numpy(),   # as `_probs`: probabilities and ood scores
            None if feats is None else self.ood.score(feats))


def classifier(model_dir:Path, device, precision:str, cache=None):
    "load_model on `device`; precision 'fp32' turns the library's autocast (CUDA only) off for this instance."
    from covid_fastai.inference import load_model
    clf = load_model(model_dir, device=device, cache=cache)
    if precision == 'fp32': clf._probs = types.MethodType(_probs_fp32, clf)
    return clf


def time_predict(clf, files:list, bs:int, repeats:int)->dict:
    "images/s of clf.predict on `files` at batch `bs`: median of `repeats` calls after a warm-up call."
    clf.predict(files[:2*bs], bs=bs)
    secs = []
    for _ in range(repeats):
        t = time.perf_counter()
        df = clf.predict(files, bs=bs)                   # returns after .cpu(): the GPU's work is done
        secs.append(time.perf_counter() - t)
    if df.error.notna().any(): raise RuntimeError(f"predict failed on: {df[df.error.notna()].error.tolist()[:3]}")
    med = statistics.median(secs)
    return {'seconds': med, 'images_per_s': len(files) / med}


def time_floor(model, x:torch.Tensor, device, precision:str, iters:int)->dict:
    "images/s of the model alone on the batch `x` already on the device, under inference_mode (and autocast for amp)."
    amp = precision != 'fp32'
    dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=amp):
        for _ in range(3): model(x)
        sync(device); t = time.perf_counter()
        for _ in range(iters): model(x)
        sync(device); s = (time.perf_counter() - t) / iters
    return {'seconds': s, 'images_per_s': len(x) / s}


def inference(model_dir:Path, files:list, a, device, cache)->list[dict]:
    "predict (decoding, and from the warm cache) and the floor, at each batch size, in fp32 and amp."
    amp_name = 'amp (library default)' if device.type == 'cuda' else 'amp (bf16, floor only)'
    results = []
    for precision in ('fp32', 'amp'):
        name = 'fp32' if precision == 'fp32' else amp_name
        for bs in a.bs:
            for path, cached in (('predict, decoding', None), ('predict, DecodeCache', cache)):
                if device.type != 'cuda' and precision == 'amp': continue   # the library autocasts on CUDA only
                r = time_predict(classifier(model_dir, device, precision, cached), files, bs, a.repeats)
                results.append({'bs': bs, 'path': path, 'precision': name, **r})
                step(f"infer bs {bs:>3} {name:<22} {path:<22} {r['images_per_s']:9.1f} images/s")
            clf = classifier(model_dir, device, 'fp32')
            x = clf.normalise(torch.stack([clf.prepare(f) for f in (files * bs)[:bs]]))
            if device.type == 'cuda': x = x.contiguous(memory_format=torch.channels_last)
            r = time_floor(clf.model, x, device, precision, a.floor_iters)
            results.append({'bs': bs, 'path': 'floor: model on tensors', 'precision': name, **r})
            step(f"infer bs {bs:>3} {name:<22} {'floor':<22} {r['images_per_s']:9.1f} images/s")
    return results


# ---------------------------------------------------------------- 4. agreement
def compare(model_dir:Path, files:list, device, precision:str)->dict:
    "prob_covid and labels of the saved model on `device` (in `precision`) vs on the CPU."
    import numpy as np
    dev = classifier(model_dir, device, precision).predict(files, bs=len(files))
    cpu = classifier(model_dir, CPU, 'fp32').predict(files, bs=len(files))
    diff = np.abs(dev.prob_covid.to_numpy(float) - cpu.prob_covid.to_numpy(float))
    same = dev.label.to_numpy() == cpu.label.to_numpy()
    margin = float(np.min(np.abs(cpu.prob_covid.to_numpy(float) - clf_threshold(model_dir))))
    return {'precision': precision, 'images': len(files), 'max_abs_diff': float(diff.max()),
            'mean_abs_diff': float(diff.mean()), 'labels_agree': int(same.sum()), 'labels_differ': int((~same).sum()),
            'closest_to_threshold': margin, 'ok': bool(diff.max() <= THRESH and same.all())}


def clf_threshold(model_dir:Path)->float:
    "The decision threshold saved in model.json."
    return json.loads((model_dir/'model.json').read_text())['threshold']


def agreement(model_dir:Path, rows, a, device)->list[dict]:
    "CUDA (library default autocast, and fp32) vs CPU on --agree-n images: the validation rows first, then training rows."
    from covid_fastai.datablock import StratifiedSplitter
    train_idx, valid_idx = StratifiedSplitter(0.1, SEED)(rows)
    order = list(valid_idx) + list(train_idx)
    files = [rows.path.iloc[i] for i in order[:a.agree_n]]
    n_valid = min(len(valid_idx), a.agree_n)
    step(f"agreement on {len(files)} images ({n_valid} validation, {len(files)-n_valid} training; "
         f"the balanced selection has only {len(valid_idx)} validation images)")
    out = []
    for precision in ('amp', 'fp32'):
        r = compare(model_dir, files, device, precision)
        r['label'] = f"{device.type} {'autocast (library default)' if precision == 'amp' else 'fp32'} vs cpu fp32"
        out.append(r)
        step(f"{r['label']}: max |diff| prob_covid {r['max_abs_diff']:.2e} (mean {r['mean_abs_diff']:.2e}), "
             f"labels differ on {r['labels_differ']}/{r['images']}, nearest prob to the threshold is "
             f"{r['closest_to_threshold']:.3f} away -> {'OK' if r['ok'] else 'FAIL'}")
    return out


# ---------------------------------------------------------------- 5. report
def md_table(headers:list[str], rows:list[list])->str:
    "A GitHub Markdown table."
    line = lambda cells: '| ' + ' | '.join(str(c) for c in cells) + ' |'
    return '\n'.join([line(headers), line(['---'] * len(headers)), *map(line, rows)])


def report(info:dict, a, train:list[dict], phases:list[dict], infer:list[dict], agree:list[dict])->str:
    "The Markdown summary of every figure."
    gpu = info.get('gpu', 'CPU (smoke run, figures meaningless)')
    head = (f"**{gpu}**, torch {info['torch']} (CUDA {info['torch cuda']}, cuDNN {info.get('cudnn', '-')}), "
            f"fastai {info['fastai']}, {info['cpu cores']} CPU cores. {a.arch}, random weights, {a.size} px.")
    t = md_table(['batch', 'mode', 'images/epoch', 's/epoch (train phase, median)', 'min-max', 'images/s',
                  'whole epoch s', 'warm-up epoch s', 'peak GPU GiB'],
                 [[r['bs'], r['mode'], r['images_per_epoch'], f"{r['train_s']:.2f}", f"{r['train_s_min']:.2f}-{r['train_s_max']:.2f}",
                   f"{r['images_per_s']:.1f}", f"{r['epoch_s']:.2f}", f"{r['warmup_s']:.2f}",
                   '-' if r['peak_gpu_GiB'] is None else f"{r['peak_gpu_GiB']:.2f}"] for r in train])
    ph = md_table(['batch', 'mode', *[f"{p} ms" for p in PHASES], 'total ms', 'steps'],
                  [[r['bs'], r['mode'], *[f"{r[p]:.1f}" for p in PHASES], f"{r['total']:.1f}", r['steps']] for r in phases])
    i = md_table(['batch', 'precision', 'what', 'images/s', 'seconds (predict: one call on all files; floor: one batch)'],
                 [[r['bs'], r['precision'], r['path'], f"{r['images_per_s']:.1f}", f"{r['seconds']:.4f}"] for r in infer])
    g = md_table(['comparison', 'images', 'max abs diff prob_covid', 'mean abs diff', 'labels differ', 'verdict'],
                 [[r['label'], r['images'], f"{r['max_abs_diff']:.2e}", f"{r['mean_abs_diff']:.2e}", r['labels_differ'],
                   'OK' if r['ok'] else 'FAIL'] for r in agree])
    over = (f"training rows repeated {a.oversample}x per epoch (validation rows not repeated); " if a.oversample > 1 else '')
    return '\n'.join([
        '## GPU check', '', head, '', '### Training', '',
        f"{over}{a.epochs} epochs per run, first left out; figures are the training phase only (validation excluded).", '',
        t, '', *[f"* {v}" for v in channels_last_verdict(train)], '', '### Where a training step goes', '',
        "Median milliseconds per step over a second epoch, the GPU synchronised at every boundary (which itself costs a "
        "little). 'wait for batch': from the end of one step to the next batch's arrival, loaded, moved to the GPU and "
        "augmented there; 'backward + clip' includes gradient clipping and, in amp, unscaling; 'rest': zeroing the "
        "gradients and fastai's bookkeeping.", '', ph, '', '### Prediction', '',
        f"{a.infer_files} files per predict call (the balanced images cycled), median of {a.repeats} calls after a warm-up; "
        f"floor: mean time of {a.floor_iters} forward passes (after 3 untimed) on one batch already on the device.", '',
        i, '', '### CUDA vs CPU agreement', '', f"Pass: max abs diff <= {THRESH:g} and no label differs.", '', g])


# ---------------------------------------------------------------- main
def main(argv=None)->int:
    a = parse_args(argv)
    warnings.filterwarnings('ignore')
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')   # for the DataLoader's workers
    if a.export_subset: export_subset(a.data, Path(a.export_subset)); return 0
    device = pick_device(a)
    from covid_fastai.datablock import DecodeCache
    info = device_info(device)
    print('\n'.join(f"  {k}: {v}" for k, v in info.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix='covid_gpu_check_') as tmp:
        tmp = Path(tmp)
        cache, model_dir = DecodeCache(tmp/'cache'), tmp/'model'
        rows, root = balanced_rows(a.data, a.size, cache)
        step(f"{len(rows)} balanced images from {root}, decoded at {a.size} px into a temporary DecodeCache")
        train = training(rows, a, cache, device, model_dir)
        phases = breakdown(rows, a, cache, device)
        files = (list(rows.path) * (a.infer_files // len(rows) + 1))[:a.infer_files]
        infer = inference(model_dir, files, a, device, cache)
        agree = agreement(model_dir, rows, a, device)
    md = report(info, a, train, phases, infer, agree)
    print('\n' + md)
    ok = all(r['ok'] for r in agree)
    if a.out:
        Path(a.out).write_text(json.dumps({'device': info, 'settings': vars(a), 'training': train, 'phases': phases, 'inference': infer,
                                           'agreement': agree, 'ok': ok, 'seconds': time.perf_counter() - T0,
                                           'markdown': md}, indent=2, default=str) + '\n')
        print(f"\nWrote {a.out}")
    step('done' if ok else "FAIL: CUDA and CPU predictions disagree (see above)")
    return 0 if ok else 1


if __name__ == '__main__': sys.exit(main())
