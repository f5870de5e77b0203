#!/usr/bin/env python
"""GPU check (issues 4 and 11): training and prediction speed of covid_fastai on CUDA, CUDA vs CPU agreement, and the optimizers' quality.

    python bench/gpu_check.py [--data ROOT] [--out results.json]      # on a CUDA machine, ~3-5 min on an H100
    python bench/gpu_check.py --allow-cpu                             # tiny smoke run of the same code on the CPU
    python bench/gpu_check.py --export-subset DIR                     # copy just the images it needs, then --data DIR

1. The device: name, memory, torch / CUDA / cuDNN versions and settings.
2. Training throughput of `covid_learner` (ResNet50, random weights) on the balanced selection at 256 px, batch 8 and
   64: with fastai's Adam in mixed precision (the library's recipe before issue 11), and with torch's fused AdamW
   (`TorchAdamW`, the default now) in mixed precision, mixed precision + channels_last, and fp32; all with the images
   kept on the GPU by `InMemoryDL` (the default where they fit); once more with fastai's per-item `TfmdDL` and its
   loader processes, the library's loader before (issue 11); and once with the Recorder's smoothed loss kept on the GPU
   (an experiment: fastai copies it to the CPU after every step, which makes the CPU wait for the GPU); once with
   fastai's own affine transform in place of covid_augment's `SameSizeAffine` (the library before 2026-11-28); and once
   as the library was before issue 11 ('fastai Adam, amp, per item', the baseline). `--modes` picks some. Each run trains
   `--epochs` epochs with `fit_one_cycle` after `unfreeze`; the first epoch is warm-up and left out, the figure is the
   median of the others. Timed: the training phase of each epoch (a callback reads the clock, after
   `torch.cuda.synchronize`, at before_train and after_train), so validation is left out; the whole epoch is shown too.
   The balanced selection has only 98 training images, 1 batch of 64 (the last incomplete batch is dropped): the
   training rows are therefore repeated `--oversample` times (16: 1568 images, 196 batches of 8 or 24 of 64). The
   validation rows (12) are covid_dataloaders' own stratified split, not repeated.
   Then, per batch size, where a training step's time goes (waiting for the batch, forward, backward, optimizer step)
   before issue 11 and now (of the --modes), from a second epoch with the GPU synchronised at every boundary; and the training step alone at
   the largest batch (a batch already on the device, no loader, no fastai loop): eager, with cudnn.benchmark, and
   through torch.compile, to show what the loop and the loader leave on the table and whether compiling helps.
   CUDA graphs (part 'graphs'): one training step on the same batch and weights, eager and replayed from the graphs
   `CudaGraphs` trains with (`graph_model`), dropout off: the loss and gradients must agree (exit status 1 if the
   gradients differ by more than 2e-2 of the largest); fastai's Adam (which zeroes gradients in place, so that they
   stay in the graphs' memory) through six steps of fastai's loop, from one seed, with the graphs and eagerly: each
   step's gradient norm must agree as closely; and the bare step each way. The training modes run with
   `CudaGraphs` (covid_learner's default on CUDA) except '..., eager' and the baseline.
3. Prediction throughput of a model saved with `save_model` (with its out-of-distribution description, as `train` saves
   it) and read back with `load_model` on CUDA, `--infer-files`
   files per call: the library's `predict` (autocast on CUDA) decoding JPEGs on the CPU (Pillow, in predict's default
   4 threads, in one thread per core up to 16, and in as many processes, `--processes`), on the GPU (nvJPEG,
   `--gpu-decode`), and reading a warm DecodeCache (in threads and in processes);
   and the floor: the model alone on tensors already on the GPU, in amp and fp32.
4. Agreement: the same saved model on `--agree-n` images (the validation images first) on CUDA and on the CPU (exit
   status 1 if prob_covid differs by more than 1e-2 anywhere or a label differs), and decoding on the GPU against
   decoding on the CPU (limit 3e-2: the GPU decodes at full size, Pillow at a reduced scale, before the resize). A
   saturated model's probabilities hide what decoding changes, so the prepared images themselves are compared too
   (mean absolute difference at most 6 grey levels), each JPEG must have been decoded on the GPU (nvJPEG refusing a
   batch sends it to Pillow, with the library's warning: any such batch fails the check and is counted in the
   prediction figures), and the log-odds of COVID-19 are given beside the probabilities.
5. Quality: the library's recipe cross-validated (`train(folds=3)`, random weights) with fastai's Adam and with
   torch's AdamW, on the same folds.
6. A Markdown summary of every figure; `--out` also writes them as JSON.

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
DECODE_THRESH = 3e-2   # largest allowed |prob_covid| change from decoding on the GPU (full size + antialiased resize vs Pillow's draft)
PIXEL_THRESH = 6.0   # largest allowed mean |difference| of the prepared images, in grey levels, decoding on the GPU vs Pillow
FALLBACK = "the GPU's JPEG decoder refused"   # the start of the library's warning when nvJPEG fails a batch
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
    p.add_argument('--oversample', type=int, help='times the training rows are repeated (default 16; 1 on the CPU)')
    p.add_argument('--workers', type=int, help="DataLoader workers (default: covid_dataloaders' own: none while the images are kept in memory, "
                                               "and default_workers, one per core up to 16 on CUDA, for the per-item modes; 0 on the CPU). "
                                               "A number above 0 turns keeping them in memory off")
    p.add_argument('--infer-files', type=int, help='files per predict call, the images cycled (default 2048; 24 on the CPU)')
    p.add_argument('--repeats', type=int, help='timed predict calls per figure (default 3; 1 on the CPU)')
    p.add_argument('--floor-iters', type=int, help='timed forward passes per floor figure (default 30; 2 on the CPU)')
    p.add_argument('--agree-n', type=int, default=20, help='images in the CUDA vs CPU agreement check (default 20)')
    p.add_argument('--modes', nargs='+', metavar='MODE', help="training modes to run, each name quoted (default all; see MODES)")
    p.add_argument('--no-compile', action='store_true', help="leave torch.compile out of the training step floor (it compiles for ~30 s)")
    p.add_argument('--parts', default='train,steps,floor,graphs,infer,agree,quality',
                   help="which parts to run, comma-separated (default all: train,steps,floor,graphs,infer,agree,quality; infer and agree need train)")
    p.add_argument('--folds', type=int, default=3, help="folds of the optimizers' quality comparison (default 3; 0 leaves it out)")
    p.add_argument('--quality-epochs', type=int, help='epochs per phase in the quality comparison (default 5, the recipe; 1 on the CPU)')
    p.add_argument('--quality-modes', nargs='+', default=list(QUALITY_MODES), choices=list(QUALITY_MODES),
                   help="the quality comparison's modes (default all: fastai's Adam, torch's AdamW, AdamW without CUDA graphs)")
    a = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    smoke = [('arch', 'resnet50', 'resnet18'), ('workers', None, 0), ('size', 256, 64), ('epochs', 4, 2),
             ('oversample', 16, 1), ('infer_files', 2048, 24), ('repeats', 3, 1), ('floor_iters', 30, 2), ('quality_epochs', 5, 1)]
    for k, on_gpu, on_cpu in smoke:
        if getattr(a, k) is None: setattr(a, k, on_gpu if gpu else on_cpu)
    if a.epochs < 2: p.error('--epochs must be at least 2: the first one is warm-up')
    table = MODES if gpu else CPU_MODES
    if unknown := [m for m in a.modes or [] if m not in table]: p.error(f"unknown --modes {unknown}; on this device: {list(table)}")
    a.modes = a.modes or list(table)
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


def make_dls(rows, a, bs:int, cache, device, in_memory:bool|None=None):
    "covid_dataloaders on the balanced rows; with --oversample N the training rows (not the validation ones) repeated N times."
    import pandas as pd
    from fastai.vision.all import IndexSplitter
    from covid_fastai.datablock import covid_dataloaders, covid_datablock
    kw = dict(bs=bs, size=a.size, seed=SEED, cache=cache, device=device, num_workers=a.workers, in_memory=in_memory)
    if a.oversample == 1: return covid_dataloaders(rows, **kw)
    train_idx, valid_idx = covid_datablock(seed=SEED).splitter(rows)   # covid_dataloaders' stratified split
    train, valid = rows.iloc[list(train_idx)], rows.iloc[list(valid_idx)]
    items = pd.concat([train] * a.oversample + [valid], ignore_index=True)
    return covid_dataloaders(items, splitter=IndexSplitter(list(range(len(train) * a.oversample, len(items)))), **kw)


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


# name: (optimizer, mixed precision, channels_last, in_memory, smoothed loss kept on the device, fastai's own affine
# transform in place of covid_augment's `SameSizeAffine`, which reads nothing back from the GPU, CUDA graphs); mixed
# precision is covid_learner's: bfloat16 where the GPU has it; in_memory None is covid_dataloaders' rule (InMemoryDL
# where the images fit), False fastai's per-item TfmdDL with loader processes; CUDA graphs None is covid_learner's
# default (`CudaGraphs` on CUDA), False eager. 'AdamW, amp+channels_last' is what `covid-fastai train` does on CUDA;
# '..., eager' what it did before `CudaGraphs`, '..., per item' before InMemoryDL, 'fastai Adam, amp' before
# `TorchAdamW` (all issue 11); '..., loss kept on the GPU' an experiment (`keep_smooth_loss_on_device`); 'fastai Adam,
# amp, per item' is the library before issue 11 (but in bfloat16, where it trained in float16), the baseline of the
# issue's "2x today's" at batch 8.
MODES = {'fastai Adam, amp, per item': ('fastai', True, False, False, False, True, False),
         'fastai Adam, amp': ('fastai', True, False, None, False, False, None), 'AdamW, amp': ('adamw', True, False, None, False, False, None),
         'AdamW, amp+channels_last': ('adamw', True, True, None, False, False, None),
         'AdamW, amp+channels_last, eager': ('adamw', True, True, None, False, False, False),
         "AdamW, amp+channels_last, fastai's affine": ('adamw', True, True, None, False, True, None),
         'AdamW, amp+channels_last, per item': ('adamw', True, True, False, False, False, None),
         'AdamW, amp+channels_last, loss kept on the GPU': ('adamw', True, True, None, True, False, None),
         'AdamW, fp32': ('adamw', False, False, None, False, False, None)}
CHECK_MODES = {'fastai Adam, amp, eager': ('fastai', True, False, None, False, False, False)}   # graph_loop_check's, beside 'fastai Adam, amp'
CPU_MODES = {'fastai Adam, fp32': ('fastai', False, False, None, False, False, None), 'AdamW, fp32': ('adamw', False, False, None, False, False, None),   # fastai's mixed precision needs CUDA
             'AdamW, fp32, per item': ('adamw', False, False, False, False, False, None),
             'AdamW, fp32, loss kept on the device': ('adamw', False, False, None, True, False, None),
             "AdamW, fp32, fastai's affine": ('adamw', False, False, None, False, True, None)}


def keep_smooth_loss_on_device(learn):
    """Experiment (issue 11): fastai's Recorder smooths the loss with `to_detach(learn.loss.mean())`, a copy to the CPU
    that makes the CPU wait for every training step to finish before it prepares the next batch. Keep it on the device."""
    from fastai.learner import AvgSmoothLoss
    class DeviceSmoothLoss(AvgSmoothLoss):
        def accumulate(self, learn):
            self.count += 1
            self.val = torch.lerp(learn.loss.mean().detach().float(), self.val.to(learn.loss.device), self.beta)
    learn.recorder.smooth_loss = DeviceSmoothLoss(learn.recorder.smooth_loss.beta)


def use_fastai_affine(dls):
    "Put fastai's `AffineCoordTfm`, which reads the coordinates' range back from the GPU at every batch, back in place of `SameSizeAffine`."
    from fastai.vision.augment import AffineCoordTfm
    from covid_fastai.datablock import SameSizeAffine
    for dl in dls.loaders:
        for t in dl.after_batch.fs:
            if isinstance(t, SameSizeAffine): t.__class__ = AffineCoordTfm   # the same state; only `encodes` differs


def mode_learner(rows, a, bs:int, mode:str, cache, device, timer):
    "A fresh, unfrozen covid_learner on the balanced rows, set up as `mode` says, with the callback `timer`."
    from covid_fastai.learner import covid_learner
    optimizer, amp, channels_last, in_memory, loss_on_device, fastai_affine, graphs = {**MODES, **CPU_MODES, **CHECK_MODES}[mode]
    dls = make_dls(rows, a, bs, cache, device, in_memory)
    if fastai_affine: use_fastai_affine(dls)
    learn = covid_learner(dls, arch=a.arch, pretrained=False, cbs=timer, optimizer=optimizer, cuda_graphs=graphs)   # on CUDA: mixed precision already
    if loss_on_device: keep_smooth_loss_on_device(learn)
    if not amp: learn.to_fp32()
    learn.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)   # covid_learner: channels_last
    learn.unfreeze()
    return learn


def train_once(rows, a, bs:int, mode:str, cache, device):
    "Train one fresh covid_learner in `mode`; its learner and the figures (first epoch = warm-up, median of the rest)."
    timer = epoch_timer(device)
    learn = mode_learner(rows, a, bs, mode, cache, device, timer)
    dls = learn.dls
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    with learn.no_logging(), learn.no_bar(): learn.fit_one_cycle(a.epochs, 1e-3)
    timed = timer.rows[1:]
    train_s = [r['train_s'] for r in timed]
    med = statistics.median(train_s)
    res = {'bs': bs, 'mode': mode, 'images_per_epoch': timed[0]['images'], 'train_rows': len(dls.train_ds),
           'valid_rows': len(dls.valid_ds), 'warmup_s': timer.rows[0]['train_s'], 'train_s': med,
           'train_s_min': min(train_s), 'train_s_max': max(train_s), 'epoch_s': statistics.median(r['epoch_s'] for r in timed),
           'images_per_s': timed[0]['images'] / med, 'timed_epochs': len(timed),
           'peak_gpu_GiB': torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None,
           **dict(zip(('train_loss', 'valid_loss'), map(float, learn.recorder.values[-1][:2]))),   # a sanity check between modes
           'cuda_graphs': None if (g := getattr(learn, 'cuda_graphs', None)) is None else g.captures > 0}   # False: never captured, trained eagerly
    step(f"train bs {bs:>3} {mode:<25} {med:6.2f} s/epoch ({res['images_per_epoch']} images)  "
         f"{res['images_per_s']:8.1f} images/s  (warm-up epoch {res['warmup_s']:.2f} s, whole epoch {res['epoch_s']:.2f} s; "
         f"last train loss {res['train_loss']:.3f}, valid loss {res['valid_loss']:.3f}; CUDA graphs {res['cuda_graphs']})")
    return learn, res


def training(rows, a, cache, device, model_dir:Path)->list[dict]:
    "Every batch size x mode; the first run's trained model is saved to `model_dir` for steps 3 and 4."
    from covid_fastai.inference import save_model
    from covid_fastai.ood import learner_ood
    results = []
    for bs in a.bs:
        for mode in a.modes:
            learn, res = train_once(rows, a, bs, mode, cache, device)
            results.append(res)
            if not (model_dir/'model.json').exists():   # with its description of the training images, as `train` saves it
                save_model(learn, model_dir, size=a.size, ood=learner_ood(learn))
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


STEP_MODES = ('fastai Adam, amp, per item', 'AdamW, amp+channels_last, eager', 'AdamW, amp+channels_last')   # the library before issue 11, before CudaGraphs, and now


def breakdown(rows, a, cache, device)->list[dict]:
    """Milliseconds per training step in each of PHASES (median over the second epoch), per batch size, in the library's
    mode before issue 11 (fastai's Adam, which steps each parameter in Python, and the per-item loader) and now (torch's
    fused AdamW, `TorchAdamW`, channels_last, the images kept on the GPU), of those among --modes."""
    out = []
    for bs in a.bs:
        for mode in [m for m in (STEP_MODES if device.type == 'cuda' else CPU_MODES) if m in a.modes]:
            timer = phase_timer(device)
            learn = mode_learner(rows, a, bs, mode, cache, device, timer)
            with learn.no_logging(), learn.no_bar(): learn.fit_one_cycle(2, 1e-3)
            steps = timer.epochs[-1]
            if not steps:   # one batch per epoch: no step has a 'wait' to measure
                step(f"step breakdown bs {bs:>3} {mode:<16} skipped: one batch per epoch"); continue
            r = {'bs': bs, 'mode': mode, 'steps': len(steps),
                 **{p: 1000 * statistics.median(st[p] for st in steps) for p in PHASES}}
            r['total'] = sum(r[p] for p in PHASES)
            out.append(r)
            step(f"step breakdown bs {bs:>3} {mode:<16} " + ', '.join(f"{p} {r[p]:.1f}" for p in PHASES) + f" ms (total {r['total']:.1f})")
            del learn
            if device.type == 'cuda': torch.cuda.empty_cache()
    return out


def step_floor(a, device)->list[dict]:
    """Images/s of the training step alone, at the largest batch: a batch already on the device, forward, loss, backward
    and fused AdamW in the recipe's autocast and channels_last, no loader and no fastai loop. Eager, with
    cudnn.benchmark, and through torch.compile (its compile time given apart). What the loop and loader could reach."""
    from fastai.vision.all import create_vision_model
    from covid_fastai.learner import arch_fn
    bs, out = max(a.bs), []
    amp = torch.bfloat16 if device.type == 'cuda' and torch.cuda.is_bf16_supported() else torch.float16
    for how in ('eager', 'eager + cudnn.benchmark', *([] if a.no_compile else ['torch.compile + cudnn.benchmark'])):
        torch.backends.cudnn.benchmark = how != 'eager'
        torch.manual_seed(SEED)
        model = create_vision_model(arch_fn(a.arch), 2, pretrained=False).to(device, memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == 'cuda')
        run = torch.compile(model) if how.startswith('torch.compile') else model
        x = torch.randn(bs, 3, a.size, a.size, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (bs,), device=device)
        def one():
            with torch.autocast(device.type, dtype=amp, enabled=device.type == 'cuda'):
                loss = torch.nn.functional.cross_entropy(run(x), y)
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        sync(device); t = time.perf_counter(); one(); sync(device); first = time.perf_counter() - t   # compiles, if it does
        for _ in range(3): one()
        iters = a.floor_iters
        sync(device); t = time.perf_counter()
        for _ in range(iters): one()
        sync(device); s = (time.perf_counter() - t) / iters
        out.append({'bs': bs, 'how': how, 'step_ms': 1000 * s, 'images_per_s': bs / s, 'first_step_s': first})
        step(f"training step floor bs {bs} {how:<34} {1000*s:7.1f} ms/step {bs/s:8.1f} images/s (first step {first:.1f} s)")
        del model, opt, run
        if device.type == 'cuda': torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = False
    return out


def _ratio_line(results, bs, a, b, what):
    by = {r['mode']: r for r in results if r['bs'] == bs}
    if a not in by or b not in by: return None
    ratio = by[a]['images_per_s'] / by[b]['images_per_s']
    word = 'faster' if ratio > 1.05 else 'slower' if ratio < 0.95 else 'no clear difference (within 5 %)'
    return (f"batch {bs}: {what}: {by[a]['images_per_s']:.0f} vs {by[b]['images_per_s']:.0f} images/s, {ratio:.2f}x ({word}; "
            f"{a} vs {b})")


def verdicts(results:list[dict])->list[str]:
    "For each batch size: what each change (optimizer, layout, precision, loader, loss copy) does against the mode without it, in this run."
    pairs = [('AdamW, amp', 'fastai Adam, amp', "torch's fused AdamW in place of fastai's Adam"),
             ('AdamW, amp+channels_last', 'AdamW, amp', 'channels_last'), ('AdamW, amp', 'AdamW, fp32', 'mixed precision'),
             ('AdamW, fp32', 'fastai Adam, fp32', "torch's AdamW in place of fastai's Adam"),
             ('AdamW, amp+channels_last', 'fastai Adam, amp, per item', 'the library now vs before issue 11'),
             ('AdamW, amp+channels_last', 'AdamW, amp+channels_last, eager', 'CUDA graphs (CudaGraphs) vs eager'),
             ('AdamW, amp+channels_last', 'AdamW, amp+channels_last, per item', 'images kept on the GPU vs the per-item loader'),
             ('AdamW, fp32', 'AdamW, fp32, per item', 'images kept in memory vs the per-item loader'),
             ('AdamW, amp+channels_last', "AdamW, amp+channels_last, fastai's affine", "SameSizeAffine vs fastai's affine transform"),
             ('AdamW, fp32', "AdamW, fp32, fastai's affine", "SameSizeAffine vs fastai's affine transform"),
             ('AdamW, amp+channels_last, loss kept on the GPU', 'AdamW, amp+channels_last', 'smoothed loss kept on the GPU'),
             ('AdamW, fp32, loss kept on the device', 'AdamW, fp32', 'smoothed loss kept on the device')]
    return [l for bs in sorted({r['bs'] for r in results}) for a, b, what in pairs if (l := _ratio_line(results, bs, a, b, what))]


# ---------------------------------------------------------------- CUDA graphs
GRAPH_THRESH = 2e-2   # largest allowed gradient difference, over the largest gradient, between a replayed and an eager step


def graph_check(rows, a, cache, device)->list[dict]:
    """One training step of the library's learner at the largest batch, on the same batch and weights, eager and replayed
    from CUDA graphs (`graph_model`, as `CudaGraphs` trains), with dropout off so that both do the same arithmetic: the
    loss, the largest gradient difference over the largest gradient, and batch norm's statistics after the step; then
    the bare step (forward, loss, backward, fused AdamW) each way, mean of --floor-iters after 3 untimed."""
    if device.type != 'cuda': step('CUDA graphs: skipped (they need CUDA)'); return []
    import torch.nn.functional as F
    from covid_fastai.learner import graph_model, _autocast_dtype
    bs = max(a.bs)
    learn = mode_learner(rows, a, bs, 'AdamW, amp+channels_last, eager', cache, device, None)
    for m in learn.model.modules():
        if isinstance(m, torch.nn.Dropout): m.p = 0.   # no random masks: the same arithmetic both ways
    xb, yb = learn.dls.train.one_batch()
    x, y, model, dtype = xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor), learn.model.to(device).train(), _autocast_dtype(learn)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    def once(fwd):
        model.load_state_dict(start); model.zero_grad(set_to_none=True)   # in place: the graphs keep pointing at these tensors
        with torch.autocast('cuda', dtype=dtype, enabled=dtype is not None): loss = F.cross_entropy(fwd(x).float(), y)
        loss.backward()
        return loss.item(), [p.grad.float().clone() for p in model.parameters() if p.grad is not None], [b.float().clone() for b in model.buffers()]
    eager = once(model)
    t = time.perf_counter()
    try: replay = graph_model(model, x, dtype)
    except Exception as e:   # a finding, not the end of the check
        step(f"CUDA graphs bs {bs}: capture FAILED, {type(e).__name__}: {e}")
        return [{'bs': bs, 'ok': False, 'error': f"{type(e).__name__}: {e}"}]
    capture_s = time.perf_counter() - t
    graphed, again = once(replay), once(replay)   # twice: a replay reuses the graphs' memory
    def diff(u, v): return max((p - q).abs().max().item() for p, q in zip(u, v))
    scale = max(g.abs().max().item() for g in eager[1])
    r = {'bs': bs, 'dtype': str(dtype), 'capture_s': capture_s, 'loss_eager': eager[0], 'loss_graphed': graphed[0],
         'grads': len(eager[1]), 'grads_graphed': len(graphed[1]), 'grad_rel_diff': diff(eager[1], graphed[1]) / scale,
         'grad_rel_diff_replays': diff(graphed[1], again[1]) / scale, 'stats_diff': diff(eager[2], graphed[2]), 'limit': GRAPH_THRESH}
    r['ok'] = bool(r['grads'] == r['grads_graphed'] and r['grad_rel_diff'] <= GRAPH_THRESH and abs(r['loss_eager'] - r['loss_graphed']) <= 1e-2)
    step(f"CUDA graphs bs {bs}: captured in {capture_s:.1f} s; loss {eager[0]:.5f} eager, {graphed[0]:.5f} replayed; gradients differ by "
         f"{r['grad_rel_diff']:.1e} of the largest ({r['grad_rel_diff_replays']:.1e} between replays), statistics by {r['stats_diff']:.1e}: "
         + ('OK' if r['ok'] else 'FAIL'))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    for how, fwd in (('eager', model), ('CUDA graphs', replay)):
        def one():
            with torch.autocast('cuda', dtype=dtype, enabled=dtype is not None): loss = F.cross_entropy(fwd(x).float(), y)
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        for _ in range(3): one()
        sync(device); t = time.perf_counter()
        for _ in range(a.floor_iters): one()
        sync(device); s = (time.perf_counter() - t) / a.floor_iters
        r[f'step_ms_{how}'] = 1000 * s
        step(f"training step alone bs {bs} {how:<12} {1000*s:7.1f} ms/step {bs/s:8.1f} images/s")
    del learn, model, replay, opt
    torch.cuda.empty_cache()
    return [r, graph_loop_check(rows, a, cache, device)]


def graph_loop_check(rows, a, cache, device, steps:int=6)->dict:
    """fastai's Adam, which zeroes gradients in place, through fastai's loop for `steps` steps with `CudaGraphs` and
    eagerly, from the same seed, dropout off: each step's gradient norm must agree. A gradient left in the graphs' memory
    (torch hands it to the parameters as their .grad at the first replay) would be written over by the next forward replay."""
    from fastai.vision.all import set_seed, Callback, CancelFitException
    class GradNorms(Callback):
        def before_fit(self): self.norms = []
        def after_backward(self): self.norms.append(sum(p.grad.float().norm().item() for p in self.model.parameters() if p.grad is not None))
        def after_batch(self):
            if len(self.norms) >= steps: raise CancelFitException()
    bs, norms, graphed = max(a.bs), {}, None
    for mode in ('fastai Adam, amp', 'fastai Adam, amp, eager'):
        set_seed(SEED, reproducible=True)
        learn = mode_learner(rows, a, bs, mode, cache, device, GradNorms())
        for m in learn.model.modules():
            if isinstance(m, torch.nn.Dropout): m.p = 0.
        with learn.no_logging(), learn.no_bar(): learn.fit(steps, 1e-3)   # stopped after `steps` batches, however short an epoch
        norms[mode] = learn.grad_norms.norms
        if graphed is None: graphed = getattr(getattr(learn, 'cuda_graphs', None), 'captures', 0) > 0
        del learn; torch.cuda.empty_cache()
    g, e = norms['fastai Adam, amp'], norms['fastai Adam, amp, eager']
    worst = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(g, e))
    r = {'bs': bs, 'check': "fastai Adam through fastai's loop", 'steps': len(g), 'captured': graphed, 'grad_norms_graphed': g,
         'grad_norms_eager': e, 'worst_rel_diff': worst, 'limit': GRAPH_THRESH,
         'ok': bool(graphed and len(g) == len(e) == steps and worst <= GRAPH_THRESH)}
    step(f"CUDA graphs bs {bs}, fastai's Adam, {steps} steps through fastai's loop: gradient norms "
         f"{', '.join(f'{x:.3g}' for x in g)} replayed, {', '.join(f'{x:.3g}' for x in e)} eager; worst step {worst:.1e} apart: "
         + ('OK' if r['ok'] else 'FAIL'))
    return r


# ---------------------------------------------------------------- 3. prediction
def _probs_fp32(self, xs):
    "CovidClassifier._probs without autocast: the same steps in fp32."
    from covid_fastai.inference import _stack
    from covid_fastai.ood import features_and_logits
    x = self.normalise(_stack(xs, self.device)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(): feats, logits = features_and_logits(self.model, x) if self.ood is not None else (None, self.model(x))
    return (torch.softmax(logits.float() / self.temperature, dim=1).cpu().numpy(),   # as `_probs`: probabilities and ood scores
            None if feats is None else self.ood.score(feats))


def classifier(model_dir:Path, device, precision:str, cache=None, gpu_decode:bool=True):
    "load_model on `device`; precision 'fp32' turns the library's autocast (CUDA only) off for this instance."
    from covid_fastai.inference import load_model
    clf = load_model(model_dir, device=device, cache=cache)
    if precision == 'fp32': clf._probs = types.MethodType(_probs_fp32, clf)
    clf.gpu_decode = gpu_decode
    return clf


@contextlib.contextmanager
def fallbacks():
    "The messages of the batches that `--gpu-decode` sent to the CPU in the block (the library warns of each, from any thread)."
    fell = []
    with warnings.catch_warnings(record=True) as said:   # main() ignores warnings: these are recorded whatever it says
        warnings.simplefilter('always')
        yield fell
    fell += [str(w.message) for w in said if FALLBACK in str(w.message)]


def time_predict(clf, files:list, bs:int, repeats:int, workers:int=4, processes:int=0)->dict:
    "images/s of clf.predict on `files` at batch `bs` with `workers` decoding threads or `processes`: median of `repeats` calls after a warm-up call (which starts the processes)."
    secs = []
    try:
        with fallbacks() as fell:
            clf.predict(files[:2*bs], bs=bs, workers=workers, processes=processes)
            for _ in range(repeats):
                t = time.perf_counter()
                df = clf.predict(files, bs=bs, workers=workers, processes=processes)   # returns after .cpu(): the GPU's work is done
                secs.append(time.perf_counter() - t)
    finally: clf.close()
    if df.error.notna().any(): raise RuntimeError(f"predict failed on: {df[df.error.notna()].error.tolist()[:3]}")
    med = statistics.median(secs)
    return {'seconds': med, 'images_per_s': len(files) / med, 'gpu_decode_fallbacks': len(fell), 'fallback': fell[0] if fell else None}


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
    """predict (decoding JPEGs on the CPU, on the GPU, and from the warm cache) and the floor, at each batch size, in the
    library's precision (amp on CUDA), and the floor in fp32 too."""
    gpu = device.type == 'cuda'
    cores = min(16, os.cpu_count() or 1)   # predict's default is 4 decoding threads
    paths = [('predict, CPU decoding', None, False, 4, 0), ('predict, CPU decoding, ' + f'{cores} threads', None, False, cores, 0),
             ('predict, CPU decoding, ' + f'{cores} processes', None, False, 4, cores),
             *([('predict, GPU decoding (--gpu-decode)', None, True, 4, 0)] if gpu else []), ('predict, DecodeCache', cache, False, 4, 0),
             ('predict, DecodeCache, ' + f'{cores} processes', cache, False, 4, cores)]
    results = []
    for precision in (('amp', 'fp32') if gpu else ('fp32',)):
        name = 'amp (library default)' if precision == 'amp' else 'fp32'
        for bs in a.bs:
            for path, cached, on_gpu, workers, processes in (paths if precision == 'amp' or not gpu else []):
                r = time_predict(classifier(model_dir, device, precision, cached, on_gpu), files, bs, a.repeats, workers, processes)
                results.append({'bs': bs, 'path': path, 'precision': name, **r})
                fell = f"  ({r['gpu_decode_fallbacks']} batches decoded on the CPU instead: {r['fallback']})" if r['fallback'] else ''
                step(f"infer bs {bs:>3} {name:<22} {path:<32} {r['images_per_s']:9.1f} images/s{fell}")
            clf = classifier(model_dir, device, 'fp32')
            x = clf.normalise(torch.stack([clf.prepare(f) for f in (files * bs)[:bs]])).contiguous(memory_format=torch.channels_last)
            r = time_floor(clf.model, x, device, precision, a.floor_iters)
            results.append({'bs': bs, 'path': 'floor: model on tensors', 'precision': name, **r})
            step(f"infer bs {bs:>3} {name:<22} {'floor':<32} {r['images_per_s']:9.1f} images/s")
    return results


