# Shared by the seed-compatible launchers: where the repository and its Python are, and how to run.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

# launch LOG COMMAND...: like the seed, run in the background with output to LOG;
# MOBILENETV3_DRY_RUN=1 prints the command, MOBILENETV3_FOREGROUND=1 waits for it.
launch() {
  local log=$1; shift
  if [ -n "${MOBILENETV3_DRY_RUN:-}" ]; then echo "$*"; return 0; fi
  if [ -n "${MOBILENETV3_FOREGROUND:-}" ]; then "$@" > "$log" 2>&1; return $?; fi
  nohup "$@" > "$log" 2>&1 &
  echo "started (pid $!); log: $log"
}
