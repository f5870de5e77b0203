"predict(processes=16) on the GPU: time in the network's part (_probs) against waiting for decoded batches, with torch's default threads and with one."
# Run from the repository root on a CUDA machine, after `python bench/gpu_check.py --export-subset .gpudata` (its JPEGs are read).
import time, glob, torch
if __name__ == '__main__':
    from covid_fastai.learner import covid_model
    from covid_fastai.inference import CovidClassifier
    jpegs = sorted(f for f in glob.glob('.gpudata/**/*', recursive=True) if f.lower().endswith(('.jpeg', '.jpg')))
    files = (jpegs * 21)[:2048]
    meta = {'arch': 'resnet50', 'size': 256, 'threshold': 0.5, 'classes': ['Normal', 'COVID-19'], 'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}
    clf = CovidClassifier(covid_model('resnet50', 2, 256), meta, torch.device('cuda'))
    spent = {'probs': 0.}
    orig = CovidClassifier._probs
    def timed(self, xs, tta=True):
        t = time.perf_counter(); r = orig(self, xs, tta); spent['probs'] += time.perf_counter() - t; return r
    CovidClassifier._probs = timed
    print('torch threads', torch.get_num_threads(), flush=True)
    for threads in (torch.get_num_threads(), 1):
        torch.set_num_threads(threads)
        for procs, workers in ((16, 4), (0, 4), (0, 16)):
            clf.predict(files[:128], bs=64, processes=procs, workers=workers)
            spent['probs'] = 0.; t = time.perf_counter()
            clf.predict(files, bs=64, processes=procs, workers=workers)
            s = time.perf_counter() - t
            print(f"torch threads {threads:2d}, processes {procs:2d}, threads {workers:2d}: {len(files)/s:6.0f} images/s; {1000*s/32:.0f} ms a batch, "
                  f"of which the network's part {1000*spent['probs']/32:.1f} ms", flush=True)
        clf.close()