# ---------------------------------------------------------------- 4. agreement
def compare(model_dir:Path, files:list, device, precision:str, gpu_decode:bool=False, other=CPU, limit:float=THRESH)->dict:
    "prob_covid and labels of the saved model on `device` (in `precision`, decoding on the GPU or not) vs on `other` in fp32, decoding on the CPU."
    import numpy as np
    with fallbacks() as fell: dev = classifier(model_dir, device, precision, gpu_decode=gpu_decode).predict(files, bs=len(files))
    cpu = classifier(model_dir, other, 'fp32', gpu_decode=False).predict(files, bs=len(files))
    diff = np.abs(dev.prob_covid.to_numpy(float) - cpu.prob_covid.to_numpy(float))
    same = dev.label.to_numpy() == cpu.label.to_numpy()
    margin = float(np.min(np.abs(cpu.prob_covid.to_numpy(float) - clf_threshold(model_dir))))
    return {'precision': precision, 'images': len(files), 'max_abs_diff': float(diff.max()),
            'mean_abs_diff': float(diff.mean()), 'labels_agree': int(same.sum()), 'labels_differ': int((~same).sum()),
            'max_abs_logodds_diff': float(np.abs(log_odds(dev.prob_covid) - log_odds(cpu.prob_covid)).max()),
            'gpu_decode_fallbacks': len(fell), 'closest_to_threshold': margin, 'limit': limit,
            'ok': bool(diff.max() <= limit and same.all() and not fell)}


