"""Helpers shared by the benchmarks: the image rows, machine facts, statistics and Markdown tables."""
from __future__ import annotations
import os, platform, statistics, sys, time, warnings
from pathlib import Path

import torch


def quiet():
    "Silence the warnings (missing images, deprecations) that would bury the benchmark's output."
    warnings.filterwarnings('ignore')
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')   # for subprocesses and DataLoader workers


def balanced(data:str|None=None):
    "The balanced selection (every COVID-19 row and as many Normal rows) with images that exist and decode."
    import contextlib, io
    from covid_fastai.train import balanced_rows
    with contextlib.redirect_stdout(io.StringIO()): return balanced_rows(data)   # without check_images' progress bar


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


# ---------------------------------------------------------------- other processes' load (this machine is shared)
def _system_busy()->float:
    "CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq, steal), from /proc/stat."
    f = Path('/proc/stat').read_text().split('\n', 1)[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, f[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf('SC_CLK_TCK')


def _own_cpu()->float:
    "CPU seconds of this process, its finished children and its live descendants."
    import resource
    tick, me = os.sysconf('SC_CLK_TCK'), os.getpid()
    total = sum(getattr(resource.getrusage(w), k) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                for k in ('ru_utime', 'ru_stime'))
    parent, cpu = {}, {}
    for d in os.listdir('/proc'):
        if not d.isdigit() or int(d) == me: continue
        try: s = Path(f'/proc/{d}/stat').read_text()
        except OSError: continue
        f = s[s.rfind(')')+2:].split()
        parent[int(d)], cpu[int(d)] = int(f[1]), (int(f[11]) + int(f[12])) / tick
    def mine(pid):
        while pid in parent:
            pid = parent[pid]
            if pid == me: return True
        return False
    return total + sum(c for pid, c in cpu.items() if mine(pid))


class LoadMeter:
    "Wall seconds of a stretch of work, the cores other processes kept busy meanwhile (0 on a quiet machine), and its own CPU seconds."
    available = Path('/proc/stat').exists()
    def start(self):
        if self.available: self.busy0, self.own0 = _system_busy(), _own_cpu()
        self.t0 = time.perf_counter()
        return self
    def stop(self)->tuple[float, float, float]:
        "(wall seconds, cores used by other processes on average, CPU seconds of this process tree); nan where /proc is missing."
        wall = time.perf_counter() - self.t0
        if not self.available: return wall, float('nan'), float('nan')
        own = _own_cpu() - self.own0
        others = (_system_busy() - self.busy0) - own
        return wall, max(0., others) / max(wall, 1e-9), own


def other_load(seconds:float=1.0)->float:
    "Cores that other processes keep busy, measured over `seconds`."
    m = LoadMeter().start()
    time.sleep(seconds)
    return m.stop()[1]


def wait_for_quiet(max_wait:float, threshold:float=0.2)->float:
    "Wait (up to `max_wait` s) until other processes use under `threshold` cores; the load last seen."
    deadline, load = time.monotonic() + max_wait, other_load()
    while load >= threshold and time.monotonic() < deadline:
        print(f"  (other processes keep {load:.1f} cores busy; waiting for a quiet machine)", flush=True)
        time.sleep(5)
        load = other_load()
    return load
