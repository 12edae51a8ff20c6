#!/usr/bin/env bash
# The cost of crossing processes: W1 and W3 on 1 process x 2 workers against 2 processes x 1
# worker (localhost TCP, serde/bincode for every record that changes process), same machine,
# alternating, REPEAT runs each. Prints one summary line per run: the job time is the slower
# process's (the job ends when both have), eps = N / that time.
#
#   N=20000000 K=1000000 REPEAT=3 bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000000}
K=${K:-1000000}
REPEAT=${REPEAT:-3}
EDDY=${EDDY:-target/release/eddy}
[[ -x $EDDY ]] || cargo build --release --workspace

# "W1: 20000000 events in 1.23 s = ..." -> 1.23 (the largest over the lines given)
job_seconds() { grep -o 'events in [0-9.]* s' | awk '{ if ($3 > max) max = $3 } END { print max }'; }

for run in $(seq "$REPEAT"); do
    for workload in w1 w3; do
        one=$("$EDDY" run "$workload" --n "$N" --k "$K" --parallelism 2 | job_seconds)
        two=$("$EDDY" cluster local -n 2 -- run "$workload" --n "$N" --k "$K" 2>/dev/null | job_seconds)
        awk -v w="$workload" -v r="$run" -v n="$N" -v one="$one" -v two="$two" 'BEGIN {
            printf "%s run %d  1x2 job_s=%.3f eps=%.0f  2x1 job_s=%.3f eps=%.0f  ratio=%.2f\n",
                w, r, one, n / one, two, n / two, two / one }'
    done
done
