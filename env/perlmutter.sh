# NERSC Perlmutter. Source on a login node, from the project root:
#   source env/perlmutter.sh
# and from batch scripts: HPCPIPE_ENV=env/perlmutter.sh sbatch slurm/repro.sbatch
# Jobs inherit this environment (sbatch's default --export=ALL), the NCCL lines below too.
module load pytorch
export HPCPIPE_CLUSTER="${HPCPIPE_CLUSTER:-perlmutter}"
HPCPIPE_VENV="${HPCPIPE_VENV:-$SCRATCH/venvs/hpcpipe-perlmutter}"

# Stages on several GPUs or nodes (nodes:, gpus: > 1 in the profile): NCCL between nodes
# goes over Slingshot only through the libfabric network plugin (aws-ofi-nccl); without it
# NCCL falls back to TCP sockets at a fraction of the bandwidth. NERSC's pytorch modules
# come with the plugin; in a Shifter container NERSC's own job scripts load it with
# #SBATCH --module=gpu,nccl-plugin. Sources of the lines below:
# - NERSC's published Perlmutter job scripts (github.com/NERSC: sc23-dl-tutorial and
#   sc25-dl-tutorial submit_pm.sh; ml-pm-training-2022 submit_pm.sh) set
#   FI_MR_CACHE_MONITOR=userfaultfd and NCCL_NET_GDR_LEVEL=PHB;
# - the others are what HPE and the other Slingshot sites (CSCS Alps, Isambard) document
#   for NCCL over the CXI provider.
# None changes anything for one-GPU or CPU jobs.
# To see which transport NCCL chose: NCCL_DEBUG=INFO, then look for "NET/OFI" (the plugin)
# or "NET/Socket" (the slow fallback) in the job's stderr.
export FI_MR_CACHE_MONITOR=userfaultfd  # NERSC: libfabric's memory cache with CUDA buffers
export NCCL_NET_GDR_LEVEL=PHB           # NERSC: GPUDirect RDMA between a GPU and its NIC
export FI_CXI_DISABLE_HOST_REGISTER=1   # HPE/CSCS: CUDA allocations can deadlock with host registration
export FI_CXI_DEFAULT_CQ_SIZE=131072    # HPE/CSCS: completion queue for many peers
export NCCL_CROSS_NIC=1                 # HPE/CSCS: rings may span the node's four NICs
# Uncomment to make a missing plugin an error at start rather than a slow run (CSCS):
# export NCCL_NET="AWS Libfabric"

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
