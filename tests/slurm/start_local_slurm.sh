#!/usr/bin/env bash
# Start a one-node SLURM (slurmctld + slurmd, munge) on this machine, for the
# workflow's SLURM test.  No systemd: the daemons run as background processes
# and their PIDs go to $STATE/pids, so stop_local_slurm.sh stops exactly them.
#
#   tests/slurm/start_local_slurm.sh STATE_DIR
#
# Installs Debian's slurm-wlm and munge when missing only if CCDFLOW_INSTALL_SLURM=1
# (needs root and apt); otherwise exits 3 saying so, and the test skips.
# Exits 0 once `sbatch --wrap true` has round-tripped; non-zero with a message
# otherwise.  Pitfalls measured by the team (../shared/NOTES.md): no accounting
# database, so status comes from squeue and finished jobs must stay visible
# (MinJobAge); bf_interval=1 so jobs do not wait ~30 s in the queue.
set -euo pipefail
STATE=${1:?usage: start_local_slurm.sh STATE_DIR}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    # installing system packages only when asked: .ci/run asks, a plain `pytest` does not
    if [ "${CCDFLOW_INSTALL_SLURM:-0}" != 1 ]; then
        echo "slurm-wlm/munge are not installed; set CCDFLOW_INSTALL_SLURM=1 to let the" \
             "test install them with apt-get (root), or install them yourself" >&2
        exit 3
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "slurm-wlm/munge are not installed and cannot be (needs root and apt-get)" >&2
        exit 3
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$STATE/apt.log" 2>&1
    apt-get install -y -qq slurm-wlm munge >>"$STATE/apt.log" 2>&1 || {
        echo "apt-get install slurm-wlm munge failed: see $STATE/apt.log" >&2; exit 3; }
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
USER_NAME=$(id -un)
mkdir -p "$STATE"/{spool,slurmd,log,munge,run}
chmod 700 "$STATE/munge"

# munge: a key of our own, a socket of our own
if [ ! -s "$STATE/munge/munge.key" ]; then
    dd if=/dev/urandom bs=1 count=1024 of="$STATE/munge/munge.key" status=none
fi
chmod 400 "$STATE/munge/munge.key"
MUNGE_SOCKET="$STATE/munge/munge.socket"
munged --force --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
    --seed-file="$STATE/munge/munge.seed"
for _ in $(seq 50); do [ -s "$STATE/munge/munged.pid" ] && break; sleep 0.1; done
cat "$STATE/munge/munged.pid" > "$STATE/pids"

# The config goes to SLURM's default path: snakemake-executor-plugin-slurm's job
# step drops SLURM_* variables (SLURM_CONF with them) before its inner srun.
CONF_PATH=/etc/slurm/slurm.conf
MARK="# written by ccdflow tests/slurm/start_local_slurm.sh"
if [ -e "$CONF_PATH" ] && ! grep -qF "$MARK" "$CONF_PATH"; then
    echo "$CONF_PATH exists and is not ours: refusing to replace a real SLURM setup" >&2
    exit 3
fi
mkdir -p "$(dirname "$CONF_PATH")"
cat > "$CONF_PATH" <<CONF
$MARK ($STATE)
ClusterName=ccdflow-test
SlurmctldHost=$HOST
SlurmUser=$USER_NAME
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$STATE/spool
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=600
ReturnToService=2
MpiDefault=none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
cp "$CONF_PATH" "$STATE/slurm.conf"
slurmctld -i
for _ in $(seq 50); do [ -s "$STATE/run/slurmctld.pid" ] && break; sleep 0.1; done
cat "$STATE/run/slurmctld.pid" >> "$STATE/pids"
slurmd
for _ in $(seq 50); do [ -s "$STATE/run/slurmd.pid" ] && break; sleep 0.1; done
cat "$STATE/run/slurmd.pid" >> "$STATE/pids"

# wait until the node is idle and a job round-trips
for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then break; fi
    sleep 0.5
done
if ! sinfo -h -o %t | grep -qx idle; then
    echo "the SLURM node did not become idle: see $STATE/log" >&2; exit 4
fi
if ! timeout 60 srun -N1 -n1 true 2>"$STATE/log/srun.err"; then
    echo "srun true failed: $(cat "$STATE/log/srun.err")" >&2; exit 4
fi
echo "SLURM up: $CONF_PATH"
