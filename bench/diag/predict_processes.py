"Decoding in processes: where predict(processes=16) loses the 16 processes' 3,000 images/s."
# Run from the repository root on a CUDA machine, after `python bench/gpu_check.py --export-subset .gpudata` (its JPEGs are read).
import os, time, glob, types, multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
def rate(label, n, t): print(f'{label:<58} {n/t:7.0f} images/s', flush=True)
if __name__ == '__main__':
    from covid_fastai.datablock import xray_arrays
    from covid_fastai.inference import decoding_processes, CovidClassifier
    jpegs = sorted(f for f in glob.glob('.gpudata/**/*', recursive=True) if f.lower().endswith(('.jpeg', '.jpg')))
    files = (jpegs * 21)[:2048]
    def gather(pool, chunk):
        futs = [pool.submit(xray_arrays, files[i:i+chunk], 256, None) for i in range(0, len(files), chunk)]
        return sum(len(f.result()) for f in futs)
    for ctx, chunk in (('forkserver', 4), ('forkserver', 32), ('fork', 4)):
        pool = decoding_processes(16) if ctx == 'forkserver' else ProcessPoolExecutor(16, mp_context=multiprocessing.get_context('fork'))
        gather(pool, chunk); t = time.perf_counter(); n = gather(pool, chunk)
        rate(f'{ctx}, all tasks submitted at once, {chunk} files a task', n, time.perf_counter() - t)
        pool.shutdown()
    fake = types.SimpleNamespace(size=256, open=types.SimpleNamespace(cache=None))
    procs = decoding_processes(16)
    batches = [files[i:i+64] for i in range(0, len(files), 64)]
    for b in batches[:4]: CovidClassifier._decode_in(fake, b, procs, 16)
    t = time.perf_counter()
    for b in batches: CovidClassifier._decode_in(fake, b, procs, 16)
    rate('_decode_in, one batch of 64 after another', len(files), time.perf_counter() - t)
    for ahead_n in (2, 4):
        with ThreadPoolExecutor(ahead_n) as ahead:
            t = time.perf_counter()
            pending = deque(ahead.submit(CovidClassifier._decode_in, fake, b, procs, 16) for b in batches[:ahead_n])
            for i in range(len(batches)):
                pending.popleft().result()
                if i + ahead_n < len(batches): pending.append(ahead.submit(CovidClassifier._decode_in, fake, batches[i + ahead_n], procs, 16))
            rate(f'_decode_in, {ahead_n} batches in flight (predict: 2)', len(files), time.perf_counter() - t)
    t = time.perf_counter(); ts = []
    for b in batches[:8]:
        s = time.perf_counter(); CovidClassifier._decode_in(fake, b, procs, 16); ts.append(1000*(time.perf_counter() - s))
    print('ms per batch of 64, one after another:', ' '.join(f'{x:.0f}' for x in ts))
    procs.shutdown()
