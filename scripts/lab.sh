#!/usr/bin/env bash
# README command 1: install Tandem into .venv and run the lab (arguments go to `run.py lab`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh requirements.txt
exec .venv/bin/python run.py lab "$@"
