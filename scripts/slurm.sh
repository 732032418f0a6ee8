#!/usr/bin/env bash
# A single-node SLURM on localhost for hardmask's `slurm` tests, without systemd.
#
#   scripts/slurm.sh install   apt-get the Debian packages (idempotent)
#   scripts/slurm.sh start     munged, mariadb, slurmdbd, slurmctld, slurmd; returns once the node is idle
#   scripts/slurm.sh stop      stops the daemons this script started (pid files under $RUN_DIR)
#   scripts/slurm.sh status    daemons, sinfo and squeue
#
# Runs as root (SlurmUser=root). Accounting goes through slurmdbd into mariadb so that `sacct` answers: submitit
# asks it about jobs that ended without writing a result. Configuration templates live in scripts/slurm/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATES="$HERE/slurm"
CLUSTER="${SLURM_CLUSTER_NAME:-hardmask}"
CONF_DIR=/etc/slurm                # where the Debian clients (sinfo, sbatch, ...) look without SLURM_CONF
STATE_DIR=/var/lib/hardmask-slurm  # slurmctld state and slurmd spool
RUN_DIR=/run/hardmask-slurm        # pid files: `stop` only touches what they name
LOG_DIR=/var/log/hardmask-slurm
DB_PASSWORD_FILE="$CONF_DIR/.hardmask-db-password"
MYSQL_SOCKET=/run/mysqld/mysqld.sock
PACKAGES=(munge slurmd slurmctld slurm-client slurmdbd mariadb-server)
CONFIG_CHANGED=0

log() { printf '[slurm.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "run as root (installs packages and starts system daemons)"; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up within ${seconds}s (logs: $LOG_DIR)"
        sleep 0.5
    done
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ------------------------------------------------------------------------------------------------ install
cmd_install() {
    need_root
    local missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "packages already installed: ${PACKAGES[*]}"
        return
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ------------------------------------------------------------------------------------------------ config
# render TEMPLATE DEST: replace @NAME@ by the value of the shell variable NAME.
render() {
    local text
    text="$(<"$1")"
    for name in CLUSTER STATE_DIR RUN_DIR LOG_DIR DEF_MEM_PER_CPU REAL_MEMORY NODE_HARDWARE DB_PASSWORD; do
        text="${text//@$name@/${!name-}}"
    done
    printf '%s\n' "$text" >"$2"
}

write_config() {
    mkdir -p "$CONF_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$RUN_DIR" "$LOG_DIR"
    # `slurmd -C` prints what slurmd itself detects, so the node never registers with fewer CPUs than configured.
    local detected
    detected="$(slurmd -C | head -n1)"
    NODE_HARDWARE="$(grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' <<<"$detected" | xargs)"
    local detected_mb cpus
    detected_mb="$(grep -oE 'RealMemory=[0-9]+' <<<"$detected" | cut -d= -f2)"
    cpus="$(grep -oE 'CPUs=[0-9]+' <<<"$detected" | cut -d= -f2)"
    # A bit below the detected memory: slurmd drains a node whose configured memory exceeds what it finds.
    REAL_MEMORY=$((detected_mb * 95 / 100))
    # Memory is consumable: a job that asks none gets this per CPU, not the whole node (which would serialise jobs).
    DEF_MEM_PER_CPU=$((REAL_MEMORY / cpus / 2))
    [[ -s $DB_PASSWORD_FILE ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_PASSWORD_FILE")
    DB_PASSWORD="$(<"$DB_PASSWORD_FILE")"
    local before
    before="$(cat "$CONF_DIR/slurm.conf" 2>/dev/null || true)"
    render "$TEMPLATES/slurm.conf.in" "$CONF_DIR/slurm.conf"
    [[ $before == "$(<"$CONF_DIR/slurm.conf")" ]] || CONFIG_CHANGED=1
    (umask 077 && render "$TEMPLATES/slurmdbd.conf.in" "$CONF_DIR/slurmdbd.conf")
    log "node: $NODE_HARDWARE RealMemory=$REAL_MEMORY (detected $detected_mb MB)"
}

# ------------------------------------------------------------------------------------------------ daemons
start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    wait_for 10 munged bash -c 'munge -n </dev/null | unmunge'
    cp /run/munge/munged.pid "$RUN_DIR/munged.pid"
    log "munged started"
}

start_mariadb() {
    if mariadb-admin --socket="$MYSQL_SOCKET" ping >/dev/null 2>&1; then
        log "mariadb already running"
    else
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG_DIR/mariadb-install.log" 2>&1
        install -d -o mysql -g mysql /run/mysqld
        setsid /usr/sbin/mariadbd --user=mysql --socket="$MYSQL_SOCKET" --bind-address=127.0.0.1 \
            --skip-name-resolve >>"$LOG_DIR/mariadb.log" 2>&1 </dev/null &
        echo $! >"$RUN_DIR/mariadbd.pid"
        wait_for 30 mariadb mariadb-admin --socket="$MYSQL_SOCKET" ping
        log "mariadb started"
    fi
    # Root connects through the unix socket; the slurm user gets the password slurmdbd.conf holds.
    mariadb --socket="$MYSQL_SOCKET" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

start_slurmdbd() {
    if pid_alive "$RUN_DIR/slurmdbd.pid"; then
        log "slurmdbd already running"
    else
        slurmdbd
        wait_for 30 slurmdbd sacctmgr -n list cluster
        log "slurmdbd started"
    fi
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

start_slurmctld() {
    if pid_alive "$RUN_DIR/slurmctld.pid"; then
        if ((CONFIG_CHANGED)); then
            scontrol reconfigure
            log "slurmctld already running; re-read the changed slurm.conf"
        else
            log "slurmctld already running"
        fi
        return
    fi
    slurmctld
    wait_for 30 slurmctld scontrol ping
    log "slurmctld started"
}

start_slurmd() {
    if pid_alive "$RUN_DIR/slurmd.pid"; then
        log "slurmd already running"
    else
        slurmd -N localhost
        log "slurmd started"
    fi
    # A node left DOWN/DRAIN by an earlier run is put back into service.
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    wait_for 60 "node localhost (idle in sinfo)" bash -c '[[ $(sinfo -h -n localhost -o %T) == idle* ]]'
}

cmd_start() {
    need_root
    command -v slurmctld >/dev/null || die "SLURM is not installed: run '$0 install' first"
    local t0=$SECONDS
    write_config
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    log "SLURM up in $((SECONDS - t0)) s: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
}

# stop_daemon NAME: TERM the pid its pid file names, wait for it to go.
stop_daemon() {
    local pidfile="$RUN_DIR/$1.pid"
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"
        return
    fi
    local pid
    pid="$(cat "$pidfile")"
    kill -TERM "$pid"
    for _ in $(seq 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$pidfile"
    log "stopped $1 (pid $pid)"
}

cmd_stop() {
    need_root
    for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
        stop_daemon "$daemon"
    done
}

cmd_status() {
    for daemon in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid_alive "$RUN_DIR/$daemon.pid"; then
            printf '%-10s running (pid %s)\n' "$daemon" "$(cat "$RUN_DIR/$daemon.pid")"
        else
            printf '%-10s not started by slurm.sh\n' "$daemon"
        fi
    done
    sinfo 2>&1 || true
    squeue 2>&1 || true
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 {install|start|stop|status}" >&2
    exit 2
    ;;
esac
