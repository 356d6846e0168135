# shellcheck shell=bash
# For the scripts that install what they need and start daemons on loopback, stopping each by
# its PID: SUDO, apt_install, free_port, wait_port and stop_pid. Sourced, not run.

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

# apt_install PACKAGE...: installs them, refreshing the package lists only when that fails
# (a fresh container's lists may be missing or stale).
apt_install() {
  [ $# -gt 0 ] || return 0
  echo "installing: $*"
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT PID NAME LOG: until 127.0.0.1:PORT accepts; fails with LOG if PID exits first
# or nothing listens within 20 s.
wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null && ! $SUDO kill -0 "$2" 2>/dev/null; then
      echo "$3 exited before listening; log:" >&2; cat "$4" >&2; return 1
    fi
    sleep 0.1
  done
  echo "$3 does not listen on 127.0.0.1:$1; log:" >&2; cat "$4" >&2; return 1
}

# stop_pid PID [sudo]: SIGTERM, then SIGKILL after 5 s.
stop_pid() {
  local pid=$1 k=(kill)
  # shellcheck disable=SC2206 # SUDO is empty or one word
  [ -n "${2:-}" ] && k=($SUDO kill)
  [ -n "$pid" ] || return 0
  "${k[@]}" -0 "$pid" 2>/dev/null || return 0
  "${k[@]}" -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    "${k[@]}" -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  "${k[@]}" -KILL "$pid" 2>/dev/null || true
}
