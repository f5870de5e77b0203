"""What channels_last (NHWC) changes on this machine: a training step and a forward pass of each architecture, the model
in PyTorch's default layout against the same model converted with `.to(memory_format=torch.channels_last)`, as
`covid_learner` and `CovidClassifier` convert it. The input stays NCHW, as fastai's batches are.

    python bench/bench_channels_last.py [--archs resnet50,resnet18,densenet121,efficientnet_lite0] [--rounds 3]

The two layouts take turns, `--rounds` times, after one warm-up each; ratios are default ÷ channels_last of the medians
(above 1: channels_last is faster). The last column is the largest difference between the two models' logits on the
same batch (the same weights), to show the layout changes rounding only.
"""
import argparse, statistics, time, warnings
import torch, torch.nn.functional as F
from fastai.vision.all import create_vision_model
from covid_fastai.learner import arch_fn
from _common import machine_info, print_block


def models(arch:str)->dict:
    "`arch` with two outputs, in each layout, with the same weights, and an AdamW for each."
    torch.manual_seed(0)
    base = create_vision_model(arch_fn(arch), 2, pretrained=False)
    out = {}
    for cl in (False, True):
        m = create_vision_model(arch_fn(arch), 2, pretrained=False)
        m.load_state_dict(base.state_dict())
        if cl: m = m.to(memory_format=torch.channels_last)
        out[cl] = (m, torch.optim.AdamW(m.parameters(), 1e-4))
    return out


def timed(f, n:int=1)->float:
    t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n


def bench(arch:str, a)->dict:
    ms = models(arch)
    x, y = torch.randn(a.bs, 3, a.size, a.size), torch.randint(0, 2, (a.bs,))
    xi = torch.randn(a.infer_bs, 3, a.size, a.size)
    def step(cl):
        m, opt = ms[cl]; m.train()
        loss = F.cross_entropy(m(x), y); opt.zero_grad(); loss.backward(); opt.step()
    @torch.inference_mode()
    def forward(cl): return ms[cl][0].eval()(xi)
    diff = (forward(False) - forward(True)).abs().max().item()
    for cl in (False, True): step(cl); forward(cl)   # warm-up: oneDNN picks its kernels on the first call
    train, infer = {False: [], True: []}, {False: [], True: []}
    for _ in range(a.rounds):
        for cl in (False, True):
            train[cl].append(timed(lambda: step(cl), 2))
            infer[cl].append(timed(lambda: forward(cl)))
    med = lambda d: {k: statistics.median(v) for k, v in d.items()}
    t, i = med(train), med(infer)
    return dict(arch=arch, train=t, infer=i, train_ratio=t[False]/t[True], infer_ratio=i[False]/i[True], diff=diff)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--archs', default='resnet50,resnet18,densenet121,efficientnet_lite0')
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--bs', type=int, default=8, help='batch of the training step')
    p.add_argument('--infer-bs', type=int, default=32, help='batch of the forward pass')
    p.add_argument('--rounds', type=int, default=3)
    a = p.parse_args()
    warnings.filterwarnings('ignore')
    print_block('Settings', vars(a)); print_block('Machine', machine_info()); print()
    print(f"{a.size} px; training step at batch {a.bs}, forward at batch {a.infer_bs}; medians of {a.rounds} rounds")
    print('| architecture | training step s: default / channels_last | ratio | forward s: default / channels_last | ratio | max logit difference |')
    print('| --- | --- | --- | --- | --- | --- |')
    for arch in a.archs.split(','):
        r = bench(arch, a)
        print(f"| {arch} | {r['train'][False]:.3f} / {r['train'][True]:.3f} | {r['train_ratio']:.2f}x | "
              f"{r['infer'][False]:.3f} / {r['infer'][True]:.3f} | {r['infer_ratio']:.2f}x | {r['diff']:.1e} |", flush=True)


if __name__ == '__main__': main()
