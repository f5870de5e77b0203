"""DICOM radiographs, made here with pydicom from real radiographs of the data, read and predicted like the same image as PNG.

Each DICOM file stores the pixels of a PNG written beside it the way hospitals store them: MONOCHROME1 (high values
dark), 12 bits with a rescale slope and intercept, a VOI window that leaves a burnt-in frame out, no suffix, and
compressed (RLE by pydicom itself, JPEG baseline through Pillow). Read, each gives the PNG's pixels; predicted by
`covid-fastai predict` and `evaluate`, the PNG's answer; and `train` takes a CSV whose rows name .dcm files."""
import io, json
import numpy as np, pandas as pd, pydicom, pytest
from pathlib import Path
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (UID, ExplicitVRLittleEndian, DigitalXRayImageStorageForPresentation, RLELossless, JPEGBaseline8Bit,
                         JPEGLosslessSV1, JPEGExtended12Bit, DeflatedExplicitVRLittleEndian)
from conftest import run_cli, with_files
from covid_fastai.core import UnreadableImageError
from covid_fastai.data import images_dir, METADATA_CSV
from covid_fastai.datablock import load_xray, is_dicom, _to_8bit

PER_CLASS = 4   # radiographs of each class made into DICOM files


def write_dicom(px, fn, photometric='MONOCHROME2', bits=8, syntax=None, **elements):
    "Write `px` as a one-frame DX DICOM file (uncompressed, or compressed by pydicom as `syntax`)."
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality, ds.PatientID = DigitalXRayImageStorageForPresentation, 'DX', 'test'
    ds.set_pixel_data(px, photometric, bits)
    for k, v in elements.items(): setattr(ds, k, v)
    if syntax: ds.compress(syntax)
    ds.save_as(fn, enforce_file_format=True)
    return Path(fn)


def encapsulated(fn, ds, syntax, frame:bytes):
    "`ds` saved at `fn` with `frame` as its one compressed frame in `syntax` (for codecs pydicom does not encode)."
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame]); ds['PixelData'].VR = 'OB'
    ds.save_as(fn)
    return Path(fn)


def full_range(f):
    "A real radiograph as 8-bit grey over the whole range 0-255, as every DICOM reading of more than 8 bits ends."
    g = np.asarray(load_xray(f).convert('L'), dtype=np.float64)
    return np.round((g - g.min()) * 255 / (g.max() - g.min())).astype(np.uint8)


def framed(g):
    "`g` inside a white frame 12 px wide, as a burnt-in border."
    return np.pad(g, 12, constant_values=255)


# The ways one radiograph `g` is stored: name -> (the pixels it must read as, a writer of the DICOM file)
KINDS = {
    'mono1': (lambda g: g, lambda g, fn: write_dicom((255 - g.astype(np.uint16)) * 16, fn, 'MONOCHROME1', 12)),
    'rescaled': (lambda g: g, lambda g, fn: write_dicom(g.astype(np.uint16) * 16 + 8, fn, bits=12,
                                                        RescaleSlope=0.25, RescaleIntercept=-1024)),
    'windowed': (framed, lambda g, fn: write_dicom(_window_stored(g), fn, bits=12, WindowCenter=2020.5, WindowWidth=2041)),
    'rle': (lambda g: g, lambda g, fn: write_dicom(g.astype(np.uint16) * 16, fn, bits=12, syntax=RLELossless)),
}

def _window_stored(g):
    "1000 + 8 g (1000 to 3040, the window), in a burnt-in frame at 4095, far above it."
    return np.pad(1000 + g.astype(np.uint16) * 8, 12, constant_values=4095)


@pytest.fixture(scope='session')
def radiographs(metadata, images):
    "PER_CLASS real COVID-19 and Normal radiographs of the data, with their metadata rows."
    rows = metadata[(metadata.Dataset_type == 'TRAIN') & with_files(metadata, images)]
    covid = rows[(rows.Label == 'Pnemonia') & (rows.Label_2_Virus_category == 'COVID-19')].head(PER_CLASS)
    normal = rows[rows.Label == 'Normal'].head(PER_CLASS)
    return pd.concat([covid, normal])


