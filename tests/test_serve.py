"""`covid-fastai serve` as a real server in a subprocess, on the model of the small training run: `POST /predict` answers
the records of `predict --json`, the page works in headless Chromium, uploads are limited and not kept, Ctrl-C stops it.

The browser is Debian's Chromium (`apt-get install chromium`, as `.ci/run` does), driven by Playwright's Python client;
Playwright's own browser download is never used."""
import json, os, re, signal, socket, subprocess, time
from pathlib import Path
import httpx, pytest
from conftest import CLI, ctrl_c_reaches, run_cli

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']
LIMIT_MB = 2   # the server's upload limit here: small, so that a request over it is cheap to send


@pytest.fixture(scope='module')
def radiographs(images):
    "Three real radiographs of the data, each under the server's upload limit."
    return [f for f in sorted(images.iterdir()) if f.stat().st_size < 1e6][:3]


@pytest.fixture(scope='module')
def broken(tmp_path_factory):
    f = tmp_path_factory.mktemp('broken')/'broken.jpeg'
    f.write_bytes(b'a file that is not an image')
    return f


def start_server(model, scratch, logs):
    """`covid-fastai serve --port 0 --cpu` on `model`, with TMPDIR `scratch` (to see what uploads leave behind) and its
    output in `logs`: the URL it prints (the port the system gave it) and the process, once it answers."""
    with open(logs/'out', 'w') as out, open(logs/'err', 'w') as err:
        p = subprocess.Popen([*CLI, 'serve', '--model', str(model), '--port', '0', '--cpu',
                              '--max-upload-mb', str(LIMIT_MB)], stdout=out, stderr=err, env={**os.environ, 'TMPDIR': str(scratch)},
                             preexec_fn=ctrl_c_reaches)
    url, deadline = None, time.monotonic() + 180
    while True:
        if p.poll() is not None: pytest.fail(f"serve exited with {p.returncode}:\n{(logs/'err').read_text()}")
        if url is None and (printed := re.search(r' at (http://127\.0\.0\.1:(\d+)/) ', (logs/'out').read_text())):
            url = printed[1]; assert int(printed[2]) > 0   # the port it listens on, not the 0 it was given
        try:
            if url and httpx.get(url + 'model', timeout=5).status_code == 200: return url, p
        except httpx.TransportError: pass
        if time.monotonic() > deadline: p.kill(); pytest.fail(f"serve did not answer in 180 s:\n{(logs/'err').read_text()}")
        time.sleep(0.5)


@pytest.fixture(scope='module')
def server(small_run, tmp_path_factory):
    "The module's server (`start_server`): its URL, process, TMPDIR and log folder."
    scratch, logs = tmp_path_factory.mktemp('server_tmp'), tmp_path_factory.mktemp('server_logs')
    url, p = start_server(small_run[0], scratch, logs)
    yield url, p, scratch, logs
    if p.poll() is None: p.kill(); p.wait()


def post(url, *files, **kw):
    "POST /predict with `files` (paths, or (name, bytes) pairs) in the field `file`."
    parts = [('file', f if isinstance(f, tuple) else (Path(f).name, Path(f).read_bytes())) for f in files]
    return httpx.post(url + 'predict', files=parts, timeout=120, **kw)


def test_serve_says_where_it_listens_and_describes_the_model(server, small_run):
    url, _, _, logs = server
    meta = json.loads((small_run[0]/'model.json').read_text())
    info = httpx.get(url + 'model').json()
    assert (info['arch'], info['size'], info['classes'], info['threshold']) == (meta['arch'], meta['size'], meta['classes'], meta['threshold'])
    assert info['max_upload_bytes'] == LIMIT_MB * 10**6 and info['heatmaps'] is False
    assert f'at {url}' in (logs/'out').read_text()
    page = httpx.get(url)
    assert page.status_code == 200 and '<input id="files" type="file" multiple>' in page.text


def test_predict_answers_the_records_of_predict_json(server, small_run, radiographs, broken):
    url = server[0]
    res = post(url, *radiographs, broken)
    assert res.status_code == 200
    served = res.json()
    cli = run_cli('predict', '--model', small_run[0], '--json', *radiographs, broken, check=False)
    expected = json.loads(cli.stdout)
    assert [r['file'] for r in served] == [f.name for f in radiographs] + ['broken.jpeg']   # the uploaded names
    for s, e in zip(served, expected):
        assert set(s) == set(e) and s['label'] == e['label']
        assert s['prob_covid'] == pytest.approx(e['prob_covid'], abs=1e-5) if e['prob_covid'] is not None else s['prob_covid'] is None
    assert served[-1]['error'] == expected[-1]['error'].replace(str(broken), 'broken.jpeg')     # the reason, naming the upload
    assert served[-1]['error'].startswith('broken.jpeg: not a readable image')


