"""Bad inputs, as hospital systems export them: each gets a clear outcome from train, evaluate and predict.

The images are real: radiographs of the shared copy, re-saved or damaged in a temporary folder."""
import os, json, shutil, struct, zlib
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image
from hypothesis import given, settings, strategies as st, HealthCheck
from conftest import run_cli
from covid_fastai.core import *
from covid_fastai.data import read_metadata, image_path, select_balanced, add_paths, _paths_in, COLUMNS, METADATA_CSV, IMAGES_SUBDIR
from covid_fastai.datablock import load_xray


def _png_header_only(path, w, h):
    "A PNG that claims `w` x `h` pixels: the shape of a decompression bomb, without the gigabytes."
    chunk = lambda kind, data: struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0))
                     + chunk(b'IDAT', zlib.compress(b'\x00' * 16)) + chunk(b'IEND', b''))


# name -> (how to make it from a real radiograph, readable?)
def _make(kind, src, dest):
    im = Image.open(src).convert('L')
    if kind == 'zero_byte': dest.write_bytes(b'')
    elif kind == 'truncated': dest.write_bytes(src.read_bytes()[:len(src.read_bytes())//3])
    elif kind == 'text': dest.write_text('Patient export failed\n')
    elif kind == 'bomb': _png_header_only(dest, 30000, 30000)
    elif kind == 'grey16': Image.fromarray(np.asarray(im, dtype=np.uint16)*200 + 1000).save(dest, format='PNG')
    elif kind == 'rgba': im.convert('RGBA').save(dest, format='PNG')
    elif kind == 'palette': im.convert('P').save(dest, format='PNG')
    elif kind == 'cmyk': im.convert('CMYK').save(dest, format='JPEG')
    return dest

BAD = {'zero_byte': 'a.jpeg', 'truncated': 'b.jpeg', 'text': 'c.jpeg', 'bomb': 'd.png'}
ODD = {'grey16': 'e.png', 'rgba': 'f.png', 'palette': 'g.png', 'cmyk': 'h.jpeg'}


@pytest.fixture(scope='module')
def bad_root(data_root, images, tmp_path_factory):
    "A dataset root in Kaggle layout: the balanced selection's real images, some Normal rows replaced by bad or odd files."
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        rows = select_balanced(read_metadata(data_root), images)
    root = tmp_path_factory.mktemp('bad')/'coronahack'
    folder = root/IMAGES_SUBDIR/'train'; folder.mkdir(parents=True)
    for p in rows.path: shutil.copy(p, folder)
    normal = rows[rows.target == 'Normal'].X_ray_image_name.tolist()
    meta = rows[COLUMNS].copy()
    for (kind, name), old in zip({**BAD, **ODD}.items(), normal):
        _make(kind, folder/old, folder/f'{kind}_{name}')
        (folder/old).unlink()
        meta.loc[meta.X_ray_image_name == old, 'X_ray_image_name'] = f'{kind}_{name}'
    meta.to_csv(root/METADATA_CSV)
    return root, folder


@pytest.mark.parametrize('kind', list(BAD))
def test_unreadable_images_raise_a_named_error(kind, bad_root):
    f = bad_root[1]/f'{kind}_{BAD[kind]}'
    with pytest.raises(UnreadableImageError, match=f.name): load_xray(f)


def test_decompression_bomb_is_refused_before_decoding(bad_root, tmp_path):
    with pytest.raises(UnreadableImageError, match=r'bomb_d.png: 900,000,000 pixels is over the limit of 50,000,000'):
        load_xray(bad_root[1]/'bomb_d.png')
    _png_header_only(tmp_path/'big.png', 8000, 8000)         # under Pillow's own limits, over covid_fastai's
    with pytest.raises(UnreadableImageError, match=r'big.png: 8000 x 8000 pixels is over the limit of 50,000,000'):
        load_xray(tmp_path/'big.png')


@pytest.mark.parametrize('kind', list(ODD))
def test_odd_modes_load_as_rgb(kind, bad_root):
    f = bad_root[1]/f'{kind}_{ODD[kind]}'
    im = load_xray(f)
    assert im.mode == 'RGB' and min(im.size) > 100
    a = np.asarray(im).astype(float)
    assert a.std() > 20                            # a radiograph, not a white or black sheet
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()   # grey: three equal channels
    src = Image.open(f)                                                          # the file's own values, or Pillow's grey of them
    src = np.asarray(src if src.mode.startswith('I') else src.convert('L'), dtype=float)
    assert np.corrcoef(a[..., 0].ravel(), src.ravel())[0, 1] > 0.99            # the same picture, not inverted or scrambled


@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'P'])
def test_transparent_pixels_become_black(mode, bad_root, tmp_path):
    grey = Image.open(next(bad_root[1].glob('*.jpeg'))).convert('L')
    alpha = np.full(grey.size[::-1], 255, np.uint8); alpha[:, :alpha.shape[1]//3] = 0   # the left third transparent
    im = Image.merge('LA', (grey, Image.fromarray(alpha)))
    if mode == 'RGBA': im = im.convert('RGBA')
    if mode == 'P': im = im.convert('RGBA').quantize(255); im.info['transparency'] = im.getpixel((0, 0))   # a palette entry marked transparent
    im.save(tmp_path/'x.png')
    a = np.asarray(load_xray(tmp_path/'x.png'))[..., 0].astype(float)
    third = a.shape[1]//3
    assert (a[:, :third] == 0).all()                                          # transparent: black, whatever lay beneath
    opaque = np.asarray(grey, dtype=float)[:, third+1:]
    assert np.corrcoef(a[:, third+1:].ravel(), opaque.ravel())[0, 1] > 0.99   # the rest as it was


def test_16bit_keeps_its_dynamic_range(bad_root, images):
    a = np.asarray(load_xray(bad_root[1]/'grey16_e.png'))[..., 0].astype(float)
    src = Image.open(bad_root[1]/'grey16_e.png'); raw = np.asarray(src, dtype=float)
    assert src.mode.startswith('I') and raw.max() > 255       # really 16-bit
    assert a.min() == 0 and a.max() == 255
    assert np.corrcoef(a.ravel(), raw.ravel())[0, 1] > 0.999  # scaled, not clipped


def test_file_that_disappears_after_listing(bad_root, tmp_path):
    f = tmp_path/'gone.jpeg'; shutil.copy(next(bad_root[1].glob('*.jpeg')), f)
    listed = [f]; f.unlink()
    with pytest.raises(UnreadableImageError, match='moved or deleted'): load_xray(listed[0])


@pytest.fixture(scope='module')
def bad_run(bad_root, tmp_path_factory):
    root, _ = bad_root
    out = tmp_path_factory.mktemp('badrun')/'run'
    res = run_cli('train', '--data', root, '--out', out, '--arch', 'resnet18', '--size', 32, '--frozen-epochs', 1,
                  '--unfrozen-epochs', 0, '--no-pretrained', '--num-workers', 0)
    return out, res


def _n_rows(bad_root): return len(pd.read_csv(bad_root[0]/METADATA_CSV))


def test_train_leaves_out_each_unreadable_file_with_its_reason(bad_run, bad_root):
    out, res = bad_run
    assert '4 unreadable image(s) left out' in res.stderr
    for kind, name in BAD.items(): assert f'{kind}_{name}' in res.stderr
    split = pd.read_csv(out/'split.csv')
    assert len(split) == _n_rows(bad_root) - 4
    assert set(f'{k}_{n}' for k, n in ODD.items()) <= set(split.X_ray_image_name)   # odd modes train
    assert (out/'model.json').is_file()


def test_train_strict_stops_on_the_first_bad_file(bad_root, tmp_path):
    res = run_cli('train', '--data', bad_root[0], '--out', tmp_path/'run', '--arch', 'resnet18', '--size', 32,
                  '--no-pretrained', '--strict', check=False)
    assert res.returncode == 2 and 'unreadable image' in res.stderr and 'Traceback' not in res.stderr
    assert not (tmp_path/'run').exists()


def test_evaluate_counts_unreadable_images(bad_run, bad_root, tmp_path):
    root, folder = bad_root
    run_cli('evaluate', '--model', bad_run[0], '--csv', root/METADATA_CSV, '--images', folder, '--out', tmp_path)
    m = json.loads((tmp_path/'metrics.json').read_text())
    assert m['left_out']['unreadable'] == 4 and m['n'] == _n_rows(bad_root) - 4
    errors = pd.read_csv(tmp_path/'predictions.csv').dropna(subset=['error'])
    assert sorted(errors.file.map(lambda f: f.split('/')[-1])) == sorted(f'{k}_{n}' for k, n in BAD.items())


def test_predict_reports_each_bad_file_and_predicts_the_rest(bad_run, bad_root):
    res = run_cli('predict', '--model', bad_run[0], bad_root[1], check=False)
    assert res.returncode == 1
    lines = dict(l.split('\t', 1) for l in res.stdout.strip().splitlines())
    n = _n_rows(bad_root)
    assert len(lines) == n
    for kind, name in BAD.items(): assert lines[str(bad_root[1]/f'{kind}_{name}')].startswith('ERROR\t')
    for kind, name in ODD.items(): assert lines[str(bad_root[1]/f'{kind}_{name}')].split('\t')[0] in ('Normal', 'COVID-19')
    assert f'4 of {n} file(s) could not be read' in res.stderr



# Files that decode but cannot be radiographs, and paths that are not files

def _a_good_file(folder): return next(p for p in sorted(folder.iterdir()) if not p.name.startswith(tuple({**BAD, **ODD})))


def _not_radiographs(folder):
    "A 1 x 1 PNG, a 100 x 5000 strip of noise and a flat 16-bit image: each was once called COVID-19 with p > 0.97."
    rng = np.random.default_rng(0)
    Image.new('L', (1, 1)).save(folder/'dot.png')
    Image.fromarray(rng.integers(0, 255, (5000, 100), dtype=np.uint8)).save(folder/'strip.png')
    Image.fromarray(np.full((600, 500), 7, dtype=np.uint16)).save(folder/'flat16.png')
    (folder/'loop.jpeg').symlink_to(folder/'loop.jpeg')                  # a link to itself: ELOOP
    (folder/'folder.jpeg').mkdir()                                       # a folder named like an image
    return {'dot.png': 'too small', 'strip.png': 'aspect ratio', 'flat16.png': 'blank', 'loop.jpeg': '', 'folder.jpeg': ''}


@pytest.mark.parametrize('cache', [True, False])
def test_predict_answers_each_non_radiograph_and_bad_path_with_its_reason(cache, bad_run, bad_root, tmp_path):
    expected = _not_radiographs(tmp_path)
    good = _a_good_file(bad_root[1])
    res = run_cli('predict', '--model', bad_run[0], good, tmp_path, '--json',                  # the folder stands for its images
                  *([] if cache else ['--no-cache']), check=False)
    assert res.returncode == 1 and 'Traceback' not in res.stderr
    out = {Path(r['file']).name: r for r in json.loads(res.stdout)}
    assert out[good.name]['label'] in ('Normal', 'COVID-19') and out[good.name]['error'] is None
    for name, why in expected.items():
        assert out[name]['label'] is None and out[name]['prob_covid'] is None and why in out[name]['error'], out[name]
    assert f'{len(expected)} of {len(expected) + 1} file(s) could not be read' in res.stderr


def test_train_leaves_out_non_radiographs(bad_root, tmp_path):
    from covid_fastai.data import select_balanced, read_metadata
    from covid_fastai.datablock import check_images
    root, folder = bad_root
    rows = select_balanced(read_metadata(root), folder).head(4).copy()
    good = str(_a_good_file(folder))
    rows['path'] = [str(tmp_path/n) for n in list(_not_radiographs(tmp_path))[:3]] + [good]
    with pytest.warns(UserWarning, match='3 unreadable image'): kept = check_images(rows)
    assert kept.path.tolist() == [good]
    with pytest.raises(UnreadableImageError, match='too small to be a radiograph'): check_images(rows, strict=True)


# Bad tables

def _root_with(tmp_path, meta, images=None):
    root = tmp_path/'root'; (root/IMAGES_SUBDIR/'train').mkdir(parents=True, exist_ok=True)
    meta.to_csv(root/METADATA_CSV, index=False)
    return root


@pytest.mark.parametrize('change, exc, words', [
    (lambda m: m.drop(columns='Label_2_Virus_category'), MetadataError, ['lacks column(s) Label_2_Virus_category']),
    (lambda m: m.assign(Label=['Covid'] + list(m.Label[1:])), MetadataError, ["column Label", "line 2 ('Covid')"]),
    (lambda m: pd.concat([m, m.head(1)]), MetadataError, ['used twice', 'line 2']),
    (lambda m: m.assign(Dataset_type='VALID'), MetadataError, ['column Dataset_type', 'VALID']),
])
def test_bad_tables_name_file_column_and_row(change, exc, words, metadata, tmp_path):
    root = _root_with(tmp_path, change(metadata.head(20).reset_index(drop=True)))
    with pytest.raises(exc) as e: read_metadata(root)
    for w in [str(root/METADATA_CSV), *words]: assert w in str(e.value)
    res = run_cli('summary', '--data', root, check=False)
    assert res.returncode == 2 and 'Traceback' not in res.stderr and words[0] in res.stderr


def test_missing_csv(tmp_path):
    with pytest.raises(DataNotFoundError, match='kaggle datasets download'): read_metadata(tmp_path/'none.csv')


def test_empty_selection_says_which_class(metadata, data_root, images, tmp_path):
    no_covid = metadata[metadata.Label_2_Virus_category != 'COVID-19']
    with pytest.raises(EmptySelectionError, match='No COVID-19 TRAIN rows'): select_balanced(no_covid, images)
    root = _root_with(tmp_path, metadata)      # every row, but an empty image folder
    res = run_cli('train', '--data', root, '--out', tmp_path/'run', '--no-pretrained', check=False)
    assert res.returncode == 2 and 'No COVID-19 TRAIN rows with an image file' in res.stderr


@pytest.mark.parametrize('name', ['../secret.jpeg', '/etc/passwd', 'sub/../../x.png', '..'])
def test_names_outside_the_folder_are_refused(name, metadata, images, tmp_path):
    meta = metadata.copy(); meta.loc[meta.Label == 'Normal', 'X_ray_image_name'] = [name] + list(meta[meta.Label == 'Normal'].X_ray_image_name[1:])
    root = _root_with(tmp_path, meta)
    res = run_cli('train', '--data', root, '--out', tmp_path/'run', '--no-pretrained', check=False)
    assert res.returncode == 2 and 'would resolve outside' in res.stderr and repr(name) in res.stderr


# Properties

segment = st.sampled_from(['..', '.', 'a', 'b.jpeg', '', 'x..y', '...', ' '])

@given(st.lists(segment, min_size=1, max_size=5), st.booleans())
@settings(max_examples=300, deadline=None)
def test_image_path_never_leaves_the_folder(parts, absolute):
    folder = Path('/data/coronahack/train')   # need not exist: the rule is about names
    name = ('/' if absolute else '') + '/'.join(parts)
    try: p = image_path(folder, name)
    except UnsafeImageNameError: return
    assert not absolute and p.resolve().is_relative_to(folder.resolve()) and p.resolve() != folder.resolve()


@pytest.fixture(scope='module')
def odd_folder(tmp_path_factory):
    "An image folder with a file, a subfolder with a file, a link inside it and a link that leaves it."
    root = tmp_path_factory.mktemp('odd'); folder = root/'images'
    (folder/'x..y').mkdir(parents=True)
    for f in [folder/'a', folder/'x..y'/'b.jpeg', root/'secret.jpeg']: f.write_bytes(b'image')
    (folder/'b.jpeg').symlink_to(folder/'a'); (folder/'...').symlink_to(root/'secret.jpeg')
    return folder


@given(names=st.lists(st.lists(segment, min_size=1, max_size=3).map('/'.join), min_size=1, max_size=6))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fast_paths_equal_image_path(names, odd_folder):
    "add_paths' one-listing shortcut gives what image_path on every name gives, refusals included."
    try: expected = [str(image_path(odd_folder, n)) for n in names]
    except UnsafeImageNameError:
        with pytest.raises(UnsafeImageNameError): _paths_in(odd_folder, names)
        return
    paths, found = _paths_in(odd_folder, names)
    assert paths == expected and found.tolist() == [Path(p).is_file() for p in expected]


text = st.text(st.characters(codec='utf-8', exclude_categories=('Cs', 'Cc')), min_size=1, max_size=12).filter(lambda s: s.strip() == s and s)
row = st.fixed_dictionaries({'X_ray_image_name': text, 'Label': st.sampled_from(['Normal', 'Pnemonia']),
                             'Dataset_type': st.sampled_from(['TRAIN', 'TEST']),
                             'Label_2_Virus_category': st.sampled_from([None, 'COVID-19', 'SARS']),
                             'Label_1_Virus_category': st.sampled_from([None, 'Virus', 'bacteria'])})

@given(rows=st.lists(row, min_size=1, max_size=20, unique_by=lambda r: (r['Dataset_type'], os.path.normpath(r['X_ray_image_name']))))   # 'a' and './a' are one file
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_valid_csvs_load_unchanged(rows, tmp_path):
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.to_csv(tmp_path/'m.csv')
    got = read_metadata(tmp_path/'m.csv')
    assert got.X_ray_image_name.tolist() == df.X_ray_image_name.tolist()
    assert got.Label_2_Virus_category.isna().tolist() == df.Label_2_Virus_category.isna().tolist()


@given(label=st.text(min_size=1, max_size=10).filter(lambda s: s.strip() not in ('Normal', 'Pnemonia') and s.strip() and ',' not in s and '"' not in s and '\n' not in s and '\r' not in s))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_unknown_labels_are_refused(label, tmp_path):
    pd.DataFrame([{'X_ray_image_name': 'a.jpeg', 'Label': label, 'Dataset_type': 'TRAIN'}], columns=COLUMNS).to_csv(tmp_path/'m.csv')
    with pytest.raises(MetadataError, match='column Label'): read_metadata(tmp_path/'m.csv')


# The data going in: links among the image names, the CSV's encoding and line ends, an image folder that is a file

def _root_with_images(tmp_path, metadata, images, n=6):
    "A dataset root with the first `n` Normal rows of the data and their real image files."
    rows = metadata[(metadata.Label == 'Normal') & metadata.X_ray_image_name.isin({p.name for p in images.iterdir()})].head(n)
    root = _root_with(tmp_path, rows)
    for name in rows.X_ray_image_name: shutil.copy(images/name, root/IMAGES_SUBDIR/'train'/name)
    return root, rows


def test_an_image_name_that_links_outside_the_folder_is_refused(metadata, images, tmp_path):
    root, rows = _root_with_images(tmp_path, metadata, images)
    folder, name = root/IMAGES_SUBDIR/'train', rows.X_ray_image_name.iloc[0]
    (tmp_path/'elsewhere.jpeg').write_bytes((folder/name).read_bytes())
    (folder/name).unlink(); (folder/name).symlink_to(tmp_path/'elsewhere.jpeg')      # a real radiograph, outside the folder
    with pytest.raises(UnsafeImageNameError, match=f"'{name}' would resolve outside"): add_paths(rows, folder)
    res = run_cli('train', '--data', root, '--out', tmp_path/'run', '--no-pretrained', check=False)
    assert res.returncode == 2 and 'would resolve outside' in res.stderr and name in res.stderr and 'Traceback' not in res.stderr
    assert f"is a symbolic link to {tmp_path/'elsewhere.jpeg'}: copy the image into the folder" in res.stderr   # says why, and the fix
    (folder/name).unlink(); (folder/name).symlink_to(folder/rows.X_ray_image_name.iloc[1])   # a link inside the folder is fine
    test = add_paths(rows, folder)
    assert len(test) == len(rows) and test.path.iloc[0] == str(folder/name)


def test_a_link_that_loops_among_the_images_is_one_missing_file(metadata, images, tmp_path):
    root, rows = _root_with_images(tmp_path, metadata, images)
    folder, name = root/IMAGES_SUBDIR/'train', rows.X_ray_image_name.iloc[0]
    (folder/name).unlink(); (folder/name).symlink_to(folder/name)                    # ELOOP
    with pytest.warns(UserWarning, match=f'1 of {len(rows)} rows have no image file'): found = add_paths(rows, folder, by='Label')
    assert found.X_ray_image_name.tolist() == rows.X_ray_image_name.iloc[1:].tolist()


@pytest.mark.parametrize('bom, newline', [(True, b'\n'), (False, b'\r\n'), (True, b'\r\n')])
def test_a_csv_with_a_byte_order_mark_or_windows_line_ends_reads_the_same(bom, newline, metadata, tmp_path):
    rows = metadata.head(20)
    rows.to_csv(tmp_path/'plain.csv', index=False)                                   # X_ray_image_name first: the mark would stick to it
    raw = (tmp_path/'plain.csv').read_bytes()
    (tmp_path/'odd.csv').write_bytes((b'\xef\xbb\xbf' if bom else b'') + raw.replace(b'\n', newline))
    got = read_metadata(tmp_path/'odd.csv')
    pd.testing.assert_frame_equal(got, read_metadata(tmp_path/'plain.csv'))
    assert got.X_ray_image_name.tolist() == rows.X_ray_image_name.tolist() and not got.Label.str.endswith('\r').any()


def test_an_image_folder_that_is_a_file_is_named(metadata, tmp_path):
    from covid_fastai.data import read_extra
    root = _root_with(tmp_path, metadata.head(20))
    folder = root/IMAGES_SUBDIR/'train'; folder.rmdir(); folder.write_text('not a folder')
    with pytest.raises(DataNotFoundError, match=f'Image folder {folder} is a file, not a folder'): add_paths(metadata.head(2), folder)
    res = run_cli('train', '--data', root, '--out', tmp_path/'run', '--no-pretrained', check=False)
    assert res.returncode == 2 and f'{folder} is a file, not a folder' in res.stderr and 'Traceback' not in res.stderr
    with pytest.raises(DataNotFoundError, match=f'image folder {folder} is a file, not a folder'): read_extra(f'{root/METADATA_CSV}:{folder}')


# Numbers out of range: one line naming the option, exit code 2, nothing written

BAD_NUMBERS = [(('train', '--size', 8), '--size 8'), (('train', '--bs', 1), '--bs 1'), (('train', '--ratio', 'nan'), '--ratio nan'),
               (('train', '--valid-pct', 0), '--valid-pct 0'), (('train', '--folds', 3, '--fold', 0), '--fold 0: choose a fold from 1 to 3'),
               (('train', '--prevalence', 2), '--prevalence 2'), (('predict', '--bs', 0), '--bs 0'), (('evaluate', '--bs', -1), '--bs -1'),
               (('evaluate', '--prevalence', 'nan'), '--prevalence nan'), (('serve', '--port', 70000), '--port 70000'),
               (('serve', '--max-upload-mb', -1), '--max-upload-mb -1')]

@pytest.mark.parametrize('args, says', BAD_NUMBERS, ids=[' '.join(map(str, a)) for a, _ in BAD_NUMBERS])
def test_numbers_out_of_range_are_one_line_errors(args, says, small_run, images, tmp_path):
    command, out = args[0], tmp_path/'out'
    where = (['--out', out, '--no-pretrained'] if command == 'train' else ['--model', small_run[0]] + (['--out', out] if command == 'evaluate' else []))
    files = [next(images.iterdir())] if command == 'predict' else []
    res = run_cli(command, *where, *args[1:], *files, check=False, timeout=120)
    assert res.returncode == 2 and says in res.stderr and 'Traceback' not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith('covid-fastai: error:') and not out.exists()


def test_an_unreadable_image_gives_its_place_to_another_of_its_class(data_root, images, tmp_path):
    "The README's promise: a damaged image of the balanced selection is replaced by another of its class, not dropped."
    import warnings
    from covid_fastai.train import balanced_rows
    from covid_fastai.data import target_of
    meta = read_metadata(data_root)
    meta = meta[(meta.Dataset_type == 'TRAIN') & meta.X_ray_image_name.isin({p.name for p in images.iterdir()})]
    target = target_of(meta, 'covid-normal')
    covid, normal = meta[target == 'COVID-19'], meta[target == 'Normal']
    meta = pd.concat([covid, normal.iloc[:2*len(covid)]])             # Normals to spare: a selection at ratio 0.5 takes half
    root = tmp_path/'coronahack'; folder = root/IMAGES_SUBDIR/'train'; folder.mkdir(parents=True)
    for name in meta.X_ray_image_name: shutil.copy(images/name, folder)
    meta[COLUMNS].to_csv(root/METADATA_CSV)
    before = balanced_rows(root, ratio=0.5)
    chosen = set(before[before.target == 'Normal'].X_ray_image_name)
    damaged = sorted(chosen)[0]
    (folder/damaged).write_bytes((folder/damaged).read_bytes()[:200])  # truncated
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        after = balanced_rows(root, ratio=0.5)
    assert any(damaged in str(x.message) for x in w)                  # said, by name
    now = set(after[after.target == 'Normal'].X_ray_image_name)
    assert len(now) == len(chosen) and damaged not in now            # as many Normals as before, without it...
    assert len(now - chosen) == 1                                     # ...one other Normal in its place
    assert set(after[after.target == 'COVID-19'].X_ray_image_name) == set(before[before.target == 'COVID-19'].X_ray_image_name)


def test_a_16bit_tiff_whose_zero_is_white_is_not_inverted(bad_root, tmp_path):
    "TIFF's MinIsWhite (photometric 0), as MONOCHROME1 in DICOM: Pillow turns 8-bit ones the right way up, not 16-bit ones."
    grey = np.asarray(Image.open(next(bad_root[1].glob('*.jpeg'))).convert('L'), dtype=np.uint16) * 257   # 0-65535
    Image.fromarray(grey).save(tmp_path/'black0.tif')
    Image.fromarray(65535 - grey).save(tmp_path/'white0.tif', tiffinfo={262: 0})   # stored the other way, and saying so
    assert Image.open(tmp_path/'white0.tif').tag_v2[262] == 0
    a, b = (np.asarray(load_xray(tmp_path/f, grey=True), dtype=float) for f in ('black0.tif', 'white0.tif'))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99 and np.abs(a - b).max() <= 1
