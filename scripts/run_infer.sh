#!/usr/bin/env bash
# The seed's name for run_eval.sh.
exec bash "$(dirname "$0")/run_eval.sh" "$@"