def log_odds(p):
    "log(p / (1 - p)) of the probabilities `p`, which float64 keeps apart up to about 36 (as `softmax64` does)."
    import numpy as np
    p = np.clip(np.asarray(p, dtype=float), 1e-300, 1.0)
    return np.log(p) - np.log1p(-np.minimum(p, 1 - 1e-16))


def decode_pixels(model_dir:Path, files:list, device)->dict:
    "The prepared images (what the network is given, before normalising) decoding on the GPU against Pillow's, model aside."
    from concurrent.futures import ThreadPoolExecutor
    clf = classifier(model_dir, device, 'fp32', gpu_decode=True)
    with ThreadPoolExecutor(4) as pool, fallbacks() as fell: gpu = clf._load_batch(files, pool)
    clf.gpu_decode = False
    with ThreadPoolExecutor(4) as pool: cpu = clf._load_batch(files, pool)
    jpeg = [str(f).lower().endswith(('.jpg', '.jpeg')) for f in files]
    on_gpu = sum(x is not None and x.is_cuda for (_, x, _), j in zip(gpu, jpeg) if j)
    diffs = [(g.float().cpu() - c.float()).abs() for (_, g, _), (_, c, _) in zip(gpu, cpu) if g is not None and c is not None]   # readable either way
    mean = float(torch.stack([d.mean() for d in diffs]).mean())
    return {'label': f"prepared images decoding on the GPU vs Pillow, in grey levels ({on_gpu} of {sum(jpeg)} JPEGs decoded on the GPU)",
            'images': len(files), 'max_abs_diff': float(max(d.max() for d in diffs)), 'mean_abs_diff': mean, 'labels_differ': '-',
            'jpegs_on_gpu': on_gpu, 'jpegs': sum(jpeg), 'gpu_decode_fallbacks': len(fell), 'limit': PIXEL_THRESH,
            'ok': bool(on_gpu == sum(jpeg) and not fell and mean <= PIXEL_THRESH)}