@pytest.fixture(scope='session')
def twins(radiographs, images, tmp_path_factory):
    """Two dataset roots in CoronaHack's layout with the same radiographs, one as PNG and one as DICOM (the kinds in
    turn, one kind per image), each with a metadata CSV naming its files."""
    base = tmp_path_factory.mktemp('twins')
    roots = {k: base/k for k in ('png', 'dcm')}
    for r in roots.values(): images_dir(r).mkdir(parents=True)
    names = {'png': [], 'dcm': []}
    for i, name in enumerate(radiographs.X_ray_image_name):
        kind = list(KINDS)[i % len(KINDS)]
        g = full_range(images/name)
        expect, write = KINDS[kind]
        stem = f"{Path(name).stem}_{kind}"
        Image.fromarray(expect(g)).save(images_dir(roots['png'])/f"{stem}.png")
        write(g, images_dir(roots['dcm'])/f"{stem}.dcm")
        names['png'].append(f"{stem}.png"); names['dcm'].append(f"{stem}.dcm")
    for k, r in roots.items(): radiographs.assign(X_ray_image_name=names[k]).to_csv(r/METADATA_CSV, index=False)
    return roots


@pytest.fixture(scope='session')
def kinds(images, radiographs, tmp_path_factory):
    "One radiograph as PNG and as every kind of DICOM, plus a suffix-less copy and a JPEG-baseline one, in one folder."
    folder = tmp_path_factory.mktemp('kinds')
    g = full_range(images/radiographs.X_ray_image_name.iloc[0])
    files = {}
    for kind, (expect, write) in KINDS.items():
        Image.fromarray(expect(g)).save(folder/f"{kind}.png")
        files[kind] = write(g, folder/f"{kind}.dcm")
    files['no suffix'] = folder/'IM0001'
    files['no suffix'].write_bytes(files['rescaled'].read_bytes())
    (folder/'no suffix.png').write_bytes((folder/'rescaled.png').read_bytes())
    jpeg = io.BytesIO(); Image.fromarray(g).save(jpeg, 'JPEG', quality=95)
    files['jpeg'] = encapsulated(folder/'jpeg.dcm', pydicom.dcmread(write_dicom(g, folder/'jpeg.dcm')), JPEGBaseline8Bit, jpeg.getvalue())
    Image.fromarray(g).save(folder/'jpeg.png')
    return folder, files


@pytest.mark.parametrize('kind', [*KINDS, 'no suffix', 'jpeg'])
def test_load_xray_reads_dicom_as_the_png(kind, kinds):
    folder, files = kinds
    dcm, png = np.asarray(load_xray(files[kind]), dtype=float), np.asarray(load_xray(folder/f"{kind}.png"), dtype=float)
    assert dcm.shape == png.shape and is_dicom(files[kind])
    if kind == 'jpeg': assert np.abs(dcm - png).mean() < 1.5        # lossy, at quality 95
    else: assert np.abs(dcm - png).max() <= 1                          # the window's arithmetic rounds; the rest is exact


def test_the_window_and_the_inversion_are_what_make_them_equal(kinds):
    "Read without its window, or MONOCHROME1 taken as MONOCHROME2, the image would be far from the PNG: the test can fail."
    folder, files = kinds
    for kind, element in [('windowed', 'WindowCenter'), ('mono1', None)]:
        ds = pydicom.dcmread(files[kind])
        if element: del ds.WindowCenter, ds.WindowWidth
        else: ds.PhotometricInterpretation = 'MONOCHROME2'
        ds.save_as(folder/f"{kind}_plain.dcm")
        diff = np.abs(np.asarray(load_xray(folder/f"{kind}_plain.dcm"), dtype=float) - np.asarray(load_xray(folder/f"{kind}.png")))
        assert diff.mean() > 20, (kind, diff.mean())


