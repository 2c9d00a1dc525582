#!/usr/bin/env bash
# Runs TorchServe's own integration tests (test/pytest of pytorch/serve) against torchyard, one
# file at a time, offline, and writes a pass/fail table. A developer tool, not part of CI.
#
#   scripts/torchserve-pytest.sh [--launcher real|standin] [--setup-only] SERVE [FILE...]
#
# SERVE is a pytorch/serve checkout or the git directory of one (e.g. what the `fetch` tool
# brings: /work/.mirror/pytorch+serve/repo); it is copied, without .git, to $ROOT/serve once.
# FILE... limits the run to those test files (default: the 29 files that run offline on CPU).
# --launcher real (default when target/release/torchserve exists): the `torchserve` command
#   this checkout builds; standin: a small script mapping `torchserve --start/--stop` onto
#   `torchyard serve`. Both binaries are copied to $ROOT first, so a rebuild cannot swap them
#   in the middle of a run.
# Environment: TSPYTEST_ROOT (/tmp/tspytest), TSPYTEST_TOOLS (the offline helpers,
#   /work/shared/tools/torchserve-pytest), TSPYTEST_BASE_PYTHON (the Python whose packages,
#   torch included, the harness reuses: this checkout's .venv), TSPYTEST_TEST_TIMEOUT (300 s a
#   test), TSPYTEST_FILE_TIMEOUT (1800 s a file), TSPYTEST_RELEASE (where the binaries are:
#   this checkout's target/release).
# Output: $ROOT/results-<date>.tsv (file, test, outcome, one-line reason), $ROOT/summary-<date>.txt
#   (per-file counts and the total), pytest's output per file in $ROOT/runs/<date>/.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${TSPYTEST_ROOT:-/tmp/tspytest}
TOOLS=${TSPYTEST_TOOLS:-/work/shared/tools/torchserve-pytest}
BASE_PY=${TSPYTEST_BASE_PYTHON:-$REPO/.venv/bin/python}
TEST_TIMEOUT=${TSPYTEST_TEST_TIMEOUT:-300}
FILE_TIMEOUT=${TSPYTEST_FILE_TIMEOUT:-1800}
RELEASE=${TSPYTEST_RELEASE:-$REPO/target/release}

# The files of test/pytest that need no GPU, no accelerator library (vLLM, IPEX, XLA, TensorRT,
# DALI, ONNX), no C++ backend, no Mac, no model download by the test itself beyond what the
# offline helpers serve, and no torchtext/opencv: TorchServe 0.12 passes 135 of their 151 tests
# offline.
FILES=(
  test_async_worker_comm.py test_auto_recover.py test_benchmark.py test_continuous_batching.py
  test_example_micro_batching.py test_example_stateful_sequence_batching_http.py
  test_example_stateful_sequence_continuous_batching_http.py test_gRPC_allowed_urls.py
  test_gRPC_inference_api.py test_gRPC_management_apis.py test_gRPC_model_control.py
  test_gRPC_token_authorization.py test_handler.py test_handler_traceback_logging.py
  test_metrics.py test_metrics_kf.py test_mnist_template.py test_model_archiver.py
  test_model_config.py test_model_control_mode.py test_model_custom_dependencies.py
  test_parallelism.py test_pytorch_profiler.py test_send_intermediate_prediction_response.py
  test_snapshot.py test_startup_timeout.py test_token_authorization.py test_torch_compile.py
  test_url_path.py
)

launcher=""
setup_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --launcher) launcher=$2; shift 2 ;;
    --setup-only) setup_only=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: $0 [--launcher real|standin] [--setup-only] SERVE [FILE...]" >&2; exit 2; }
