#!/usr/bin/env bash
# Build (plain javac) and run one Flink keyed-state anchor workload in an embedded MiniCluster,
# then print ONE summary line.
#
#   ./run.sh WORKLOAD BACKEND [--n N] [--k K] [--parallelism P] [--checkpoint-ms MS]
#            [--incremental true|false] [--emit-every E] [--seed S] [--object-reuse true|false]
#            [--async-state true|false] [--events-per-ms EPM (w6, default 100)]
#
#   WORKLOAD: w0 (stateless) | w1 (ValueState) | w2 (ListState) | w3 (MapState) | w5 (tumbling) | w6 (session)
#   BACKEND:  hashmap | rocksdb | forst
#   env: JVM_HEAP (default 8g), MANAGED_MB (default 4096), JAVA_EXTRA_OPTS, FLINK_ANCHOR_TMP
#
# Everything large lives in .venv/, build/, logs/ (git-ignored) and under $FLINK_ANCHOR_TMP.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

FLINK_VERSION=2.3.0
if [[ $# -lt 2 ]]; then
    sed -n '2,13p' "$0"
    exit 2
fi
WORKLOAD="$1"; BACKEND="$2"; shift 2

# ---- 1. Flink jars from PyPI (apache-flink-libraries ships flink-dist and friends) ----------
if [[ ! -d .venv ]]; then
    python3 -m venv .venv
fi
LIB="$(ls -d .venv/lib/python3*/site-packages/pyflink/lib 2>/dev/null | head -1 || true)"
if [[ -z "$LIB" || ! -f "$LIB/flink-dist-$FLINK_VERSION.jar" ]]; then
    .venv/bin/pip install --quiet --no-deps "apache-flink-libraries==$FLINK_VERSION" >&2
    LIB="$(ls -d .venv/lib/python3*/site-packages/pyflink/lib | head -1)"
fi
CP_FLINK="$LIB/flink-dist-$FLINK_VERSION.jar"
for j in "$LIB"/log4j-*.jar; do CP_FLINK="$CP_FLINK:$j"; done

# ---- 2. build ------------------------------------------------------------------------------
SRC=src/anchor/KeyedStateBench.java
CLS=build/classes
if [[ ! -f "$CLS/anchor/KeyedStateBench.class" || "$SRC" -nt "$CLS/anchor/KeyedStateBench.class" ]]; then
    rm -rf "$CLS" && mkdir -p "$CLS"
    javac --release 17 -nowarn -cp "$CP_FLINK" -d "$CLS" "$SRC" >&2
fi

# ---- 3. run --------------------------------------------------------------------------------
JVM_HEAP="${JVM_HEAP:-8g}"
MANAGED_MB="${MANAGED_MB:-4096}"
# The --add-opens/--add-exports set is the one Flink's own config.yaml passes on Java 17.
JVM_OPTS=(
    "-Xms$JVM_HEAP" "-Xmx$JVM_HEAP" -XX:+UseG1GC
    --add-exports=java.base/sun.net.util=ALL-UNNAMED
    --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
    --add-opens=java.base/java.lang=ALL-UNNAMED
    --add-opens=java.base/java.net=ALL-UNNAMED
    --add-opens=java.base/java.io=ALL-UNNAMED
    --add-opens=java.base/java.nio=ALL-UNNAMED
    --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens=java.base/java.text=ALL-UNNAMED
    --add-opens=java.base/java.time=ALL-UNNAMED
    --add-opens=java.base/java.util=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
)
# shellcheck disable=SC2206
[[ -n "${JAVA_EXTRA_OPTS:-}" ]] && JVM_OPTS+=($JAVA_EXTRA_OPTS)

RUN_ID="$(date +%Y%m%d-%H%M%S)-$WORKLOAD-$BACKEND-$$"
TMPBASE="${FLINK_ANCHOR_TMP:-/tmp/flink-anchor}/$RUN_ID"
mkdir -p logs "$TMPBASE/local"
LOG="$HERE/logs/$RUN_ID.flink.log"
OUTF="$HERE/logs/$RUN_ID.out"
TIMEF="$HERE/logs/$RUN_ID.time"
GCLOG="$HERE/logs/$RUN_ID.gc.log"

TIME_CMD=()
[[ -x /usr/bin/time ]] && TIME_CMD=(/usr/bin/time -v -o "$TIMEF")

set +e
"${TIME_CMD[@]}" java "${JVM_OPTS[@]}" \
    "-Xlog:gc:file=$GCLOG" \
    -Dlog4j.configurationFile="$HERE/conf/log4j2.properties" -Dlog.file="$LOG" \
    -cp "$CLS:$CP_FLINK" anchor.KeyedStateBench \
    --workload "$WORKLOAD" --backend "$BACKEND" --managed-mb "$MANAGED_MB" \
    --checkpoint-dir "file://$TMPBASE/checkpoints" --local-dir "$TMPBASE/local" \
    "$@" >"$OUTF" 2>&1
RC=$?
set -e
rm -rf "$TMPBASE"
if [[ $RC -ne 0 ]] || ! grep -q '^RESULT ' "$OUTF"; then
    echo "run failed (rc=$RC); see $OUTF and $LOG" >&2
    tail -30 "$OUTF" >&2
    exit 1
fi

# ---- 4. summary ----------------------------------------------------------------------------
RESULT="$(grep '^RESULT ' "$OUTF" | tail -1 | sed 's/^RESULT //')"
if [[ -f "$TIMEF" ]]; then
    RSS_KB="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$TIMEF")"
    WALL="$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$TIMEF")"
    WALL_S="$(echo "$WALL" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')"
    CPU_PCT="$(awk -F': ' '/Percent of CPU/ {print $2}' "$TIMEF")"
