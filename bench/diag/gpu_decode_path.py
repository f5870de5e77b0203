"""`predict --gpu-decode` taken apart: torch operations and host syncs per batch of `_decode_jpegs`, and its time alone
and beside the network, as `predict` runs them (the next batch decoded in a thread while the network runs this one).

On the CPU it decodes with the CPU's JPEG decoder in nvJPEG's place (as 05_inference's check does) and counts the
operations each batch issues: on a GPU each is a kernel launch, and the host's time to issue them is what a pipeline
of small images is short of. On CUDA it also counts the operations that wait for the GPU (`set_sync_debug_mode`)
and times the parts. It first says whether nvJPEG decoded every JPEG (the library falls back to Pillow, with a
warning, when the GPU's decoder refuses a batch: figures made that way would not be the GPU's), and what a batch with
one damaged JPEG gives (an error on that file's row alone is right). Run from the repository root: `python bench/diag/gpu_decode_path.py [--data FOLDER] [--bs 64]`.
"""
import argparse, glob, time, warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
import torch, torchvision
from torchvision.io import ImageReadMode
from torch.profiler import profile, ProfilerActivity

def jpeg_files(folder:str, n:int)->list:
    files = sorted(f for f in glob.glob(f'{folder}/**/*', recursive=True) if f.lower().endswith(('.jpeg', '.jpg')))
    if not files: raise SystemExit(f'no JPEG files under {folder}: give --data')
    return (files * (-(-n // len(files))))[:n]

def classifier(device):
    from covid_fastai.learner import covid_model
    from covid_fastai.inference import CovidClassifier
    meta = {'arch': 'resnet50', 'size': 256, 'threshold': 0.5, 'classes': ['Normal', 'COVID-19'],
            'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}
    return CovidClassifier(covid_model('resnet50', 2, 256), meta, device)

def decode(clf, loaded, pool):
    out = clf._decode_jpegs(loaded, pool)
    if clf.device.type == 'cuda': torch.cuda.synchronize()
    return out

def ops_per_batch(clf, loaded, pool)->Counter:
    "The torch operations one `_decode_jpegs` call issues, by name (top-level ones only)."
    with profile(activities=[ProfilerActivity.CPU]) as prof: decode(clf, loaded, pool)
    return Counter(e.name for e in prof.events() if e.cpu_parent is None and e.name.startswith(('aten::', 'image::')))

def syncs_per_batch(clf, loaded, pool)->int:
    "How many of its operations wait for the GPU (CUDA only)."
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try: clf._decode_jpegs(loaded, pool)
        finally: torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()
    return sum('synchroniz' in str(x.message) for x in w)

def median_time(f, repeats:int)->float:
    ts = []
    for _ in range(repeats): t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts)//2]

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default='.gpudata', help='a folder of JPEGs (searched below)')
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--repeats', type=int, default=5)
    a = p.parse_args()
    from covid_fastai.inference import _jpeg_bytes
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    clf, files = classifier(dev), jpeg_files(a.data, a.bs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as on a busy machine; and the counts do not depend on it
    with ThreadPoolExecutor(4) as pool:
        loaded = [(f, _jpeg_bytes(f), None) for f in files]
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter('always')
            out = decode(clf, loaded, pool)   # also the warm-up (nvJPEG's decoder, the allocator)
        fell = [str(w.message) for w in said if "JPEG decoder refused" in str(w.message)]
        on_dev = sum(x is not None and x.device.type == dev.type for _, x, _ in out)
        print(f'{on_dev} of {len(out)} JPEGs decoded on {dev.type}' + (f'; FELL BACK TO THE CPU: {fell[0]}' if fell else ''))
        if fell:   # the decoder's own error, whole
            try: torchvision.io.decode_jpeg([loaded[0][1]], mode=ImageReadMode.GRAY, device=dev)
            except RuntimeError as e: print(f'decode_jpeg on one file: {e!r}')
        b = open(files[0], 'rb').read(); half = '/tmp/gpu_decode_path_half.jpeg'; open(half, 'wb').write(b[:len(b)//2])
        with warnings.catch_warnings(): warnings.simplefilter('ignore'); broken = decode(clf, loaded[:3] + [(half, _jpeg_bytes(half), None)], pool)
        print('a batch with a JPEG cut in half: ' + '; '.join(f"{'error' if e else 'decoded'}{' (the cut one)' if f == half else ''}"
                                                              for f, _, e in broken) + (' -> right' if [e is not None for _, _, e in broken] == [False]*3 + [True] else ' -> WRONG'))
        ops = ops_per_batch(clf, loaded, pool)
        print(f'device {dev}, batch {len(files)}: {sum(ops.values())} torch operations a batch '
              f'({sum(ops.values())/len(files):.1f} an image); most: {", ".join(f"{k} {v}" for k, v in ops.most_common(6))}')
        if dev.type == 'cuda': print(f'operations that wait for the GPU: {syncs_per_batch(clf, loaded, pool)} a batch')
        t_bytes = median_time(lambda: [_jpeg_bytes(f) for f in files], a.repeats)
        t_dec = median_time(lambda: decode(clf, loaded, pool), a.repeats)
        print(f'_jpeg_bytes, one thread: {1000*t_bytes:.1f} ms a batch; _decode_jpegs: {1000*t_dec:.1f} ms a batch '
              f'({len(files)/t_dec:.0f} images/s)')
        if dev.type == 'cuda':   # beside the network, as `predict` overlaps them
            xs = [x for _, x, _ in decode(clf, loaded, pool)]
            t_net = median_time(lambda: (clf._probs(xs), torch.cuda.synchronize()), a.repeats)
            def both():
                with ThreadPoolExecutor(1) as ahead:
                    fut = ahead.submit(decode, clf, loaded, pool); clf._probs(xs); fut.result()
            t_both = median_time(both, a.repeats)
            print(f'network alone {1000*t_net:.1f} ms; decoding beside the network {1000*t_both:.1f} ms '
                  f'(sum of the two {1000*(t_net + t_dec):.1f})')
            clf.gpu_decode = True
            torch.set_num_threads(threads)   # predict as gpu_check times it: torch's own thread count
            many = (files * 32)[:32*a.bs]
            clf.predict(many[:2*a.bs], bs=a.bs)
            t = median_time(lambda: clf.predict(many, bs=a.bs), 2)
            print(f'predict(gpu_decode), {len(many)} files, {threads} torch threads, a random model without an OOD description: {len(many)/t:.0f} images/s')
