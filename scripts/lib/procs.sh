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

# wait_port PORT PID NAME LOG: until PID listens on 127.0.0.1:PORT; fails with LOG if PID exits
# first, if another process holds the port (free_port's port can be taken before the daemon
# binds it), or if nothing listens within 20 s.
wait_port() {
  for _ in $(seq 200); do
    if ! kill -0 "$2" 2>/dev/null && ! $SUDO kill -0 "$2" 2>/dev/null; then
      echo "$3 exited before listening; log:" >&2; cat "$4" >&2; return 1
    fi
    case "$(listener_owned_by "$1" "$2")" in
      yes) return 0 ;;
      other) echo "another process listens on 127.0.0.1:$1, not $3" >&2; return 1 ;;
    esac
    sleep 0.1
  done
  echo "$3 does not listen on 127.0.0.1:$1; log:" >&2; cat "$4" >&2; return 1
}

# listener_owned_by PORT PID: "yes" if PID holds the socket listening on 127.0.0.1:PORT (or
# any address), "other" if another process does, "none" if nothing listens yet. Where PID's
# file descriptors cannot be read (a daemon started through sudo), a listener counts as its.
listener_owned_by() {
  local hex inode fd
  hex=$(printf '%04X' "$1")
  # /proc/net/tcp: local address (0100007F or 00000000):PORT, state 0A (LISTEN), inode field 10.
  inode=$(awk -v p=":$hex" '$4 == "0A" && ($2 == "0100007F" p || $2 == "00000000" p) { print $10; exit }' /proc/net/tcp)
  if [ -z "$inode" ]; then echo none; return; fi
  if ! [ -r "/proc/$2/fd" ]; then echo yes; return; fi
  for fd in /proc/"$2"/fd/*; do
    if [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$inode]" ]; then echo yes; return; fi
  done
  echo other
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
