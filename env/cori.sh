# NERSC Cori (retired in 2023; kept for Cray sites of the same shape). Source on a
# login node, from the project root:  source env/cori.sh
module load pytorch
export HPCPIPE_CLUSTER="${HPCPIPE_CLUSTER:-cori}"
HPCPIPE_VENV="${HPCPIPE_VENV:-$SCRATCH/venvs/hpcpipe-cori}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
