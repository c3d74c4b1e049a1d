#!/usr/bin/env bash
# The GPU checks of issues 4 and 5 in one call on a lent GPU machine (results in benchmarks/RESULTS.md):
#
#   bash benchmarks/gpu_checks.sh [tests] [arl] [arl-compiled] [glcm] [isic] [mvkbc] [mbdcnn] [semi]
#   (no argument: all but mvkbc, mbdcnn and semi)
#
# tests: tests/test_gpu.py and tests/test_arl_fused.py; arl: ARL-CNN50's training overhead over
# ResNet-50 (images/s and GPU kernel time, batch 64 and 256), eager and with the fused Triton
# attention kernel; arl-compiled: the same, torch.compile-d;
# glcm: the GLCM device path (pairs counted on the GPU); isic: ResNet14 vs ARL-CNN14 on ISIC-2017 at
# 224 px, seeds ISIC_SEEDS (default 0-4), ISIC_JOBS runs at a time (default 6; the runs still going after
# ISIC_SECONDS are cut off, the finished ones are kept); ISIC_ARGS adds isic_arl.py options, e.g.
#   ISIC_ARGS="--models arlcnn14 --set model.options.attention_softmax=spatial --tag spatial"
# mvkbc: MVKBC_CONFIG (default configs/lidc_voi_mvkbc_paper.yaml) on folds MVKBC_FOLDS (default 0) of the
# 10-fold LIDC benchmark, next to the diameter on the same folds (benchmarks/lidc_cv.py), cut off after
# MVKBC_SECONDS (default 480; finished folds are kept); needs .gpu_data/lidc_vois (22 MB).
# mbdcnn: MB-DCNN at the paper's size (configs/ph2_mbdcnn_paper.yaml: aligned Xception-65 encoders, 224 px,
# 100 epochs a stage) on PH2 fold 0 of benchmarks/ph2_mbdcnn.py, next to its U-Net and ResNet peers on the
# same fold and device (no mask-CN ablation), cut off after MBDCNN_SECONDS (default 500); MBDCNN_ARGS adds
# ph2_mbdcnn.py options, e.g. MBDCNN_ARGS="--set train.epochs=40" when the time is short. Needs
# .gpu_data/ph2.tgz (40 MB: tar czf .gpu_data/ph2.tgz -C ../shared/datasets ph2); the report of the run
# (each stage's best epoch and curves) comes back as mbdcnn_report.html.
# semi: issue 20's label-fraction grid (benchmarks/label_fraction.py) on folds SEMI_FOLDS (default 0-9),
# fractions SEMI_FRACTIONS (default 0.1 0.25 0.5 1), one process per algorithm of SEMI_ALGORITHMS (default
# all seven) side by side on the GPU, then one call (--finished-only) that writes the table, the gains and
# the plot (label_fraction.png) from the runs that finished; SEMI_ARGS adds options (e.g. "--set train.epochs=60 --set train.early_stopping.patience=15",
# the CPU grid's). Cut off after SEMI_SECONDS (default 500); finished runs are kept in semi_runs.tgz (no
# weights). Needs .gpu_data/lidc_vois, as mvkbc.
# Each check has a time limit of its own, so that one that hangs leaves time for the rest.
#
# Carried with the call: .whl (wheels for what the machine's Python 3.12 lacks), made here by
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing_extensions==4.16.0 monai==1.6.1 nibabel==5.4.2 pydicom==3.0.2 PyWavelets==1.9.0
# (not numba, which the GLCM features and the Fisher-vector encoder need: the machine's image has
# numba and llvmlite, and llvmlite's wheel alone would be 57 MB of the call's 64 MiB) and, for isic,
# .gpu_data/isic2017 (a copy of ../shared/datasets/isic2017; .gpu_data is git-ignored), for mvkbc
# .gpu_data/lidc_vois (a copy of ../shared/datasets/lidc_vois), for mbdcnn .gpu_data/ph2.tgz (with the wheels,
# under the 64 MiB a call carries).
# Logs, and the ISIC runs without weights as isic_runs.tgz, go to $OUT.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
checks=" ${*:-tests arl arl-compiled glcm isic} "
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

if [[ $checks == *" tests "* ]]; then
    timeout "${TESTS_SECONDS:-240}" python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_arl_fused.py 2>&1 | tee "$OUT/test_gpu.log"
fi
if [[ $checks == *" arl "* ]]; then
    for batch in 64 256; do  # batch 64 is bound by the host's kernel launches, 256 by the GPU
        timeout "${ARL_SECONDS:-200}" python3 -m benchmarks.arl_throughput --device cuda --batch $batch --size 224 \
            --steps 20 2>&1 | tee -a "$OUT/arl_throughput.log"
    done
