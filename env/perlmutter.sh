# NERSC Perlmutter. Source on a login node, from the project root:
#   source env/perlmutter.sh
# and from batch scripts: HPCPIPE_ENV=env/perlmutter.sh sbatch slurm/repro.sbatch
module load pytorch
export HPCPIPE_CLUSTER="${HPCPIPE_CLUSTER:-perlmutter}"
HPCPIPE_VENV="${HPCPIPE_VENV:-$SCRATCH/venvs/hpcpipe-perlmutter}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
