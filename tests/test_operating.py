"The operating point from the command: a threshold chosen on validation, saved and used; calibration; the table at a prevalence."
import json
import numpy as np, pandas as pd, pytest
from conftest import run_cli


@pytest.fixture(scope='module')
def chosen_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('op')/'run'
    res = run_cli('train', '--data', data_root, '--out', out, '--arch', 'efficientnet_lite0', '--size', 64, '--frozen-epochs', 1,
                  '--unfrozen-epochs', 1, '--num-workers', 0, '--threshold', 'sens=1', '--calibrate', '--prevalence', 0.05)
    return out, res


def test_train_saves_the_threshold_it_chose_and_on_how_many_positives(chosen_run):
    m, model = json.loads((chosen_run[0]/'metrics.json').read_text()), json.loads((chosen_run[0]/'model.json').read_text())
    choice = m['threshold_choice']
    (tn, fp), (fn, tp) = m['confusion_matrix']
    assert choice['rule'] == 'sens=1' and choice['n_positives'] == tp + fn and choice['n_negatives'] == tn + fp
    assert model['threshold'] == m['threshold'] == choice['threshold'] and fn == 0          # sensitivity 1 on validation, as asked
    assert model['temperature'] == m['temperature'] > 0
    assert 'at least' in m['decision'] and m['ece'] is not None
    assert m['prevalence'] == 0.05 and any(r['threshold'] == m['threshold'] for r in m['operating_points'])
    assert {'ppv_at_prevalence', 'npv_at_prevalence'} <= set(m['operating_points'][0])
    n_valid = choice['n_positives'] + choice['n_negatives']                                 # fitted on what it reports: says so
    assert f"--threshold sens=1, --calibrate: chosen on the {n_valid} validation images that metrics.json measures" in chosen_run[1].stderr
    assert m['fitted_on_these_images'] == ['threshold', 'temperature']


def test_evaluate_and_predict_follow_the_saved_rule(chosen_run, tmp_path):
    res = run_cli('evaluate', '--model', chosen_run[0], '--out', tmp_path, '--prevalence', 0.1)
    m = json.loads((tmp_path/'metrics.json').read_text())
    assert m['fitted_on_these_images'] == ['threshold', 'temperature']   # the run's own validation images: what it chose on them, said
    assert 'threshold, temperature of this model were chosen on these validation images' in res.stderr
    assert m['confusion_matrix'] == json.loads((chosen_run[0]/'metrics.json').read_text())['confusion_matrix']
    assert (tmp_path/'plots'/'reliability.png').is_file()
    valid = pd.read_csv(tmp_path/'predictions.csv')
    threshold = json.loads((chosen_run[0]/'model.json').read_text())['threshold']
    assert ((valid.prob_covid >= threshold) == (valid.label == 'COVID-19')).all()             # labels follow the threshold
    res = run_cli('evaluate', '--model', chosen_run[0], '--threshold', '1.0', '--out', tmp_path/'strict')
    strict = json.loads((tmp_path/'strict'/'metrics.json').read_text())
    assert strict['threshold'] == 1.0 and 'at threshold 1.0' in res.stdout
    assert strict['fitted_on_these_images'] == ['temperature']   # a threshold given, not chosen: only the temperature was fitted on them
    relabelled = pd.read_csv(tmp_path/'strict'/'predictions.csv')                            # its labels follow the new threshold too
    assert ((relabelled.prob_covid >= 1.0) == (relabelled.label == 'COVID-19')).all()
    assert (relabelled.label == 'COVID-19').sum() == strict['confusion_matrix'][0][1] + strict['confusion_matrix'][1][1]
    assert strict['threshold_choice'] == {'threshold': 1.0, 'rule': 'fixed', 'n_positives': sum(strict['confusion_matrix'][1]),
                                          'n_negatives': sum(strict['confusion_matrix'][0]), 'model_threshold': threshold}
    res = run_cli('evaluate', '--model', chosen_run[0], '--threshold', 'youden', '--out', tmp_path/'fitted')   # fitted to what it judges: says so
    assert 'chosen on the images it is judged on' in res.stderr
    fitted = json.loads((tmp_path/'fitted'/'metrics.json').read_text())
    assert fitted['threshold_choice']['rule'] == 'youden' and fitted['fitted_on_these_images'] == ['temperature', 'threshold']


def test_a_bad_threshold_rule_is_one_line_and_writes_nothing(data_root, tmp_path):
    res = run_cli('train', '--data', data_root, '--out', tmp_path/'run', '--threshold', 'sens=95', check=False)
    assert res.returncode == 2 and "'sens=0.95'" in res.stderr and 'Traceback' not in res.stderr
    assert not (tmp_path/'run').exists()