fi
if [[ $checks == *" arl-compiled "* ]]; then
    timeout "${COMPILE_SECONDS:-200}" python3 -m benchmarks.arl_throughput --device cuda --batch 64 --size 224 \
        --steps 20 --rounds 2 --compile 2>&1 | tee "$OUT/arl_throughput_compiled.log"
fi
if [[ $checks == *" glcm "* ]]; then
    timeout "${GLCM_SECONDS:-150}" python3 -m benchmarks.glcm_speed --device cuda --repeats 30 2>&1 | tee "$OUT/glcm_speed.log"
fi
if [[ $checks == *" isic "* ]]; then
    OMP_NUM_THREADS=2 timeout "${ISIC_SECONDS:-300}" python3 -m benchmarks.isic_arl --data .gpu_data/isic2017 \
        --device cuda --size 224 --jobs "${ISIC_JOBS:-6}" --seeds ${ISIC_SEEDS:-0 1 2 3 4} ${ISIC_ARGS:-} --out "$OUT/isic_runs" >"$OUT/isic_arl.log" 2>&1
    echo "isic_arl.py exit code $?"
    tail -n 40 "$OUT/isic_arl.log"
    # weights and the resume checkpoints of cut-off runs stay behind: they are too large to come back
    tar czf "$OUT/isic_runs.tgz" --exclude='*.safetensors' --exclude='*.pt' -C "$OUT" isic_runs && rm -rf "$OUT/isic_runs"
fi
if [[ $checks == *" mvkbc "* ]]; then
    timeout "${MVKBC_SECONDS:-480}" python3 -m benchmarks.lidc_cv --data .gpu_data/lidc_vois --device cuda \
        --configs "${MVKBC_CONFIG:-configs/lidc_voi_mvkbc_paper.yaml}" --folds ${MVKBC_FOLDS:-0} --chosen-threshold \
        --out "$OUT/mvkbc_runs" >"$OUT/mvkbc.log" 2>&1
    echo "lidc_cv.py exit code $?"
    tail -n 40 "$OUT/mvkbc.log"
    tar czf "$OUT/mvkbc_runs.tgz" --exclude='*.safetensors' --exclude='*.pt' -C "$OUT" mvkbc_runs && rm -rf "$OUT/mvkbc_runs"
fi
if [[ $checks == *" mbdcnn "* ]]; then
    mkdir -p /tmp/gpu_data && tar xzf .gpu_data/ph2.tgz -C /tmp/gpu_data || exit 1
    timeout "${MBDCNN_SECONDS:-500}" python3 -m benchmarks.ph2_mbdcnn --data /tmp/gpu_data/ph2 --device cuda \
        --config configs/ph2_mbdcnn_paper.yaml --folds 0 --no-ablation ${MBDCNN_ARGS:-} --out "$OUT/mbdcnn_runs" \
        >"$OUT/mbdcnn.log" 2>&1
    echo "ph2_mbdcnn.py exit code $?"
    tail -n 40 "$OUT/mbdcnn.log"
    python3 -m medsight report "$OUT/mbdcnn_runs/ph2_mbdcnn_paper/fold0" --out "$OUT/mbdcnn_report.html"
    tar czf "$OUT/mbdcnn_runs.tgz" --exclude='*.safetensors' --exclude='*.pt' -C "$OUT" mbdcnn_runs && rm -rf "$OUT/mbdcnn_runs"
fi
if [[ $checks == *" semi "* ]]; then
    algorithms=${SEMI_ALGORITHMS:-supervised mean_teacher fixmatch ssac aae catgan ladder}
    for algorithm in $algorithms; do
        OMP_NUM_THREADS=2 timeout "${SEMI_SECONDS:-500}" python3 -m benchmarks.label_fraction --data .gpu_data/lidc_vois \
            --device cuda --algorithms $algorithm --fractions ${SEMI_FRACTIONS:-0.1 0.25 0.5 1} \
            --folds ${SEMI_FOLDS:-0 1 2 3 4 5 6 7 8 9} ${SEMI_ARGS:-} --out "$OUT/semi_runs" >"$OUT/semi_$algorithm.log" 2>&1 &
    done
    wait
    timeout 120 python3 -m benchmarks.label_fraction --data .gpu_data/lidc_vois --device cuda --algorithms $algorithms \
        --fractions ${SEMI_FRACTIONS:-0.1 0.25 0.5 1} --folds ${SEMI_FOLDS:-0 1 2 3 4 5 6 7 8 9} ${SEMI_ARGS:-} \
        --finished-only --out "$OUT/semi_runs" >"$OUT/semi.log" 2>&1
    echo "label_fraction.py exit code $?"
    cp "$OUT/semi_runs/label_fraction.png" "$OUT/" 2>/dev/null || true
    tail -n 60 "$OUT/semi.log"
    tar czf "$OUT/semi_runs.tgz" --exclude='*.safetensors' --exclude='*.pt' -C "$OUT" semi_runs && rm -rf "$OUT/semi_runs"
fi