def test_predict_gives_each_dicom_the_png_prediction(small_run, kinds):
    folder, files = kinds
    names = [*KINDS, 'no suffix', 'jpeg']
    res = run_cli('predict', '--model', small_run[0], '--json', '--no-cache',
                  *[files[k] for k in names], *[folder/f"{k}.png" for k in names])
    recs = json.loads(res.stdout)
    dcm, png = recs[:len(names)], recs[len(names):]
    for k, d, p in zip(names, dcm, png):
        assert d['error'] is None and d['label'] == p['label'], (k, d, p)
        assert d['prob_covid'] == pytest.approx(p['prob_covid'], abs=0.05 if k == 'jpeg' else 1e-3), k


def test_a_folder_holds_dicom_files_by_suffix_or_marker(small_run, kinds):
    folder, files = kinds
    recs = json.loads(run_cli('predict', '--model', small_run[0], '--json', folder).stdout)
    found = {Path(r['file']).name for r in recs}
    assert {'IM0001', 'rescaled.dcm', 'jpeg.dcm', 'rescaled.png'} <= found
    assert all(r['error'] is None for r in recs)


def test_evaluate_a_csv_of_dicom_files_as_its_png_twin(small_run, twins, tmp_path):
    out = {}
    for k, root in twins.items():
        run_cli('evaluate', '--model', small_run[0], '--csv', root/METADATA_CSV, '--images', images_dir(root),
                '--out', tmp_path/k, '--no-cache')
        out[k] = (json.loads((tmp_path/k/'metrics.json').read_text()), pd.read_csv(tmp_path/k/'predictions.csv'))
    (m_dcm, p_dcm), (m_png, p_png) = out['dcm'], out['png']
    assert m_dcm['n'] == m_png['n'] == 2*PER_CLASS and m_dcm['left_out']['unreadable'] == 0
    assert m_dcm['confusion_matrix'] == m_png['confusion_matrix']
    assert p_dcm.label.tolist() == p_png.label.tolist()
    assert p_dcm.prob_covid.tolist() == pytest.approx(p_png.prob_covid.tolist(), abs=1e-3)


def test_train_on_a_csv_that_names_dicom_files(twins, tmp_path):
    res = run_cli('train', '--data', twins['dcm'], '--out', tmp_path/'run', '--arch', 'resnet18', '--size', 32,
                  '--bs', 2, '--frozen-epochs', 1, '--unfrozen-epochs', 0, '--no-pretrained', '--num-workers', 0, '--no-cache', '--strict')
    split = pd.read_csv(tmp_path/'run'/'split.csv')
    assert len(split) == 2*PER_CLASS and split.X_ray_image_name.str.endswith('.dcm').all()
    assert json.loads((tmp_path/'run'/'metrics.json').read_text())['n'] >= 2 and 'unreadable' not in res.stderr


def test_a_syntax_without_decoder_is_one_clear_line(small_run, kinds, tmp_path):
    "JPEG lossless (process 14), the usual compression of computed radiography, needs gdcm or pylibjpeg, which are not installed."
    folder, files = kinds
    f = encapsulated(tmp_path/'lossless.dcm', pydicom.dcmread(files['rescaled']), JPEGLosslessSV1, b'\xff\xd8 not decoded \xff\xd9')
    with pytest.raises(UnreadableImageError) as e: load_xray(f)
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith(f"{f}: ") and 'JPEG Lossless' in msg and JPEGLosslessSV1 in msg
    if not get_decoder(JPEGLosslessSV1).is_available: assert 'no decoder on this machine reads' in msg
    res = run_cli('predict', '--model', small_run[0], '--json', f, files['rescaled'], check=False)
    recs = json.loads(res.stdout)
    assert res.returncode == 1 and 'Traceback' not in res.stderr
    assert recs[0]['error'] == msg and recs[0]['label'] is None and recs[1]['error'] is None


@pytest.mark.parametrize('make, words', [
    (lambda f: f.write_bytes(b''), 'not a readable DICOM file'),
    (lambda f: f.write_bytes(b'\0'*128 + b'DICM' + b'\x02\x00'), 'a DICOM file without an image'),
    (lambda f: write_dicom(np.zeros((40, 300), np.uint8), f), 'too small'),
])
def test_broken_dicom_files_say_why(make, words, tmp_path):
    f = tmp_path/'x.dcm'
    make(f)
    with pytest.raises(UnreadableImageError, match=words): load_xray(f)


