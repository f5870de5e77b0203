"""Run the module notebooks and keep their outputs, so that they read as documentation with their examples' results.

nbdev_test runs the notebooks but keeps nothing; this runs each one in a fresh IPython shell (execnb, as nbdev does)
and writes the outputs into it. The outputs come from the sample that ships with the package, so they are the same on
every machine and show what a new user sees; cells marked `#| slow` or `#| eval: false` are left as they are. Run `make outputs`
after changing a notebook's examples (it runs `nbdev_clean` after)."""
import os, sys
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

ROOT = Path(__file__).resolve().parents[1]


def _skip(cell)->bool:
    "Leave `#| slow` and `#| eval: false` cells unexecuted (and their outputs as they are), as nbdev_test does."
    return cell.cell_type == 'code' and any(l.strip().replace(' ', '').lower() in ('#|slow', '#|eval:false') for l in cell.source.splitlines())


def run(path:Path):
    nb = read_nb(path)
    shell = CaptureShell(path=path.parent)
    os.chdir(path.parent)
    shell.run_all(nb, exc_stop=True, preproc=_skip)
    write_nb(nb, path)
    print(f"ran {path.name}")


if __name__ == '__main__':
    os.environ['COVID_FASTAI_DATA'] = str(ROOT/'covid_fastai'/'sample')
    os.environ.setdefault('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
    names = sys.argv[1:] or sorted(p.name for p in (ROOT/'nbs').glob('0*.ipynb'))
    for n in names: run(ROOT/'nbs'/n)
