# The next GPU run for issue 11's prediction target (bench/README.md, last section), prepared without a GPU on
# 2026-11-28. From the repository root, with the wheels covid_fastai needs in .whl/ (fastai 2.8.7, fastcore 1.14.5,
# fasttransform 0.0.2, fastprogress 1.0.3, fastdownload, plum-dispatch 2.9.0, beartype, pydicom,
# efficientnet-lite-pytorch) and `python bench/gpu_check.py --export-subset .gpudata` done beforehand; about 7 minutes.
# How to make .whl and .gpudata: bench/README.md, its last section.
set -o pipefail
ls .whl/*.whl .gpudata/Chest_xray_Corona_Metadata.csv > /dev/null || { echo 'make .whl/ and .gpudata/ first (bench/README.md)'; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/nvidia_smi.txt; cat $OUT/nvidia_smi.txt
R=$OUT/gpu_check_h200_$(date +%Y%m%d)
# --gpu-decode's path: waits, operations, its time alone and beside the network, predict's images/s
timeout 120 python3 bench/diag/gpu_decode_path.py --data .gpudata --bs 64 2>&1 | tee ${R}_decode_path.log
# prediction after the NumPy stack and the GPU path's change, training with the graphs after the review's changes, and
# the graphs against eager steps (one step, then fastai's Adam through six steps of fastai's loop)
timeout 360 python3 bench/gpu_check.py --data .gpudata --oversample 64 --bs 64 --epochs 3 --repeats 2 --no-compile \
  --parts train,graphs,infer,agree --modes 'AdamW, amp+channels_last, eager' 'AdamW, amp+channels_last' \
  --out ${R}_bs64.json 2>&1 | tee ${R}_bs64.log
