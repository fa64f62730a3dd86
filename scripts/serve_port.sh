#!/usr/bin/env bash
# The port a clip-serve started with --port 0 listens on, read from its log ("serving http://HOST:PORT/").
#   port=$(scripts/serve_port.sh SERVE_LOG PID [SECONDS])
# Polls the log every 0.1 s for up to SECONDS (default 30). Prints the port and exits 0; exits 1 when
# the process PID ended without reporting one, 2 when the time ran out.
log=$1 pid=$2 seconds=${3:-30}
port_of() { sed -n 's|.*serving http://[^:/]*:\([0-9]*\)/.*|\1|p' "$log" 2>/dev/null | head -1; }
for ((i = 0; i < seconds * 10; i++)); do
  port=$(port_of)
  if [[ -z $port ]] && ! kill -0 "$pid" 2>/dev/null; then
    port=$(port_of)  # it may have written the line just before it ended
    [[ -n $port ]] || exit 1
  fi
  [[ -n $port ]] && { echo "$port"; exit 0; }
  sleep 0.1
done
exit 2