SERVE_SRC=$1; shift
[ $# -gt 0 ] && FILES=("$@")
if [ -z "$launcher" ]; then
  if [ -x "$RELEASE/torchserve" ]; then launcher=real; else launcher=standin; fi
fi

VENV=$ROOT/venv
PY=$VENV/bin/python
mkdir -p "$ROOT"

# 1. The serve checkout, without .git. A fetched repository may lack a few binary blobs (the
#    offline helpers make stand-ins for the ones the tests need), so blobs are copied one by one.
if [ ! -d "$ROOT/serve/test/pytest" ]; then
  echo "== copying $SERVE_SRC to $ROOT/serve"
  if git -C "$SERVE_SRC" rev-parse --git-dir >/dev/null 2>&1; then
    python3 - "$SERVE_SRC" "$ROOT/serve" <<'EOF'
import os, subprocess, sys
repo, out = sys.argv[1], sys.argv[2]
listing = subprocess.check_output(["git", "-C", repo, "ls-tree", "-r", "-z", "HEAD"])
cat = subprocess.Popen(["git", "-C", repo, "cat-file", "--batch"], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE)
missing = []
for entry in filter(None, listing.split(b"\0")):
    meta, path = entry.split(b"\t", 1)
    mode, kind, sha = meta.decode().split()
    if kind != "blob":
        continue
    cat.stdin.write(sha.encode() + b"\n"); cat.stdin.flush()
    header = cat.stdout.readline().split()
    if header[-1] == b"missing":
        missing.append(path.decode()); continue
    data = cat.stdout.read(int(header[2])); cat.stdout.read(1)
    dst = os.path.join(out, path.decode())
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if mode == "120000":
        os.symlink(data.decode(), dst)
    else:
        with open(dst, "wb") as f:
            f.write(data)
        if mode == "100755":
            os.chmod(dst, 0o755)
print("missing blobs:", *missing, sep="\n  ")
EOF
  else
    mkdir -p "$ROOT/serve"
    (cd "$SERVE_SRC" && tar --exclude=.git -cf - .) | tar -xf - -C "$ROOT/serve"
  fi
fi

# 2. A venv of its own that reuses the base Python's packages (torch is not downloaded again),
#    with what TorchServe's tests need on top. pytest 9 refuses marks on fixtures
#    (test_pytorch_profiler.py has one), so pytest 8.3 as TorchServe's CI used.
if [ ! -x "$PY" ]; then
  echo "== venv $VENV"
  "$BASE_PY" -m venv --system-site-packages "$VENV"
  base_site=$("$BASE_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  venv_site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import site; site.addsitedir('$base_site')" > "$venv_site/zz_base_venv.pth"
  nice "$PY" -m pip install -q "pytest>=8.3,<8.4" pytest-timeout pytest-mock mock psutil captum \
    transformers orjson
  for tool in torch-model-archiver torch-workflow-archiver; do
    sed "1s|.*|#!$PY|" "$(dirname "$BASE_PY")/$tool" > "$VENV/bin/$tool"
    chmod +x "$VENV/bin/$tool"
  done
fi

# 3. gRPC stubs from TorchServe's protos (google/rpc/status.proto from this checkout's proto/).
PROTO=$ROOT/serve/frontend/server/src/main/resources/proto
if [ ! -f "$ROOT/grpc_stubs/management_pb2_grpc.py" ]; then
  echo "== gRPC stubs"
  mkdir -p "$ROOT/grpc_stubs"
  "$PY" -m grpc_tools.protoc -I "$PROTO" -I "$REPO/proto" --python_out="$ROOT/grpc_stubs" \
    --grpc_python_out="$ROOT/grpc_stubs" "$PROTO/inference.proto" "$PROTO/management.proto"
fi

# 4. Stand-in weights: the MNIST example (trained on the tests' digits), the archives'
#    pretrained .pth files (random weights), and resnet18 in the cache micro-batching reads.
export PATH=$VENV/bin:$PATH TSPYTEST_ROOT=$ROOT
if [ ! -f "$ROOT/offline/mnist.mar" ]; then
  echo "== stand-in weights"
  mkdir -p "$ROOT/offline/weights"
  nice -n 10 "$PY" "$TOOLS/make_mnist_standin.py" "$ROOT/serve"
  cp "$ROOT/serve/test/resources/models/mnist.mar" "$ROOT/offline/mnist.mar"
fi
nice -n 10 "$PY" "$TOOLS/make_weights.py"
mkdir -p "$ROOT/serve/.cache"
cp -n "$ROOT/offline/weights/resnet18-f37072fd.pth" "$ROOT/serve/.cache/"

# 5. The `torchserve` command, from a copy of the binaries.
STAMP=$(date -u +%Y%m%d-%H%M)
BIN=$ROOT/bin-$STAMP
mkdir -p "$BIN"
cp "$RELEASE/torchyard" "$BIN/"
if [ "$launcher" = real ]; then
  cp "$RELEASE/torchserve" "$BIN/"
else
  cat > "$BIN/torchserve" <<'EOF'
#!/usr/bin/env bash
# Stand-in `torchserve`: --start runs `torchyard serve` in the background (output to this
# command's stdout), records its pid in $TMPDIR/.model_server.pid and returns once /ping
# answers; --stop [--foreground] sends SIGTERM (and waits for the exit).
TORCHYARD=$(dirname "$0")/torchyard
PID_FILE="${TMPDIR:-/tmp}/.model_server.pid"
start=0 stop=0 fg=0 config="" args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --start) start=1 ;;
    --stop) stop=1 ;;
    --foreground) fg=1 ;;
    --ts-config) config="$2"; args+=(--ts-config "$2"); shift ;;
    --plugins-path|--log-config|--workflow-store|--cpp-log-config) shift ;;
    --no-config-snapshots|--ncs) args+=(--ncs) ;;
    --models) shift; args+=(--models)
      while [ $# -gt 0 ] && [[ "$1" != --* ]]; do args+=("$1"); shift; done; continue ;;
    *) args+=("$1") ;;
  esac
  shift
