#!/usr/bin/env bash
# One step of a GPU-machine session (run by hand through the device tool, from the repo root).
#   carry            copy what .carry/ holds into /root/carry (big wheels arrive in parts)
#   install          join the onnxruntime-gpu parts, install it and the serve wheels into /root
#   infer|serve|train  run that benchmark, results into $OUT (infer: also serve, if time)
# Wheels are installed with --target and put first on PYTHONPATH; the machine's own torch,
# torchvision and CPU onnxruntime stay as they are. .carry/serve (8.8 MB, not committed) is
# made here with `pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any` of:
# fastapi starlette opentelemetry-api pydantic pydantic-core annotated-types
# typing-inspection uvicorn python-multipart httptools websockets uvloop prometheus-client
# httpx httpcore h11 anyio sniffio idna certifi typing-extensions (the versions of the venv).
set -uo pipefail
step=${1:?step}
OUT=${OUT:-/tmp/out}
mkdir -p /root/carry "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=/root/ortgpu:/root/site:$PWD
case "$step" in
  carry)
    cp -r .carry/. /root/carry/ && ls -la /root/carry ;;
  install)
    if ls /root/carry/ortgpu.part* >/dev/null 2>&1; then
      cat /root/carry/ortgpu.part* > /root/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
      python3 -m pip install -q --no-index --no-deps --no-compile --target /root/ortgpu \
        /root/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
      python3 -c "import onnxruntime as o; print(o.__version__, o.__file__, o.get_available_providers())"
    fi
    wheels=$(ls /root/carry/serve/*.whl .carry/serve/*.whl 2>/dev/null)
    [ -n "$wheels" ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site $wheels
    python3 -c "import fastapi, uvicorn, multipart; print('serve deps ok', fastapi.__version__)" ;;
  infer)
    python3 benchmarks/infer_gpu_bench.py --out "$OUT" 2>&1 | tee "$OUT/infer.log" ;;
  serve)
    # batched (PIL decode, then the GPU pipeline), unbatched, then 8 server processes of each
    for mode in ${SERVE_MODES:-workers8 workers8_gpu_pipeline batched mb1 batched_gpu_pipeline}; do
      a="--device cuda --no-access-log --max-batch 64 --max-wait-ms 2"
      case $mode in *gpu_pipeline) a="$a --pipeline gpu" ;; esac
      case $mode in workers8*) a="$a --workers 8 --no-shared-model" ;; esac
      n=12000
      [ $mode = mb1 ] && a="--device cuda --no-access-log --max-batch 1" && n=3000
      timeout 200 python3 benchmarks/serve_load.py --prepare /tmp/serve_bench --serve-args="$a" \
        --concurrency 64 --procs 4 --requests $n --label $mode --json "$OUT/serve_$mode.json" 2>&1 | tail -5
    done ;;
  train)
    python3 benchmarks/train_bench.py "${@:2}" --out "$OUT" 2>&1 | tee "$OUT/train.log" ;;
  round)
    # one call's worth: serving, inference (input stage, e2e), the read thread count, then
    # training with GPU input; at most 8 files into $OUT
    python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site .carry/serve/*.whl
    SERVE_MODES="workers8 batched mb1 workers8_gpu_pipeline" timeout 200 bash "$0" serve
    python3 -c "import json,glob,sys; json.dump({f: json.load(open(f)) for f in sorted(glob.glob(sys.argv[1]+'/serve_*.json'))}, open(sys.argv[1]+'/serve.json','w'), indent=1)" "$OUT"
    rm -f "$OUT"/serve_*.json; tail -n 4 /tmp/pochi_serve_*.log > "$OUT/serve_logs.txt" 2>&1
    timeout 70 python3 benchmarks/infer_gpu_bench.py --out "$OUT" --skip 3 4 5 6 > "$OUT/infer.log" 2>&1
    rm -f "$OUT/infer_gpu.md"; grep -v '^  ' "$OUT/infer.log" | cut -c1-700 | tail -6
    for t in 1; do
      POCHI_READ_THREADS=$t timeout 40 python3 benchmarks/infer_gpu_bench.py --out /tmp/t$t \
        --skip 2 3 4 5 6 > /dev/null 2>&1
      echo "read threads $t: $(grep -o '"pipeline_img_s": [0-9.]*' /tmp/t$t/infer_gpu.json)"
    done
    timeout 90 python3 benchmarks/train_bench.py --models resnet18,resnet50 --inputs gpu \
      --out "$OUT/train.json" > "$OUT/train.log" 2>&1; grep '^|' "$OUT/train.log" ;;
  spy)
    # where the interpreter's time goes (py-spy --gil: the thread holding the GIL), plus the
    # import and command timelines; summaries (not raw samples) into $OUT/spy
    python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site \
      .carry/serve/*.whl .carry/tools/*.whl
    S=$OUT/spy; mkdir -p $S; export PATH=/root/site/bin:$PATH PYTHONPYCACHEPREFIX=/tmp/pochi_pycache
    spy() { local name=$1; shift
      timeout 150 py-spy record --nonblocking --threads -r 250 -f raw -o /tmp/$name.raw "$@" \
        > $S/$name.log 2>&1; python3 benchmarks/spy_summary.py /tmp/$name.raw > $S/$name.txt 2>&1
      tail -n 3 $S/$name.log; }
    py-spy record -d 1 -o /tmp/t.raw -f raw -- python3 -c "import time; time.sleep(0.5)" >/dev/null 2>&1 \
      && echo "py-spy works" || { echo "py-spy cannot trace here"
        spy() { local name=$1; shift; while [[ $1 == --* ]]; do shift; done
          timeout 150 "$@" > $S/$name.log 2>&1; }; }
    python3 -c "import sys; sys.path.insert(0,'benchmarks'); from gpu_bench import make_images; from pathlib import Path; make_images(Path('/tmp/pochi_infer_bench'), 2000)"
    spy pipe_files --gil -- python3 benchmarks/gil_probe.py pipeline --passes 6
    grep '"probe"' $S/pipe_files.log > $S/probes.jsonl
    python3 benchmarks/gil_probe.py pipeline --reads memory --passes 6 >> $S/probes.jsonl
    POCHI_READER=python python3 benchmarks/gil_probe.py pipeline --passes 4 | sed 's/"probe": "pipeline"/"probe": "pipeline python reads"/' >> $S/probes.jsonl
    POCHI_READ_THREADS=2 python3 benchmarks/gil_probe.py pipeline --passes 4 >> $S/probes.jsonl
    python3 benchmarks/gil_probe.py pipeline --batch 64 --passes 4 >> $S/probes.jsonl
    spy e2e50 --gil -- python3 benchmarks/gil_probe.py e2e --model resnet50 --passes 3
    spy e2e18 --gil -- python3 benchmarks/gil_probe.py e2e --model resnet18 --passes 3
    grep '"probe"' $S/e2e50.log $S/e2e18.log >> $S/probes.jsonl
    cat $S/probes.jsonl
    spy train18 --gil --subprocesses -- python3 benchmarks/train_bench.py --models resnet18,resnet50 --inputs gpu \
      --out $S/train.json
    grep '^|' $S/train18.log
    for r in banded matmul; do [ $r = matmul ] && export POCHI_GPU_RESIZE=matmul
      timeout 60 python3 benchmarks/train_bench.py --transforms-only --out $S/transforms_$r.json 2>&1 | grep '^|' | tail -3; done
    unset POCHI_GPU_RESIZE
    spy serve --gil --subprocesses -- python3 benchmarks/serve_load.py --prepare /tmp/serve_bench \
      --serve-args="--device cuda --no-access-log --max-batch 64 --max-wait-ms 2 --pipeline gpu --workers 8 --no-shared-model" \
      --concurrency 64 --procs 4 --requests 12000 --json $S/serve8.json
    for sh in "8 fp32" "8 bf16"; do set -- $sh
      timeout 100 python3 benchmarks/serve_load.py --prepare /tmp/serve_bench \
        --serve-args="--device cuda --no-access-log --max-batch 64 --max-wait-ms 2 --pipeline gpu --workers $1 --shared-model --precision $2" \
        --concurrency 64 --procs 4 --requests 12000 --json $S/serve_shared$1_$2.json 2>&1 | tail -3; done
    for i in 1 2; do python3 -X importtime -c "import torch" 2> /tmp/imp.txt; done
    sort -t'|' -k2 -n /tmp/imp.txt | tail -25 > $S/import_torch.txt
    python3 -X importtime -c "import pochitrain.cli.main" 2> /tmp/imp2.txt; sort -t'|' -k2 -n /tmp/imp2.txt | tail -8 >> $S/import_torch.txt
    M=/tmp/gil_probe_models/resnet18/models/resnet18.pth
    for i in 1 2 3; do python3 -c "import subprocess as s, sys, time; t = time.time(); s.run(sys.argv[1:]); print('pochi infer wall', round(time.time() - t, 2), 's')" \
      python3 -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/cmd$i --quiet 2>&1 | tail -1; done | tee $S/commands.txt
    python3 -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/cmd_v > $S/infer_out.txt 2>&1
    spy infer_idle --idle -- python3 -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/cmd9 --quiet
    for pb in "1 256" "2 256"; do set -- $pb
      timeout 60 python3 benchmarks/gil_probe.py decode --procs $1 --batch $2 --passes 4 >> $S/probes.jsonl; done
    cat $S/probes.jsonl | tail -3 ;;
  round2)
    # after spy: serving with one model per worker against --shared-model, resnet18 end to
    # end, the pipeline's steady rate (the file list 4 times over), training with the
    # train-mode warm-up, and the whole `pochi infer` (walls + a cProfile); results in $OUT/r2
    python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site .carry/serve/*.whl
    R=$OUT/r2; mkdir -p $R; export PYTHONPYCACHEPREFIX=/tmp/pochi_pycache
    for sh in "--no-shared-model" "--shared-model"; do a="--device cuda --no-access-log --max-batch 64 --max-wait-ms 2 --pipeline gpu --workers 8 $sh"
      timeout 100 python3 benchmarks/serve_load.py --prepare /tmp/serve_bench --serve-args="$a" \
        --concurrency 64 --procs 4 --requests 12000 --json $R/serve_${sh#--}.json 2>&1 | tail -1; done
    python3 -c "import sys; sys.path.insert(0,'benchmarks'); from gpu_bench import make_images; from pathlib import Path; make_images(Path('/tmp/pochi_infer_bench'), 2000)"
    for m in ${R2_MODELS:-resnet18}; do
      timeout 120 python3 benchmarks/gil_probe.py e2e --model $m --passes 3 2>&1 | grep '"probe"' >> $R/probes.jsonl; done
    for r in files memory; do
      timeout 60 python3 benchmarks/gil_probe.py pipeline --reads $r --repeat 4 --passes 3 >> $R/probes.jsonl; done
    cat $R/probes.jsonl
    timeout 150 python3 benchmarks/train_bench.py --models resnet18,resnet50 --inputs gpu \
      --out $R/train.json > $R/train.log 2>&1; grep '^|' $R/train.log
    M=/tmp/gil_probe_models/resnet18/models/resnet18.pth
    for i in 1 2 3; do python3 -c "import subprocess as s, sys, time; t = time.time(); s.run(sys.argv[1:]); print('pochi infer wall', round(time.time() - t, 2), 's')" \
      python3 -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/r2cmd$i --quiet 2>&1 | tail -1; done | tee $R/commands.txt
    python3 -m cProfile -o /tmp/infer.prof -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/r2prof --quiet > /dev/null 2>&1
    python3 -c "import pstats; pstats.Stats('/tmp/infer.prof').sort_stats('cumulative').print_stats(45)" > $R/infer_profile.txt 2>&1
    grep -E 'function calls|import torch|pochitrain' $R/infer_profile.txt | head -30 ;;
  round3)
    # the whole `pochi infer` with the bytecode cache (pochitrain.bytecode) against without:
    # three walls each, after one run that fills the cache; the machine's Python settings
    R=$OUT/r3; mkdir -p $R; unset PYTHONPYCACHEPREFIX
    { env | grep -E '^PYTHON' ; python3 -c "import sys, torch, os; import importlib.util as u; print('dont_write', sys.dont_write_bytecode, 'prefix', sys.pycache_prefix, 'torch dir writable', os.access(os.path.dirname(torch.__file__), os.W_OK), 'torch pyc', os.path.exists(u.cache_from_source(torch.__file__)))"; } > $R/env.txt 2>&1; cat $R/env.txt
    python3 -c "import sys; sys.path.insert(0,'benchmarks'); from gpu_bench import make_images; from infer_gpu_bench import make_models; from pathlib import Path; make_images(Path('/tmp/pochi_infer_bench'), 2000); make_models(Path('/tmp/gil_probe_models'))" > /dev/null 2>&1
    M=/tmp/gil_probe_models/resnet18/models/resnet18.pth
    wall() { python3 -c "import subprocess as s, sys, time; t = time.time(); s.run(sys.argv[1:]); print(round(time.time() - t, 2))" python3 -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/r3_$1 --quiet 2>&1 | tail -1; }
    for i in 1 2; do echo "no cache (POCHI_BYTECODE_CACHE=0): $(POCHI_BYTECODE_CACHE=0 wall n$i) s"; done | tee $R/walls.txt
    for i in 0 1 2; do echo "bytecode cache, run $i: $(wall c$i) s"; done | tee -a $R/walls.txt
    du -sh ~/.cache/pochitrain/pycache 2>&1 | tee -a $R/walls.txt
    python3 -X importtime -m pochitrain.cli.main --help 2> /tmp/imp.txt > /dev/null; tail -1 /tmp/imp.txt | tee -a $R/walls.txt ;;
  round4)
    # round3, then where the input stage's time goes: seconds inside read / decode / assemble
    # (files, memory, record_stream off), its steady rate beside resnet18 end to end, nvJPEG
    # alone, nvImageCodec's hardware decoder fed by 1/2/4 threads, a py-spy --gil profile of
    # the pipeline, and a cProfile of `pochi infer` with the bytecode cache; into $OUT/r3, r4
    python3 -m pip install -q --no-index --no-deps --no-compile --target /root/nvimg .carry/nvimg/*.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site .carry/tools/*.whl
    bash "$0" round3
    R=$OUT/r4; mkdir -p $R; export PATH=/root/site/bin:$PATH
    for v in "--reads files" "--reads memory" "--reads files --no-record-stream"; do
      timeout 60 python3 benchmarks/gil_probe.py pipeline $v --repeat 4 --passes 3 --stages >> $R/probes.jsonl; done
    timeout 120 python3 benchmarks/gil_probe.py e2e --model resnet18 --passes 3 2>&1 | grep '"probe"' >> $R/probes.jsonl
    timeout 60 python3 benchmarks/gil_probe.py decode --procs 1 --passes 4 >> $R/probes.jsonl
    cat $R/probes.jsonl
    timeout 120 python3 benchmarks/decode_probe.py --json $R/decode.json --nvimg-path /root/nvimg 2>&1 | tail -30
    timeout 90 py-spy record --nonblocking --gil --threads -r 250 -f raw -o /tmp/pf.raw -- \
      python3 benchmarks/gil_probe.py pipeline --repeat 4 --passes 3 > /dev/null 2>&1
    python3 benchmarks/spy_summary.py /tmp/pf.raw > $R/spy_pipe_files.txt 2>&1; head -40 $R/spy_pipe_files.txt
    M=/tmp/gil_probe_models/resnet18/models/resnet18.pth
    python3 -m cProfile -o /tmp/infer.prof -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/r4prof --quiet > /dev/null 2>&1
    python3 -c "import pstats; pstats.Stats('/tmp/infer.prof').sort_stats('cumulative').print_stats(50)" > $R/infer_profile_cached.txt 2>&1
    grep -E 'function calls|compile' $R/infer_profile_cached.txt | head -5 ;;
  round5)
    # after round4: the reader process against the read thread (input stage, resnet18 and
    # resnet50 end to end), and the whole `pochi infer` with the start-up overlaps (walls
    # after one run that fills the bytecode cache, then a py-spy --idle timeline); into $OUT/r5
    python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site .carry/tools/*.whl
    R=$OUT/r5; mkdir -p $R; export PATH=/root/site/bin:$PATH
    python3 -c "import sys; sys.path.insert(0,'benchmarks'); from gpu_bench import make_images; from infer_gpu_bench import make_models; from pathlib import Path; make_images(Path('/tmp/pochi_infer_bench'), 2000); make_models(Path('/tmp/gil_probe_models'))" > /dev/null 2>&1
    M=/tmp/gil_probe_models/resnet18/models/resnet18.pth
    wall() { python3 -c "import subprocess as s, sys, time; t = time.time(); s.run(sys.argv[1:]); print(round(time.time() - t, 2))" python3 -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/r5_$1 --quiet 2>&1 | tail -1; }
    for i in 0 1 2 3; do echo "pochi infer, run $i: $(wall c$i) s"; done | tee $R/walls.txt
    for f in "" --fast "" --fast; do python3 benchmarks/exit_probe.py $f infer $M --data /tmp/pochi_infer_bench -o /tmp/r5x$RANDOM --quiet; done | tee -a $R/walls.txt
    for rd in thread process; do for v in "--reads files --stages" "--reads files"; do
      POCHI_READER=$rd timeout 60 python3 benchmarks/gil_probe.py pipeline $v --repeat 4 --passes 3 | sed "s/\"probe\": \"pipeline\"/\"probe\": \"pipeline $rd\"/" >> $R/probes.jsonl; done; done
    POCHI_READER=thread timeout 60 python3 benchmarks/gil_probe.py pipeline --reads memory --repeat 4 --passes 3 >> $R/probes.jsonl
    for rd in thread process; do for m in resnet18 resnet50; do
      POCHI_READER=$rd timeout 120 python3 benchmarks/gil_probe.py e2e --model $m --passes 3 2>&1 | grep '"probe"' | sed "s/\"probe\": \"e2e\"/\"probe\": \"e2e $rd\"/" >> $R/probes.jsonl; done; done
    cat $R/probes.jsonl
    timeout 60 py-spy record --nonblocking --idle --threads -r 250 -f raw -o /tmp/ci.raw -- \
      python3 -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/r5spy --quiet > /dev/null 2>&1
    python3 benchmarks/spy_summary.py /tmp/ci.raw > $R/spy_infer_idle.txt 2>&1; head -60 $R/spy_infer_idle.txt
    python3 -X importtime -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/r5imp --quiet 2> /tmp/imp.txt > /dev/null
    sort -t'|' -k2 -n /tmp/imp.txt | tail -30 > $R/importtime.txt ;;
  round6)
    # the reader process against the read thread on 2,000 files: whole `pochi infer` walls
    # (alternating, after one run that fills the bytecode cache), the input stage and
    # resnet18 end to end; into $OUT/r6
    R=$OUT/r6; mkdir -p $R
    python3 -c "import sys; sys.path.insert(0,'benchmarks'); from gpu_bench import make_images; from infer_gpu_bench import make_models; from pathlib import Path; make_images(Path('/tmp/pochi_infer_bench'), 2000); make_models(Path('/tmp/gil_probe_models'))" > /dev/null 2>&1
    M=/tmp/gil_probe_models/resnet18/models/resnet18.pth
    wall() { python3 -c "import subprocess as s, sys, time; t = time.time(); s.run(sys.argv[1:]); print(round(time.time() - t, 2))" python3 -m pochitrain.cli.main infer $M --data /tmp/pochi_infer_bench -o /tmp/r6_$1 --quiet 2>&1 | tail -1; }
    wall fill > /dev/null
    for i in 1 2 3; do for rd in thread process; do echo "pochi infer, $rd reader: $(POCHI_READER=$rd wall $rd$i) s"; done; done | tee $R/walls.txt
    for rd in thread process; do
      POCHI_READER=$rd timeout 60 python3 benchmarks/gil_probe.py pipeline --reads files --passes 4 | sed "s/\"probe\": \"pipeline\"/\"probe\": \"pipeline 2000 $rd\"/" >> $R/probes.jsonl
      POCHI_READER=$rd timeout 60 python3 benchmarks/gil_probe.py pipeline --reads files --repeat 4 --passes 3 | sed "s/\"probe\": \"pipeline\"/\"probe\": \"pipeline $rd\"/" >> $R/probes.jsonl
      POCHI_READER=$rd timeout 120 python3 benchmarks/gil_probe.py e2e --model resnet18 --passes 3 2>&1 | grep '"probe"' | sed "s/\"probe\": \"e2e\"/\"probe\": \"e2e $rd\"/" >> $R/probes.jsonl; done
    POCHI_READER=thread timeout 60 python3 benchmarks/gil_probe.py pipeline --reads memory --repeat 4 --passes 3 >> $R/probes.jsonl
    timeout 60 python3 benchmarks/gil_probe.py decode --procs 1 --passes 4 >> $R/probes.jsonl
    cat $R/probes.jsonl ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