def edited(f, **elements):
    "A readable DICOM radiograph at `f` whose header then gets `elements` (None deletes one), as a faulty export leaves it."
    write_dicom(np.random.default_rng(0).integers(0, 256, (300, 400), dtype=np.uint8), f)
    ds = pydicom.dcmread(f)
    for k, v in elements.items():
        if v is None: delattr(ds, k)
        else: setattr(ds, k, v)
    ds.save_as(f)
    return f


@pytest.mark.parametrize('elements, words', [
    (dict(PhotometricInterpretation='RGB'), 'contradicts itself: RGB has 3 sample'),
    (dict(PhotometricInterpretation='YBR_FULL'), 'contradicts itself: YBR_FULL has 3 sample'),
    (dict(Rows=150), 'more than the 60,000 of the header'),     # the pixel data of 300 rows under a header of 150
])
def test_a_header_that_contradicts_its_pixels_says_so_and_the_fix(elements, words, tmp_path):
    f = edited(tmp_path/'x.dcm', **elements)
    with pytest.raises(UnreadableImageError) as e: load_xray(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: ") and words in msg and 'export the file again' in msg and '\n' not in msg


def test_a_grey_image_without_photometric_interpretation_reads_as_monochrome2(tmp_path):
    plain, bare = edited(tmp_path/'plain.dcm'), edited(tmp_path/'bare.dcm', PhotometricInterpretation=None)
    assert 'PhotometricInterpretation' not in pydicom.dcmread(bare)
    assert np.array_equal(np.asarray(load_xray(bare, size=128)), np.asarray(load_xray(plain, size=128)))


@pytest.mark.parametrize('implicit', [True, False], ids=['implicit VR', 'explicit VR'])
def test_a_dataset_saved_without_its_file_meta_reads_as_the_same_image(implicit, tmp_path):
    "An ACR-NEMA file or a stripped export: no preamble, no DICM marker, no transfer syntax; a .dcm name says what it is."
    plain = edited(tmp_path/'plain.dcm')
    ds = pydicom.dcmread(plain); del ds.file_meta; ds.preamble = None
    ds.save_as(tmp_path/'bare.dcm', implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    assert (tmp_path/'bare.dcm').read_bytes()[128:132] != b'DICM'
    assert np.array_equal(np.asarray(load_xray(tmp_path/'bare.dcm', size=128)), np.asarray(load_xray(plain, size=128)))


def blanked(f, keyword):
    "A readable DICOM radiograph at `f` whose header element `keyword` is there but empty, as anonymisers leave one."
    ds = pydicom.dcmread(edited(f))
    ds[keyword].value = None
    ds.save_as(f)
    return f


@pytest.mark.parametrize('keyword', ['SamplesPerPixel', 'BitsAllocated', 'BitsStored'])
def test_an_empty_header_element_is_that_file_error(keyword, tmp_path):
    f = blanked(tmp_path/'x.dcm', keyword)
    with pytest.raises(UnreadableImageError) as e: load_xray(f)
    assert str(e.value) == f"{f}: the DICOM header's {keyword} is empty or not a number; export the file again"


def test_predict_answers_the_other_files_beside_an_empty_header_element(small_run, kinds, tmp_path):
    bad, good = blanked(tmp_path/'blank.dcm', 'SamplesPerPixel'), kinds[1]['rescaled']
    res = run_cli('predict', '--model', small_run[0], '--json', bad, good, check=False)
    recs = json.loads(res.stdout)
    assert res.returncode == 1 and 'Traceback' not in res.stderr
    assert 'SamplesPerPixel is empty' in recs[0]['error'] and recs[1]['error'] is None and recs[1]['label'] is not None


@pytest.mark.parametrize('photometric', ['MONOCHROME2', 'MONOCHROME1'])
def test_pixel_padding_is_black_and_left_out_of_the_range(photometric, radiographs, images, tmp_path):
    "A strip outside the collimation, stored at the top value and marked as padding, must not squeeze the film into a few grey levels."
    g = full_range(images/radiographs.X_ray_image_name.iloc[0])
    film = (g if photometric == 'MONOCHROME2' else 255 - g).astype(np.uint16) * 16
    padded = film.copy(); padded[:, :30] = 4095
    f = write_dicom(padded, tmp_path/'padded.dcm', photometric, 12, PixelPaddingValue=4095)
    a = np.asarray(load_xray(f).convert('L'))
    assert (a[:, :30] == 0).all()
    want = _to_8bit(film[:, 30:])   # the exposed part alone, scaled by its own range
    assert np.array_equal(a[:, 30:], want if photometric == 'MONOCHROME2' else 255 - want)


def test_a_private_transfer_syntax_reads_plain_pixels_and_refuses_compressed_ones(tmp_path):
    private = UID('1.3.46.670589.33.1.4.1')   # a maker's own syntax, which pydicom does not know
    plain = edited(tmp_path/'plain.dcm')
    ds = pydicom.dcmread(plain); ds.file_meta.TransferSyntaxUID = private
    pydicom.dcmwrite(tmp_path/'private.dcm', ds, implicit_vr=False, little_endian=True)
    assert np.array_equal(np.asarray(load_xray(tmp_path/'private.dcm', size=128)), np.asarray(load_xray(plain, size=128)))
    ds = pydicom.dcmread(plain); ds.file_meta.TransferSyntaxUID = private
    ds.PixelData = encapsulate([b'\xff\xd8 its maker\'s compression \xff\xd9']); ds['PixelData'].VR = 'OB'
    ds['PixelData'].is_undefined_length = True   # encapsulated, as every compressed syntax stores its frames
    pydicom.dcmwrite(tmp_path/'packed.dcm', ds, implicit_vr=False, little_endian=True)
    with pytest.raises(UnreadableImageError) as e: load_xray(tmp_path/'packed.dcm')
    assert str(e.value).startswith(f"{tmp_path/'packed.dcm'}: DICOM pixel data in the private transfer syntax {private}")
    assert 'export the file in a standard syntax' in str(e.value)


def test_a_decoder_failure_gives_its_reason_and_the_way_out(kinds, tmp_path):
    "pydicom puts each decoder's reason on a line of its own: a 12-bit JPEG, which Pillow does not decode, says so."
    frame = io.BytesIO(); Image.fromarray(np.asarray(load_xray(kinds[1]['rescaled']).convert('L'))).save(frame, 'JPEG')
    f = encapsulated(tmp_path/'jpeg12.dcm', pydicom.dcmread(kinds[1]['rescaled']), JPEGExtended12Bit, frame.getvalue())
    with pytest.raises(UnreadableImageError) as e: load_xray(f)
    msg = str(e.value)
    assert '\n' not in msg and 'JPEG Extended' in msg and "Pillow does not support 'JPEG Extended'" in msg
    assert 'pylibjpeg' in msg and 'export it uncompressed' in msg


def test_a_deflated_file_is_refused_before_it_inflates_past_the_pixel_limit(kinds, tmp_path):
    "Deflate shrinks 18 MB of zeros to kilobytes: the limit holds on what the file inflates to, before pydicom inflates it."
    ds = pydicom.dcmread(write_dicom(np.zeros((3000, 3000), np.uint16), tmp_path/'bomb.dcm', bits=16))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian; ds.save_as(tmp_path/'bomb.dcm')
    assert (tmp_path/'bomb.dcm').stat().st_size < 100_000
    with pytest.raises(UnreadableImageError, match='a deflated DICOM file that inflates to over 14,388,608 bytes'):
        load_xray(tmp_path/'bomb.dcm', max_pixels=1_000_000)
    ds = pydicom.dcmread(kinds[1]['rescaled']); ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path/'deflated.dcm')   # a radiograph within the limit reads as itself
    assert np.array_equal(np.asarray(load_xray(tmp_path/'deflated.dcm')), np.asarray(load_xray(kinds[1]['rescaled'])))
