"""The out-of-distribution score of a batch in `predict`'s order of work (the network's pass, then the distances): in
NumPy, whose matrix product runs in OpenBLAS's threads, against in torch, in the threads the network used (or on its
GPU). A ResNet50 description fitted on random features of the library's sizes (4096 pooled and 512 last-layer
features, 98 training images); run from the repository root: `python bench/diag/ood_threads.py [--bs 64] [--busy N]`
(`--busy N`: N processes keep cores busy meanwhile, as `predict --processes N` decoding does)."""
import argparse, time, multiprocessing as mp
import numpy as np, torch

def spin(stop):
    while not stop.is_set(): sum(range(10_000))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--busy', type=int, default=0, help='processes that keep cores busy meanwhile')
    a = p.parse_args()
    stop = mp.Event(); busy = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(a.busy)]
    for b in busy: b.start()
    from covid_fastai.learner import covid_model
    from covid_fastai.ood import fit_ood, mahalanobis
    rng = np.random.default_rng(0)
    draw = lambda n: {'pooled': rng.normal(0, 1, (n, 4096)), 'last': rng.normal(0, 1, (n, 512))}
    ood, model = fit_ood(draw(98), draw(12)), covid_model('resnet50', 2, 64).eval()
    feats, x = {v: torch.as_tensor(f, dtype=torch.float32) for v, f in draw(a.bs).items()}, torch.randn(8, 3, 64, 64)
    numpy_way = lambda: np.max([mahalanobis(g, feats[v].double().numpy()) / ood.thresholds[v] for v, g in ood.gaussians.items()], 0)
    torch_way = lambda: ood.score(feats)
    assert np.allclose(numpy_way(), torch_way(), rtol=1e-9)
    print(f'torch threads {torch.get_num_threads()}; batch {a.bs}; {a.busy} busy processes beside')
    with torch.inference_mode():
        for name, score in [('NumPy (OpenBLAS threads)', numpy_way), ('torch (the network\'s threads)', torch_way)]:
            ts = []
            for _ in range(a.repeats):
                model(x)   # the network's pass first, as in predict
                t = time.perf_counter(); score(); ts.append(time.perf_counter() - t)
            print(f'{name}: {1000*np.median(ts):.1f} ms a batch (median of {a.repeats})')
    stop.set()