def test_an_upload_over_the_limit_is_refused_with_413(server, radiographs):
    url = server[0]
    res = post(url, ('big.png', b'\0' * int(LIMIT_MB * 1.2e6)))
    assert res.status_code == 413 and f'over the limit of {LIMIT_MB} MB' in res.json()['detail']
    assert post(url, radiographs[0]).status_code == 200                                      # and the server goes on


@pytest.fixture(scope='module')
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does")
    sync_api = pytest.importorskip('playwright.sync_api', reason='playwright (a dev requirement) is not installed')
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _card(page, name, timeout=120_000):
    "The result card of the file `name`, once it is answered."
    card = page.locator(f'li.result[data-file="{name}"][data-state]')
    card.wait_for(timeout=timeout)
    return card


@pytest.mark.timeout(600)   # a browser that stops answering Playwright fails this test, not the run
def test_the_page_in_chromium(server, browser, radiographs, broken, tmp_path):
    url = server[0]
    expected = {r['file']: r for r in post(url, *radiographs[:2]).json()}
    page = browser.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    page.wait_for_function("document.getElementById('model').textContent.startsWith('Model:')")
    # one radiograph, then another with a broken file in the same drop: each gets its own answer
    page.set_input_files('#files', str(radiographs[0]))
    card = _card(page, radiographs[0].name)
    assert card.get_attribute('data-state') == 'done'
    assert card.locator('.label').inner_text() == expected[radiographs[0].name]['label']
    assert float(card.get_attribute('data-prob-covid')) == pytest.approx(expected[radiographs[0].name]['prob_covid'], abs=1e-4)   # a batch of one vs two: float noise
    shown = card.locator('.prob[data-class="COVID-19"] .value').inner_text()
    assert shown == f"{100 * float(card.get_attribute('data-prob-covid')):.1f} %"
    assert card.locator('.prob').count() == 2 and card.locator('.error').is_hidden()
    page.set_input_files('#files', [str(broken), str(radiographs[1])])
    bad, good = _card(page, 'broken.jpeg'), _card(page, radiographs[1].name)
    assert bad.get_attribute('data-state') == 'error'
    assert bad.locator('.error').inner_text().startswith('broken.jpeg: not a readable image')
    assert good.get_attribute('data-state') == 'done' and good.locator('.label').inner_text() == expected[radiographs[1].name]['label']
    # a file over the limit is refused on the page, before it is sent
    big = tmp_path/'big.dcm'; big.write_bytes(b'\0' * int(LIMIT_MB * 1.2e6))
    page.set_input_files('#files', str(big))
    assert f'over the limit of {LIMIT_MB} MB' in _card(page, 'big.dcm').locator('.error').inner_text()
    assert page.locator('li.result').count() == 4
    page.screenshot(path=str(tmp_path/'page.png'), full_page=True)
    page.close()


def test_a_busy_port_is_one_line(small_run):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen(); port = s.getsockname()[1]
        res = run_cli('serve', '--model', small_run[0], '--port', port, check=False, timeout=120)
    assert res.returncode == 2 and res.stderr.strip() == (
        f"covid-fastai: error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port or --host")


def test_a_second_ctrl_c_while_it_stops_prints_no_traceback(small_run, tmp_path):
    "Ctrl-C twice, as people press it when a server seems slow to stop, ends it quietly too."
    (scratch := tmp_path/'tmp').mkdir()
    _, p = start_server(small_run[0], scratch, tmp_path)   # answering, so uvicorn's own handling of Ctrl-C is in place: no fixed wait
    p.send_signal(signal.SIGINT); time.sleep(0.05); p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=60)
    assert rc in (0, -signal.SIGINT), rc   # a second Ctrl-C after the shutdown ends it as it ends any program
    assert 'Traceback' not in (tmp_path/'err').read_text(), (tmp_path/'err').read_text()


def test_ctrl_c_stops_it_and_nothing_uploaded_is_left(small_run, radiographs, broken, tmp_path):
    "A server of its own: uploads (one of them unreadable, one over the limit), then Ctrl-C."
    (scratch := tmp_path/'tmp').mkdir()
    url, p = start_server(small_run[0], scratch, tmp_path)
    try:
        assert post(url, *radiographs, broken).status_code == 200
        assert post(url, ('big.png', b'\0' * int(LIMIT_MB * 1.2e6))).status_code == 413
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 0, (tmp_path/'err').read_text()
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert 'Traceback' not in (tmp_path/'err').read_text()
    assert [p for p in scratch.iterdir() if not p.name.startswith('torchinductor')] == []   # torch's own compile cache may appear; no upload may
