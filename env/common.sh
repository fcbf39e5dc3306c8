# Shared by the site files (env/perlmutter.sh, env/cori.sh): not sourced on its own.
# Expects the site file to have loaded its PyTorch module and set HPCPIPE_VENV.
#
# A venv on top of the module's PyTorch (system site packages), so pip sees the
# module's torch as installed and never pulls a second one. The toolkit itself needs
# no torch; the `cifar10` extra is the example's (torch, torchvision), met by the
# module's builds (tests/integration/test_install_variants.py checks that with pip's
# own resolver). A project of your own without torch can drop the [cifar10].
if [ ! -x "$HPCPIPE_VENV/bin/python" ]; then
    python -m venv --system-site-packages "$HPCPIPE_VENV"
    "$HPCPIPE_VENV/bin/python" -m pip install --upgrade pip
    "$HPCPIPE_VENV/bin/python" -m pip install -e "$(git rev-parse --show-toplevel)[cifar10]"
fi
# shellcheck disable=SC1091
source "$HPCPIPE_VENV/bin/activate"
# DVC on Lustre/NFS: hardlink locks (flock is unreliable there), the cache on
# scratch, links instead of copies, group-shared cache files.
if [ -z "$(dvc config core.hardlink_lock 2>/dev/null)" ]; then
    dvc config --local core.hardlink_lock true
    dvc cache dir --local "$SCRATCH/dvc-cache"
    dvc config --local cache.type "hardlink,symlink,copy"
    dvc config --local cache.shared group
fi
