# A one-host Slurm (munge, slurmctld, slurmd) in a given folder, for tests and scripts/start.sh. Sourced.
# Every function is idempotent: start on a running cluster returns at once; stop on a stopped one does nothing.
# Stopping cancels every job first (a slurmd stopped under a running job leaves its slurmstepd behind).
#
#   slurm_start DIR   write DIR/slurm.conf, start munged (if not running), slurmctld and slurmd; wait for the node
#   slurm_stop DIR    scancel all jobs, stop slurmd and slurmctld started for DIR (munged is left to munge_stop)
#   munge_start / munge_stop
# After slurm_start, SLURM_CONF points at DIR/slurm.conf (sbatch, squeue and scancel read it).

_slurm_log() { printf '[incloud] %s\n' "$*" >&2; }

munge_running() { [ -f /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }

munge_start() {
  munge_running && return 0
  [ -f /etc/munge/munge.key ] || { _slurm_log "error: /etc/munge/munge.key missing (install munge)"; return 1; }
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge: /run/munge /var/lib/munge /var/log/munge /etc/munge/munge.key 2>/dev/null
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged --force || { _slurm_log "error: munged did not start"; return 1; }
  local i; for i in $(seq 50); do munge -n >/dev/null 2>&1 && return 0; sleep 0.1; done
  _slurm_log "error: munged started but does not answer"; return 1
}

munge_stop() {
  munge_running || return 0
  kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
}

slurm_write_conf() {
  local dir=$1 cpus mem
  # nproc honours OMP_NUM_THREADS, which Dask's LocalCluster sets to 1 in its caller's environment: ignore it.
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))  # MB, 80 % of the machine
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  cat > "$dir/slurm.conf" <<EOF
ClusterName=incloud
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MailProg=/bin/true
ReturnToService=2
MpiDefault=none
# Start a workstation job at once: no batch scheduling delay (default up to 3 s), no defer, a 1 s main loop.
SchedulerParameters=sched_interval=1,batch_sched_delay=0
MessageTimeout=10
KillWait=2
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  chown slurm: "$dir/state" "$dir/log"
  chmod 755 "$dir" "$dir/log"
  chmod 644 "$dir/slurm.conf"
}

_pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

_slurmctld_launch() {
  local dir=$1
  _pid_alive "$dir/slurmctld.pid" && return 0
  setsid /usr/sbin/slurmctld -D -i -f "$dir/slurm.conf" >>"$dir/log/slurmctld.out" 2>&1 < /dev/null &
  echo $! > "$dir/slurmctld.pid"
}

slurm_start() {
  local dir=${1:?slurm_start DIR}
  dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
  munge_start || return 1
  [ -f "$dir/slurm.conf" ] || slurm_write_conf "$dir"
  export SLURM_CONF="$dir/slurm.conf"
  _slurmctld_launch "$dir"
  if ! _pid_alive "$dir/slurmd.pid"; then
    setsid /usr/sbin/slurmd -D -f "$dir/slurm.conf" >>"$dir/log/slurmd.out" 2>&1 < /dev/null &
    echo $! > "$dir/slurmd.pid"
  fi
  local state tries=0 deadline=$((SECONDS + 30))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ! _pid_alive "$dir/slurmctld.pid"; then
      # Right after a controller stop, its helper (slurmscriptd) may still hold the port for a moment:
      # try again a few times before giving up.
      if [ "$tries" -lt 5 ]; then tries=$((tries + 1)); sleep 1; _slurmctld_launch "$dir"; continue; fi
      _slurm_log "error: slurmctld exited (see $dir/log)"
      tail -n 5 "$dir/log/slurmctld.log" "$dir/log/slurmctld.out" >&2 2>/dev/null
      return 1
    fi
    state=$(timeout 3 sinfo -h -N -o '%T' 2>/dev/null | head -1)
    # After a controller restart the node may still be completing a cancelled job: usable too.
    case "$state" in idle|mixed|allocated|completing) return 0 ;; esac
    sleep 0.2
  done
  _slurm_log "error: the Slurm node did not become usable in 30 s (last state: ${state:-no answer}; see $dir/log)"
  tail -n 5 "$dir/log/slurmctld.log" >&2 2>/dev/null
  return 1
}

_stop_pidfile() {
  local file=$1 pid i
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

slurm_stop() {
  local dir=${1:?slurm_stop DIR} i
  export SLURM_CONF="$dir/slurm.conf"
  if _pid_alive "$dir/slurmctld.pid"; then
    timeout 10 scancel --full --quiet --partition=debug 2>/dev/null || true
    for i in $(seq 50); do
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  _stop_pidfile "$dir/slurmd.pid"
  _stop_pidfile "$dir/slurmctld.pid"
}