def clf_threshold(model_dir:Path)->float:
    "The decision threshold saved in model.json."
    return json.loads((model_dir/'model.json').read_text())['threshold']


def fell_back(r:dict)->str: return f", {r['gpu_decode_fallbacks']} batches decoded on the CPU instead" if r.get('gpu_decode_fallbacks') else ''


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
        r['label'] = f"{device.type} {'autocast (library default)' if precision == 'amp' else 'fp32'} vs cpu fp32, both decoding on the CPU"
        out.append(r)
    if device.type == 'cuda':   # the same model and device: only the decoding differs (nvJPEG at full size vs Pillow's draft)
        r = compare(model_dir, files, device, 'fp32', gpu_decode=True, other=device, limit=DECODE_THRESH)
        r['label'] = 'cuda fp32 decoding on the GPU vs cuda fp32 decoding on the CPU'
        out.append(r)
    for r in out:
        step(f"{r['label']}: max |diff| prob_covid {r['max_abs_diff']:.2e} (mean {r['mean_abs_diff']:.2e}; log-odds "
             f"{r['max_abs_logodds_diff']:.2e}), labels differ on {r['labels_differ']}/{r['images']}, nearest prob to the threshold is "
             f"{r['closest_to_threshold']:.3f} away{fell_back(r)} -> {'OK' if r['ok'] else 'FAIL'}")
    if device.type == 'cuda':
        r = decode_pixels(model_dir, files, device); out.append(r)
        step(f"{r['label']}: mean |diff| {r['mean_abs_diff']:.2f} (limit {r['limit']:g}), max {r['max_abs_diff']:.0f} -> {'OK' if r['ok'] else 'FAIL'}")
    return out