done
running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }
if [ $stop = 1 ]; then
  if ! running; then echo "TorchServe is not currently running."; rm -f "$PID_FILE"; exit 0; fi
  pid=$(cat "$PID_FILE"); kill -TERM "$pid"
  if [ $fg = 1 ]; then
    for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$PID_FILE"; echo "TorchServe has stopped."; exit 0
fi
[ $start = 1 ] || { echo "usage: torchserve --start|--stop ..."; exit 2; }
if running; then
  echo "TorchServe is already running, please use torchserve --stop to stop TorchServe."; exit 1
fi
addr=http://127.0.0.1:8080
if [ -n "$config" ] && grep -q '^ *inference_address *=' "$config"; then
  addr=$(grep '^ *inference_address *=' "$config" | tail -1 | sed 's/^[^=]*= *//; s/0\.0\.0\.0/127.0.0.1/')
fi
"$TORCHYARD" serve "${args[@]}" < /dev/null &
pid=$!
echo "$pid" > "$PID_FILE"
for _ in $(seq 1200); do
  kill -0 "$pid" 2>/dev/null || { echo "torchyard serve exited before answering /ping"; rm -f "$PID_FILE"; exit 1; }
  if curl -sk -o /dev/null --max-time 2 "$addr/ping"; then echo "Model server started."; exit 0; fi
  sleep 0.1
done
echo "torchyard serve did not answer $addr/ping in 120 s"; exit 1
EOF
  chmod +x "$BIN/torchserve"
fi
[ $setup_only = 1 ] && { echo "setup done in $ROOT"; exit 0; }

