# The GPU run of 2026-11-28 (run C; bench/README.md). From the repository root, with the wheels covid_fastai needs in .whl/
# (fastai 2.8.7, fastcore 1.14.5, fasttransform 0.0.2, fastprogress 1.0.3, fastdownload, plum-dispatch 2.9.0, beartype,
# pydicom, efficientnet-lite-pytorch) and `python bench/gpu_check.py --export-subset .gpudata` done beforehand.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/nvidia_smi.txt; cat $OUT/nvidia_smi.txt
R=$OUT/gpu_check_h200_20261128_c
timeout 330 python3 bench/gpu_check.py --data .gpudata --oversample 64 --bs 64 --epochs 3 --repeats 2 --no-compile \
  --parts train,graphs,steps,infer,agree --modes 'fastai Adam, amp, per item' 'AdamW, amp+channels_last, eager' \
  'AdamW, amp+channels_last' 'AdamW, amp+channels_last, loss kept on the GPU' --out ${R}_bs64.json 2>&1 | tee ${R}_bs64.log
timeout 240 python3 bench/gpu_check.py --data .gpudata --oversample 16 --bs 8 --epochs 3 --no-compile --parts train,graphs,quality \
  --modes 'fastai Adam, amp, per item' 'AdamW, amp+channels_last, eager' 'AdamW, amp+channels_last' \
  --folds 2 --quality-epochs 3 --quality-modes AdamW 'AdamW, eager' --out ${R}_bs8.json 2>&1 | tee ${R}_bs8.log
