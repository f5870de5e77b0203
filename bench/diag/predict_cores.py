"Where prediction's CPU time goes on the GPU machine: cores, one image's decoding, decoding in N processes, and the GPU-decoding path's parts."
# Run from the repository root on a CUDA machine, after `python bench/gpu_check.py --export-subset .gpudata` (its JPEGs are read).
import os, sys, time, glob, statistics
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
import numpy as np, torch, torchvision
def spin(n=3_000_000):
    t = time.perf_counter(); s = 0
    for i in range(n): s += i
    return time.perf_counter() - t
def decode_all(files):
    from covid_fastai.datablock import xray_array
    t = time.perf_counter()
    for f in files: xray_array(f, 256)
    return time.perf_counter() - t
if __name__ == '__main__':
    print('cpu_count', os.cpu_count(), 'affinity', len(os.sched_getaffinity(0)))
    for f in ('/sys/fs/cgroup/cpu.max', '/sys/fs/cgroup/cpu/cpu.cfs_quota_us'):
        if os.path.exists(f): print(f, open(f).read().strip())
    one = spin()
    for n in (1, 4, 8, 16):
        with ProcessPoolExecutor(n) as ex:
            list(ex.map(spin, [100]*n)); t = time.perf_counter(); list(ex.map(spin, [3_000_000]*n)); w = time.perf_counter() - t
        print(f'python loop: {n:2d} processes, {one*n/w:5.2f}x one process\'s work in the time')
    from covid_fastai.datablock import xray_array
    files = sorted(f for f in glob.glob('.gpudata/**/*', recursive=True) if f.lower().endswith(('.jpeg', '.jpg')))
    decode_all(files)
    s = min(decode_all(files) for _ in range(2))
    print(f'one thread: {len(files)} JPEGs, {1000*s/len(files):.2f} ms each, {len(files)/s:.0f} images/s')
    for n in (4, 8, 16):
        with ProcessPoolExecutor(n) as ex:
            list(ex.map(decode_all, [files[:2]]*n)); t = time.perf_counter(); list(ex.map(decode_all, [files]*n)); w = time.perf_counter() - t
        print(f'{n:2d} processes, each all {len(files)}: {n*len(files)/w:.0f} images/s ({n*len(files)/w/(len(files)/s):.2f}x one thread)')
    from covid_fastai.inference import _jpeg_bytes, load_model
    t = time.perf_counter(); blobs = [_jpeg_bytes(f) for f in files]; tb = time.perf_counter() - t
    print(f'_jpeg_bytes (header checks + read), one thread: {1000*tb/len(files):.2f} ms each')
    dev = torch.device('cuda')
    b = [x for x in blobs if x is not None][:64]
    for _ in range(2): ims = torchvision.io.decode_jpeg(b, mode=torchvision.io.ImageReadMode.RGB, device=dev); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5): ims = torchvision.io.decode_jpeg(b, mode=torchvision.io.ImageReadMode.RGB, device=dev); torch.cuda.synchronize()
    td = (time.perf_counter() - t) / 5
    print(f'decode_jpeg on the GPU, batch of {len(b)}: {1000*td:.1f} ms, {len(b)/td:.0f} images/s')
    from covid_fastai.inference import CovidClassifier
    clf = type('C', (), {'size': 256})()
    # 2026-11-28's log timed the `_squish` of then, an RGB image at a time; it now takes the batch's grey images
    grey = torchvision.io.decode_jpeg(b, mode=torchvision.io.ImageReadMode.GRAY, device=dev)
    for _ in range(2): CovidClassifier._squish(clf, grey); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5): CovidClassifier._squish(clf, grey); torch.cuda.synchronize()
    ts = (time.perf_counter() - t) / 5
    print(f'_squish, {len(grey)} grey images: {1000*ts:.1f} ms, {len(grey)/ts:.0f} images/s')
