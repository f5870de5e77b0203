"Shared fixtures: the data this machine has (the packaged sample when there is no dataset), and one small training run reused by the command-line tests."
import os, re, signal, subprocess, sys, time
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent/'covid-fastai')]   # the installed console script itself
os.environ.setdefault('PYTHONFAULTHANDLER', '1')   # a command stopped for taking too long (`stop`) prints where each of its threads was


def ctrl_c_reaches():
    "For `Popen(preexec_fn=...)`: SIGINT acts as Ctrl-C in a terminal. A script's background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def selection_root(data_root, images, root:Path)->Path:
    "A dataset root at `root` with the balanced covid-normal selection of `data_root` alone (its CSV rows and image files), to move or damage."
    import shutil, warnings
    from covid_fastai.data import read_metadata, select_balanced, COLUMNS, METADATA_CSV, IMAGES_SUBDIR
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        rows = select_balanced(read_metadata(data_root), images)
    folder = root/IMAGES_SUBDIR/'train'; folder.mkdir(parents=True)
    for p in rows.path: shutil.copy(p, folder)
    rows[COLUMNS].to_csv(root/METADATA_CSV)
    return root


@pytest.fixture(scope='session', autouse=True)
def decode_cache(tmp_path_factory):
    "The decode cache of the tests and the commands they start: a temporary folder (`make test` shares one between its workers), never the user's."
    if not os.environ.get('COVID_FASTAI_CACHE'): os.environ['COVID_FASTAI_CACHE'] = str(tmp_path_factory.mktemp('decoded'))
    return Path(os.environ['COVID_FASTAI_CACHE'])


@pytest.fixture(scope='session')
def data_root():
    "The dataset root: $COVID_FASTAI_DATA, the development copy beside the checkout, else the packaged sample."
    from covid_fastai.data import find_data_root
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        root = find_data_root()
    finally: os.chdir(cwd)
    os.environ['COVID_FASTAI_DATA'] = str(root)   # for the subprocesses
    return root


@pytest.fixture(scope='session')
def images(data_root):
    from covid_fastai.data import images_dir
    return images_dir(data_root)


@pytest.fixture(scope='session')
def metadata(data_root):
    from covid_fastai.data import read_metadata
    return read_metadata(data_root)


def with_files(rows, folder):
    "Which of `rows` have their image file in `folder`."
    return rows.X_ray_image_name.isin({p.name for p in Path(folder).iterdir()})


def started(argv, err:Path, **kw)->subprocess.Popen:
    """`Popen(argv)` with its output discarded and its stderr in the file `err`. Never a pipe that no one reads while the
    test waits: at 64 KB of warnings it fills, the process stops in its next write, and the test waits for ever."""
    with open(err, 'w') as f: return subprocess.Popen(list(map(str, argv)), stdout=subprocess.DEVNULL, stderr=f, text=True, **kw)


def stop(proc:subprocess.Popen)->str:
    """Stop a process that took too long: SIGABRT, on which Python prints where each of its threads was (PYTHONFAULTHANDLER),
    then SIGKILL if it is still there a minute later. Its stderr where that is a pipe, as far as it could be read (processes
    it started may hold the pipe open after it ends)."""
    proc.send_signal(signal.SIGABRT)
    try: return proc.communicate(timeout=60)[1] or ''
    except subprocess.TimeoutExpired as e:
        proc.kill(); proc.wait()
        return e.stderr.decode(errors='replace') if isinstance(e.stderr, bytes) else (e.stderr or '')


def where(err:str)->str:
    "What a stopped process's stderr says of where it was: faulthandler's report on, without its list of extension modules."
    i = err.rfind('Fatal Python error')
    return re.sub(r'\nExtension modules:.*', '', err[i:] if i >= 0 else err[-3000:], flags=re.S)[:8000]


def wait_until(done, proc:subprocess.Popen, err:Path, timeout:float=600):
    "Poll `done()` until true; fail, with the end of the process's stderr, if the process ends first or `timeout` s pass."
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None: pytest.fail(f"the process ended ({proc.returncode}) before it got there:\n{err.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"the process did not get there in {timeout} s; where it was:\n{where(err.read_text())}")
        time.sleep(0.01)


def run_cli(*args, check=True, timeout=900, **kw):
    "Run `covid-fastai ARGS` in a fresh process; return the CompletedProcess. One that has not ended in `timeout` s is stopped and fails the test."
    with subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw) as proc:
        try: out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            err = stop(proc)
            raise AssertionError(f"covid-fastai {' '.join(map(str, args))} did not end in {timeout} s; where it was:\n{where(err)}") from None
        except BaseException: proc.kill(); raise   # pytest-timeout's, or Ctrl-C: not left running (leaving `with` waits for it)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and res.returncode != 0: raise AssertionError(f"covid-fastai {' '.join(map(str, args))} failed ({res.returncode}):\n{res.stderr}")
    return res


@pytest.fixture(scope='session')
def small_run(data_root, tmp_path_factory):
    "The issue's small run: ResNet50 at 64 px, one epoch frozen and one unfrozen, no pretrained weights."
    out = tmp_path_factory.mktemp('run')/'small'
    res = run_cli('train', '--data', data_root, '--out', out, '--size', 64, '--frozen-epochs', 1, '--unfrozen-epochs', 1,
                  '--no-pretrained', '--num-workers', 0)
    return out, res


@pytest.fixture(scope='session')
def unseen(data_root, metadata, small_run, tmp_path_factory):
    "A CoronaHack-format CSV of TRAIN rows whose images the small run never used (Normal ones and other classes)."
    import pandas as pd
    used = set(pd.read_csv(small_run[0]/'split.csv').X_ray_image_name)
    rows = metadata[(metadata.Dataset_type == 'TRAIN') & ~metadata.X_ray_image_name.isin(used)]
    csv = tmp_path_factory.mktemp('unseen')/'unseen.csv'
    rows.to_csv(csv, index=False)
    return csv, rows
