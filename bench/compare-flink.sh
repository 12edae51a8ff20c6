#!/usr/bin/env bash
# Runs the Flink keyed-state anchor and Eddy back to back on this machine, on the same
# workloads and event stream, and prints one table of eps_job figures and ratios.
#
#   bench/compare-flink.sh [WORKLOADS...]          default: w0 w1 w2 w3 (also: w5 w6)
#   env: N (20000000), K (1000000), P (2), FLINK_BACKEND (hashmap), EDDY_BACKEND (heap),
#        REPEAT (1: runs of each side per workload; the table shows medians),
#        PAUSE (10: seconds between runs), EDDY_FLAGS (extra eddy-bench flags, e.g.
#        "--rocksdb-object-cache-entries 1000000"); run.sh's own env (JVM_HEAP, ...) passes through
#
# Runs Flink from bench/flink (the project's copy of ../shared/anchors/flink, plus W5/W6). Its
# sources are copied to a writable temp dir ($FLINK_ANCHOR_DIR, default /tmp/eddy-flink-bench,
# refreshed on every call unless FLINK_ANCHOR_DIR is set and already holds run.sh), so the repo
# gets no .venv/build/logs. Needs python3 with venv and JDK 17; the first Flink run installs
# its jars from PyPI (~330 MB).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${N:-20000000}" K="${K:-1000000}" P="${P:-2}"
FLINK_BACKEND="${FLINK_BACKEND:-hashmap}" EDDY_BACKEND="${EDDY_BACKEND:-heap}"
REPEAT="${REPEAT:-1}"
WORKLOADS=("$@"); [[ ${#WORKLOADS[@]} -eq 0 ]] && WORKLOADS=(w0 w1 w2 w3)

ANCHOR="${FLINK_ANCHOR_DIR:-/tmp/eddy-flink-bench}"
if [[ -z "${FLINK_ANCHOR_DIR:-}" || ! -x "$ANCHOR/run.sh" ]]; then
    mkdir -p "$ANCHOR" && cp -pr "$ROOT"/bench/flink/{run.sh,src,conf,tools,README.md} "$ANCHOR"/
    chmod -R u+w "$ANCHOR"
fi
(cd "$ROOT" && cargo build --release --locked -p eddy-bench >&2)
EDDY="$ROOT/target/release/eddy-bench"

field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

mkdir -p "$ROOT/bench/results"
LOG="$ROOT/bench/results/compare-$(date +%Y%m%d-%H%M%S).log"
echo "# $(date -u +%FT%TZ) $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee "$LOG"
printf '| workload | Flink %s eps_job | Eddy %s eps_job | ratio | Flink peak RSS MB | Eddy peak RSS MB |\n' "$FLINK_BACKEND" "$EDDY_BACKEND"
printf '| --- | ---: | ---: | ---: | ---: | ---: |\n'
for w in "${WORKLOADS[@]}"; do
    flink_eps=() eddy_eps=() flink_rss=() eddy_rss=()
    for _ in $(seq "$REPEAT"); do
        # Eddy first, then a pause: on this VM a run started right after a Flink JVM exits
        # (and the kernel reclaims its 8 GB heap) is up to a third slower.
        # shellcheck disable=SC2086 # EDDY_FLAGS is a list of flags
        e=$("$EDDY" "$w" "$EDDY_BACKEND" --n "$N" --k "$K" --parallelism "$P" ${EDDY_FLAGS:-} | tail -1)
        echo "eddy:  $e" >>"$LOG"
        eddy_eps+=("$(field "$e" eps_job)"); eddy_rss+=("$(field "$e" peak_rss_mb)")
        sleep "${PAUSE:-10}"
        f=$("$ANCHOR/run.sh" "$w" "$FLINK_BACKEND" --n "$N" --k "$K" --parallelism "$P" 2>>"$LOG" | tail -1)
        echo "flink: $f" >>"$LOG"
        flink_eps+=("$(field "$f" eps_job)"); flink_rss+=("$(field "$f" peak_rss_mb)")
        sleep "${PAUSE:-10}"
    done
    fe=$(printf '%s\n' "${flink_eps[@]}" | median); ee=$(printf '%s\n' "${eddy_eps[@]}" | median)
    fr=$(printf '%s\n' "${flink_rss[@]}" | median); er=$(printf '%s\n' "${eddy_rss[@]}" | median)
    ratio=$(awk -v a="$ee" -v b="$fe" 'BEGIN { printf "%.1fx", a / b }')
    printf '| %s | %.0f | %.0f | %s | %s | %s |\n' "$w" "$fe" "$ee" "$ratio" "$fr" "$er"
done | tee -a "$LOG"
echo "raw lines: $LOG" >&2