# 6. One pytest process per file, each with its own TMPDIR (where the pid file lives), from
#    serve/test/pytest as TorchServe's CI runs them; the server is stopped after each file.
RUN=$ROOT/runs/$STAMP
TSV=$ROOT/results-$STAMP.tsv
SUMMARY=$ROOT/summary-$STAMP.txt
mkdir -p "$RUN"
rm -rf "$ROOT/serve/test/pytest/logs"
export PATH=$BIN:$PATH TORCHYARD_PYTHON=$PY
export PYTHONPATH=$ROOT/grpc_stubs:$TOOLS
echo "== $launcher launcher, binaries of $RELEASE ($(git -C "$RELEASE" rev-parse --short HEAD 2>/dev/null)), results in $TSV"
printf 'file\ttest\toutcome\treason\n' > "$TSV"
for file in "${FILES[@]}"; do
  stem=${file%.py}
  tmp=$ROOT/tmp/$stem
  # TorchServe's CI (ts_scripts/regression_utils.py) makes $TMPDIR/workspace/model_store before
  # pytest runs; the gRPC files write their config.properties there.
  rm -rf "$tmp"; mkdir -p "$tmp/workspace/model_store"
  start=$(date +%s)
  rc=0
  (cd "$ROOT/serve/test/pytest" && TMPDIR=$tmp nice -n 10 timeout -k 30 "$FILE_TIMEOUT" \
    "$PY" -m pytest -p offline_net -p no:cacheprovider --timeout "$TEST_TIMEOUT" -q -rA \
    --junitxml="$RUN/$stem.xml" "$file" > "$RUN/$stem.log" 2>&1) || rc=$?
  TMPDIR=$tmp timeout 120 torchserve --stop --foreground > /dev/null 2>&1 || true
  "$PY" - "$RUN/$stem.xml" "$file" "$rc" "$RUN/$stem.log" >> "$TSV" <<'EOF'
import os, re, sys, xml.etree.ElementTree as ET
path, file, rc, log = sys.argv[1:5]
# Tests whose assertions run in threads pass even when those assertions fail; pytest lists the
# thread's exception in its warnings summary, so those passes are marked.
thread_failures = {}
text = open(log, errors="replace").read() if os.path.exists(log) else ""
summary = re.search(r"^=+ warnings summary =+$(.*?)^(?:-- Docs|=+ )", text, re.M | re.S)
if summary:
    current = None
    for line in summary.group(1).splitlines():
        m = re.match(r"^\S*?" + re.escape(file) + r"::(\S+)", line)
        if m:
            current = m.group(1)
        elif current and re.match(r"^\s+\w*(Error|Exception)\b", line) and "Warning" not in line:
            thread_failures.setdefault(current, " ".join(line.split())[:200])
if not os.path.exists(path):
    print(f"{file}\t-\terror\tno results: pytest exited with {rc} (124: file timeout)")
    sys.exit()
for case in ET.parse(path).iter("testcase"):
    cls = case.get("classname", "").split(".")
    stem = file[:-3]
    cls = cls[cls.index(stem) + 1:] if stem in cls else []
    name = "::".join(cls + [case.get("name")])
    outcome, reason = "passed", ""
    for kind in ("failure", "error", "skipped"):
        el = case.find(kind)
        if el is not None:
            outcome = {"failure": "failed"}.get(kind, kind)
            text = (el.get("message") or el.text or "").strip()
            reason = " ".join(text.split())[:300]
            break
    if outcome == "passed" and name in thread_failures:
        reason = "passed, but an assertion failed in a thread: " + thread_failures[name]
    print(f"{file}\t{name}\t{outcome}\t{reason}")
EOF
  echo "$file: $(awk -F'\t' -v f="$file" '$1==f{n[$3]++} END{printf "%d passed, %d failed, %d error, %d skipped", n["passed"], n["failed"], n["error"], n["skipped"]}' "$TSV") ($(( $(date +%s) - start )) s)" | tee -a "$SUMMARY"
done
awk -F'\t' 'NR>1{n[$3]++} END{printf "%d passed, %d failed (%d failed, %d errors), %d skipped\n", n["passed"], n["failed"]+n["error"], n["failed"], n["error"], n["skipped"]}' "$TSV" | tee -a "$SUMMARY"
