#!/usr/bin/env bash
# Stop the daemons started by start_local_slurm.sh STATE_DIR, by the PIDs it recorded.
set -uo pipefail
STATE=${1:?usage: stop_local_slurm.sh STATE_DIR}
[ -f "$STATE/pids" ] || exit 0
tac "$STATE/pids" | while read -r pid; do
    kill "$pid" 2>/dev/null || true
done
for _ in $(seq 50); do
    alive=0
    while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1; done < "$STATE/pids"
    [ "$alive" = 0 ] && break
    sleep 0.1
done
while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done < "$STATE/pids"
rm -f "$STATE/pids"
if grep -qF "# written by ccdflow tests/slurm/start_local_slurm.sh" /etc/slurm/slurm.conf 2>/dev/null; then
    rm -f /etc/slurm/slurm.conf
fi