# ---------------------------------------------------------------- 5. quality of the two optimizers
QUALITY_MODES = {'fastai Adam': ('fastai', None), 'AdamW': ('adamw', None), 'AdamW, eager': ('adamw', False)}   # (optimizer, cuda_graphs)


def quality(a, data:str|None, tmp:Path)->list[dict]:
    """The library's recipe (`train`, random weights) cross-validated in each of --quality-modes, the same folds for all:
    does torch's AdamW, stepping as fastai's Adam, give the same model quality? And training replayed from CUDA graphs
    (the default on CUDA) the same as eager? It also runs `CudaGraphs` through the whole recipe: the frozen phase, the
    unfrozen one (captured again), validation and checkpoints."""
    import covid_fastai.train as tr
    from covid_fastai.learner import covid_learner
    out = []
    for mode in a.quality_modes:
        optimizer, graphs = QUALITY_MODES[mode]
        tr.covid_learner = lambda *args, **kw: covid_learner(*args, **kw, cuda_graphs=graphs)
        t = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                cv = tr.train(data=data, out=tmp/f'cv-{len(out)}', arch=a.arch, size=a.size, folds=a.folds, pretrained=False,
                              optimizer=optimizer, frozen_epochs=a.quality_epochs, unfrozen_epochs=a.quality_epochs, seed=SEED)
        except Exception as e:   # a run that fails is a finding, not the end of the check
            out.append({'optimizer': mode, 'folds': a.folds, 'seconds': time.perf_counter() - t,
                        'error': f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}"})
            step(f"{a.folds}-fold CV, {mode:<12}: FAILED, {out[-1]['error']}"); continue
        finally: tr.covid_learner = covid_learner
        r = {'optimizer': mode, 'folds': a.folds, 'seconds': time.perf_counter() - t,
             **{k: cv['metrics'][k] for k in ('roc_auc', 'sensitivity', 'specificity', 'accuracy') if k in cv['metrics']}}
        out.append(r)
        step(f"{a.folds}-fold CV, {mode:<12}: " + ', '.join(
            f"{k} {r[k]['mean']:.3f} ± {r[k]['sd']:.3f}" for k in ('roc_auc', 'sensitivity', 'specificity') if k in r) + f" ({r['seconds']:.0f} s)")
    return out


# ---------------------------------------------------------------- 6. report
def md_table(headers:list[str], rows:list[list])->str:
    "A GitHub Markdown table."
    line = lambda cells: '| ' + ' | '.join(str(c) for c in cells) + ' |'
    return '\n'.join([line(headers), line(['---'] * len(headers)), *map(line, rows)])


def report(info:dict, a, training:list[dict], phases:list[dict], step_floor:list[dict], graphs:list[dict], inference:list[dict], agreement:list[dict], quality:list[dict])->str:
    "The Markdown summary of every figure."
    gpu = info.get('gpu', 'CPU (smoke run, figures meaningless)')
    head = (f"**{gpu}**, torch {info['torch']} (CUDA {info['torch cuda']}, cuDNN {info.get('cudnn', '-')}), "
            f"fastai {info['fastai']}, {info['cpu cores']} CPU cores. {a.arch}, random weights, {a.size} px.")
    t = md_table(['batch', 'mode', 'images/epoch', 's/epoch (train phase, median)', 'min-max', 'images/s',
                  'whole epoch s', 'warm-up epoch s', 'peak GPU GiB', 'last train / valid loss'],
                 [[r['bs'], r['mode'], r['images_per_epoch'], f"{r['train_s']:.2f}", f"{r['train_s_min']:.2f}-{r['train_s_max']:.2f}",
                   f"{r['images_per_s']:.1f}", f"{r['epoch_s']:.2f}", f"{r['warmup_s']:.2f}",
                   '-' if r['peak_gpu_GiB'] is None else f"{r['peak_gpu_GiB']:.2f}", f"{r['train_loss']:.3f} / {r['valid_loss']:.3f}"] for r in training])
    ph = md_table(['batch', 'mode', *[f"{p} ms" for p in PHASES], 'total ms', 'steps'],
                  [[r['bs'], r['mode'], *[f"{r[p]:.1f}" for p in PHASES], f"{r['total']:.1f}", r['steps']] for r in phases])
    fl = md_table(['batch', 'how', 'ms/step', 'images/s', 'first step s'],
                  [[r['bs'], r['how'], f"{r['step_ms']:.1f}", f"{r['images_per_s']:.1f}", f"{r['first_step_s']:.1f}"] for r in step_floor])
    gr = md_table(['batch', 'autocast', 'capture s', 'loss eager / replayed', 'gradient diff / largest', 'between replays',
                   'statistics diff', 'step ms eager', 'step ms graphs', 'verdict'],
                  [[r['bs'], r['dtype'], f"{r['capture_s']:.1f}", f"{r['loss_eager']:.5f} / {r['loss_graphed']:.5f}", f"{r['grad_rel_diff']:.1e}",
                    f"{r['grad_rel_diff_replays']:.1e}", f"{r['stats_diff']:.1e}", f"{r['step_ms_eager']:.1f}", f"{r['step_ms_CUDA graphs']:.1f}",
                    'OK' if r['ok'] else 'FAIL'] for r in graphs if 'capture_s' in r])
    i = md_table(['batch', 'precision', 'what', 'images/s', 'seconds (predict: one call on all files; floor: one batch)'],
                 [[r['bs'], r['precision'], r['path'], f"{r['images_per_s']:.1f}", f"{r['seconds']:.4f}"] for r in inference])
    g = md_table(['comparison', 'images', 'max abs diff (prob_covid, or grey levels)', 'mean abs diff', 'max abs diff, log-odds', 'labels differ', 'limit', 'verdict'],
                 [[r['label'], r['images'], f"{r['max_abs_diff']:.2e}", f"{r['mean_abs_diff']:.2e}",
                   f"{r['max_abs_logodds_diff']:.2e}" if 'max_abs_logodds_diff' in r else '-', r['labels_differ'],
                   f"{r['limit']:g}", 'OK' if r['ok'] else 'FAIL'] for r in agreement])
    q = md_table(['mode', 'folds', 'ROC AUC', 'sensitivity', 'specificity', 'accuracy', 'seconds'],
                 [[r['optimizer'], r['folds'], *[f"{r[k]['mean']:.3f} ± {r[k]['sd']:.3f}" if k in r and r[k]['mean'] is not None else '-'
                                                 for k in ('roc_auc', 'sensitivity', 'specificity', 'accuracy')], f"{r['seconds']:.0f}"]
                  for r in quality])
    over = (f"training rows repeated {a.oversample}x per epoch (validation rows not repeated); " if a.oversample > 1 else '')
    return '\n'.join([
        '## GPU check', '', head, '', '### Training', '',
        f"{over}{a.epochs} epochs per run, first left out; figures are the training phase only (validation excluded).", '',
        t, '', *[f"* {v}" for v in verdicts(training)], '', '### Where a training step goes', '',
        "Median milliseconds per step over a second epoch, the GPU synchronised at every boundary (which itself costs a "
        "little). 'wait for batch': from the end of one step to the next batch's arrival, loaded, moved to the GPU and "
        "augmented there; 'backward + clip' includes gradient clipping and, in amp, unscaling; 'rest': zeroing the "
        "gradients and fastai's bookkeeping.", '', ph, '', '### The training step alone', '',
        f"A batch already on the device, forward + loss + backward + fused AdamW in autocast and channels_last, no loader "
        f"and no fastai loop; mean of {a.floor_iters} steps after 4 untimed ones (the first, which compiles, given apart).", '',
        fl, '', '### CUDA graphs', '',
        "One training step on the same batch and weights, dropout off, eager and replayed (`graph_model`); then the bare "
        f"step (forward, loss, backward, fused AdamW) each way, mean of {a.floor_iters} after 3 untimed.", '', gr, '',
        *[f"* {r['check']}, {r['steps']} steps from one seed with `CudaGraphs` and eagerly: gradient norms at most "
          f"{r['worst_rel_diff']:.1e} apart, {'OK' if r['ok'] else 'FAIL'}" for r in graphs if 'check' in r], '',
        '### Prediction', '',
        f"{a.infer_files} files per predict call (the balanced images cycled), median of {a.repeats} calls after a warm-up; "
        f"floor: mean time of {a.floor_iters} forward passes (after 3 untimed) on one batch already on the device.", '',
        i, '', '### Agreement', '', "Pass: max abs diff within the limit, no label differs, and no batch meant for the GPU's decoder "
        "was decoded on the CPU; for the prepared images, the mean abs diff within the limit and every JPEG decoded on the GPU.", '', g, '',
        '### Quality: fastai\'s Adam vs torch\'s AdamW, CUDA graphs vs eager', '',
        f"`train(folds={a.folds}, pretrained=False)`, {a.arch} at {a.size} px, {a.quality_epochs} + {a.quality_epochs} epochs, the same folds "
        "for both (mean ± sd over the folds).", '', q])


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
    figures = {'training': [], 'phases': [], 'step_floor': [], 'graphs': [], 'inference': [], 'agreement': [], 'quality': []}
    def save(done=False):   # after every part, so that a run stopped by a time limit keeps what it measured
        if not a.out: return
        ok = all(r['ok'] for r in figures['agreement'] + figures['graphs'])
        Path(a.out).write_text(json.dumps({'device': info, 'settings': vars(a), **figures, 'ok': ok, 'complete': done,
                                           'seconds': time.perf_counter() - T0, 'markdown': report(info, a, **figures)},
                                          indent=2, default=str) + '\n')
    with tempfile.TemporaryDirectory(prefix='covid_gpu_check_') as tmp:
        tmp = Path(tmp)
        cache, model_dir = DecodeCache(tmp/'cache'), tmp/'model'
        rows, root = balanced_rows(a.data, a.size, cache)
        step(f"{len(rows)} balanced images from {root}, decoded at {a.size} px into a temporary DecodeCache")
        files = (list(rows.path) * (a.infer_files // len(rows) + 1))[:a.infer_files]
        parts = {'train': ('training', lambda: training(rows, a, cache, device, model_dir)),
                 'steps': ('phases', lambda: breakdown(rows, a, cache, device)),
                 'floor': ('step_floor', lambda: step_floor(a, device)),
                 'graphs': ('graphs', lambda: graph_check(rows, a, cache, device)),
                 'infer': ('inference', lambda: inference(model_dir, files, a, device, cache)),
                 'agree': ('agreement', lambda: agreement(model_dir, rows, a, device)),
                 'quality': ('quality', lambda: quality(a, str(root), tmp) if a.folds else [])}
        for part in a.parts.split(','):
            key, run = parts[part]
            figures[key] = run()
            save()
    md = report(info, a, **figures)
    print('\n' + md)
    save(done=True)
    if a.out: print(f"\nWrote {a.out}")
    ok = all(r['ok'] for r in figures['agreement'] + figures['graphs'])
    step('done' if ok else "FAIL: CUDA and CPU predictions, or a replayed and an eager training step, disagree (see above)")
    return 0 if ok else 1


if __name__ == '__main__': sys.exit(main())
