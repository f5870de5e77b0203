"""Helpers shared by the benchmarks: the image rows, machine facts, statistics and Markdown tables."""
from __future__ import annotations
import os, platform, statistics, sys, warnings
from pathlib import Path

import torch


def quiet():
    "Silence the warnings (missing images, deprecations) that would bury the benchmark's output."
    warnings.filterwarnings('ignore')
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')   # for subprocesses and DataLoader workers


def balanced(data:str|None=None):
    "The balanced selection (every COVID-19 row and as many Normal rows) with images that exist and decode."
    from covid_fastai.train import balanced_rows
    return balanced_rows(data)


def cpu_model()->str:
    "The CPU's model name, from /proc/cpuinfo where there is one."
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or 'unknown'


def machine_info()->dict:
    "The facts that decide the timings: CPU, cores, torch threads and library versions."
    import fastai, torchvision, PIL
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return {'cpu': cpu_model(), 'os.cpu_count': os.cpu_count(), 'usable cores': cores,
            'torch threads': torch.get_num_threads(), 'torch interop threads': torch.get_num_interop_threads(),
            'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', 'unset'), 'oneDNN': torch.backends.mkldnn.is_available(),
            'cuda': torch.cuda.is_available(), 'python': platform.python_version(), 'torch': torch.__version__,
            'torchvision': torchvision.__version__, 'fastai': fastai.__version__, 'pillow': PIL.__version__,
            'platform': platform.platform()}


def print_block(title:str, d:dict):
    "Print `d` as an indented 'key: value' block under `title`."
    print(f"\n{title}")
    for k, v in d.items(): print(f"  {k}: {v}")


def stats(xs:list[float])->dict:
    "Median, min, max and count of `xs`."
    return {'median': statistics.median(xs), 'min': min(xs), 'max': max(xs), 'n': len(xs)}


def md_table(headers:list[str], rows:list[list])->str:
    "A GitHub Markdown table."
    line = lambda cells: '| ' + ' | '.join(str(c) for c in cells) + ' |'
    return '\n'.join([line(headers), line(['---'] * len(headers)), *map(line, rows)])


def fmt(x:float, digits:int=2)->str:
    "`x` rounded for a table."
    return f"{x:.{digits}f}"


def covid_fastai_cli()->str:
    "The installed `covid-fastai` console script beside this Python, or the name to find on PATH."
    p = Path(sys.executable).parent/'covid-fastai'
    return str(p) if p.exists() else 'covid-fastai'
