#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (munged + slurmctld + slurmd on localhost), for tests/test_slurm.py and
# for trying `hydra/launcher=slurm` without a real cluster:
#   bash scripts/slurm_local.sh install   # apt-get install slurm-wlm munge (Debian/Ubuntu, root or sudo)
#   bash scripts/slurm_local.sh start     # write the config, start the daemons, wait until the node is idle
#   bash scripts/slurm_local.sh status    # the daemons this script started, and sinfo
#   bash scripts/slurm_local.sh stop      # stop only what `start` started (pid files under $IMAGEN_SLURM_DIR)
# Everything lives under IMAGEN_SLURM_DIR (default /tmp/imagen-slurm): slurm.conf, state, spool, logs, pid files.
# /etc/slurm/slurm.conf is linked to that slurm.conf when it does not exist, so plain sbatch/sinfo find the
# cluster; otherwise export SLURM_CONF=$IMAGEN_SLURM_DIR/etc/slurm.conf. Single-user machine: SlurmUser=root.
set -euo pipefail

DIR=${IMAGEN_SLURM_DIR:-/tmp/imagen-slurm}
CONF=$DIR/etc/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)
export SLURM_CONF=$CONF

log() { echo "slurm_local: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }   # never prompts
# The daemon of a pid file (slurmd.pid -> slurmd) runs: a stale file whose pid now names another process does not count.
alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$1" .pid)" ]; }
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

install() {
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -q --no-install-recommends slurm-wlm munge ||
        { as_root apt-get update -q && as_root apt-get install -y -q --no-install-recommends slurm-wlm munge; }
}

write_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))   # MB, half the machine: modest on purpose
    mkdir -p "$DIR"/{etc,state,spool,log}
    cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: one node ($NODE), one partition (debug), no accounting, no cgroups.
ClusterName=imagen-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
KillWait=10
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    # Plain sbatch/sinfo read /etc/slurm/slurm.conf: point it here unless another cluster's config is there.
    if [ ! -e "$ETC_CONF" ] || [ "$(readlink "$ETC_CONF" || true)" = "$CONF" ]; then
        mkdir -p "$(dirname "$ETC_CONF")" && ln -sfn "$CONF" "$ETC_CONF"
    else
        log "$ETC_CONF exists: export SLURM_CONF=$CONF"
    fi
}

start_munge() {
    if munge_ok; then return; fi   # a munged already answers (ours or the system's): use it
    [ -f /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge: /etc/munge/munge.key; }
    mkdir -p /run/munge "$DIR/munge" && chown munge: /run/munge "$DIR/munge"
    runuser -u munge -- munged --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed"
    for _ in $(seq 50); do munge_ok && return; sleep 0.1; done
    log "munged does not answer: see $DIR/munge/munged.log"; exit 1
}

start() {
    command -v slurmctld >/dev/null || { log "SLURM is not installed: bash $0 install"; exit 1; }
    [ "$(id -u)" = 0 ] || { log "start needs root (SlurmUser=root)"; exit 1; }
    write_conf
    start_munge
    alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF"   # daemonizes, writes its pid file
    alive "$DIR/slurmd.pid" || slurmd -f "$CONF"
    for _ in $(seq 60); do   # until the node registers idle (or mixed/allocated: jobs left from before)
        case $(sinfo -h -N -n "$NODE" -o %t 2>/dev/null) in
            idle | mix | alloc) log "cluster up: $(sinfo -h -o '%P %D %t %C')"; return ;;
        esac
        sleep 1
    done
    log "the node did not become idle: see $DIR/log/"; sinfo -N -l || true; exit 1
}

stop() {
    local name pidfile pid
    for name in slurmd slurmctld munge/munged; do
        pidfile=$DIR/$name.pid
        alive "$pidfile" || continue
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        log "stopped ${name#munge/}"
        rm -f "$pidfile"
    done
    if [ "$(readlink "$ETC_CONF" || true)" = "$CONF" ]; then rm -f "$ETC_CONF"; fi
}

status() {
    local name pidfile
    for name in munge/munged slurmctld slurmd; do
        pidfile=$DIR/$name.pid
        if alive "$pidfile"; then echo "${name#munge/}: running (pid $(cat "$pidfile"))"; else echo "${name#munge/}: not started here"; fi
    done
    sinfo 2>/dev/null || echo "sinfo: no answer"
}

case ${1:-} in
    install | start | stop | status) "$1" ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