else
    RSS_KB=NA; WALL_S=NA; CPU_PCT=NA
fi
RSS_MB="$(awk -v k="$RSS_KB" 'BEGIN { if (k=="NA") print "NA"; else printf "%.0f", k/1024 }')"
# Checkpoint statistics from the JobManager's log lines
#   "Completed checkpoint N for job J (B bytes, checkpointDuration=D ms, finalizationTime=F ms)."
CKPT="$( { grep -o 'Completed checkpoint [0-9]* for job [0-9a-f]* ([0-9]* bytes, checkpointDuration=[0-9]* ms' "$LOG" 2>/dev/null || true; } |
    sed -E 's/.*\(([0-9]+) bytes, checkpointDuration=([0-9]+) ms/\1 \2/' |
    awk '{n++; b+=$1; if ($1>mb) mb=$1; d+=$2; if ($2>md) md=$2}
         END { if (n) printf "checkpoints=%d ckpt_avg_mb=%.1f ckpt_max_mb=%.1f ckpt_avg_ms=%.0f ckpt_max_ms=%d", n, b/n/1048576, mb/1048576, d/n, md;
               else printf "checkpoints=0" }')"
# GC: number of pauses, total pause time, max heap occupancy right after a GC (~ live set)
GC="$( { grep -E 'Pause (Young|Full|Remark|Cleanup)' "$GCLOG" 2>/dev/null || true; } |
    sed -E 's/.* ([0-9]+)M->([0-9]+)M\([0-9]+M\) ([0-9.]+)ms$/\2 \3/' |
    awk '$1 ~ /^[0-9]+$/ {n++; t+=$2; if ($1>m) m=$1} END { printf "gc_pauses=%d gc_pause_s=%.2f heap_after_gc_max_mb=%d", n, t/1000, m }')"
LINE="$RESULT peak_rss_mb=$RSS_MB process_wall_s=$WALL_S cpu=$CPU_PCT $GC $CKPT jvm_heap=$JVM_HEAP flink=$FLINK_VERSION"
echo "$LINE" >>logs/summary.txt
echo "$LINE"
