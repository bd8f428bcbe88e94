# Sourced by lab.sh and test.sh: make (or reuse) the project's virtual environment in .venv
# with Debian's own python3 (Python 3.11 or newer), and install requirements file $1 into it.
# pip refuses system installs on Debian 12 (PEP 668), hence the venv.
set -euo pipefail
PY=${TANDEM_PYTHON:-python3}
if ! command -v "$PY" >/dev/null; then
  echo "Tandem needs Python 3.11 or newer as '$PY' (on Debian: apt install python3)" >&2
  exit 2
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Tandem needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing python3-venv (Debian keeps venv apart from python3)..." >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else
      echo "Python's venv module is missing; as root run: apt install python3-venv" >&2
      exit 2
    fi
  fi
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$1")"
if [ ! -f "$stamp" ] || ! cmp -s "$stamp" <(cat requirements*.txt); then
  echo "installing Python packages from $1 into .venv..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$1"
  cat requirements*.txt > "$stamp"
fi
