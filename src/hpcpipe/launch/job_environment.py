"""What of the login node's environment a job may inherit: no secrets.

sbatch exports the submitting shell's whole environment to the job (``--export=ALL``,
its default), submitit's local executor starts its subprocess with it, and the
inline executor runs the stage in this very process. So a ``WANDB_API_KEY``, a
``HF_TOKEN`` or a database password set on the login node would reach every
compute node, be stored by slurmctld with the job (its ``environment`` file, and
in the accounting database where ``AccountingStoreFlags=job_env`` is set), and be
seen by every command the job runs. Nothing a job does needs them: W&B runs
offline there, and ``hpcpipe sync`` uploads from the login node with the key.

So before every submission (``submission.prepared_executor``) the variables named
like secrets are removed from this process's environment, which is what every
executor passes on. sbatch's ``--export`` cannot do it: it can add variables to
ALL but not take any away, and ``--export=NONE`` would drop the environment that
``module load`` set up. A profile that needs one in its jobs (``wandb_online``
with the key in the environment rather than ~/.netrc) lists it by name under
``export_secrets:``.

Nothing else carries the environment: submitit pickles the function and its
arguments only, the sbatch script holds the profile's ``setup:`` lines (the site's
own configuration, not the user's shell), and those are kept out of the W&B config
(``tracking.run.run_config``).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Collection, MutableMapping

# Shell patterns, matched against the upper-cased name.
SECRET_PATTERNS = ("*_API_KEY", "*_TOKEN", "*PASSWORD*", "*PASSWD*", "*SECRET*")


def looks_secret(name: str) -> bool:
    """Whether ``name`` is named like a secret (``WANDB_API_KEY``, ``HF_TOKEN``, ``DB_PASSWORD``)."""
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern) for pattern in SECRET_PATTERNS)


def withheld(environ: MutableMapping[str, str], allowed: Collection[str] = ()) -> list[str]:
    """Remove from ``environ`` every variable named like a secret and not in ``allowed``;
    return their names (never their values), sorted."""
    names = sorted(name for name in environ if looks_secret(name) and name not in allowed)
    for name in names:
        del environ[name]
    return names


def withhold_secrets(allowed: Collection[str] = ()) -> list[str]:
    """``withheld`` on this process's environment: what every executor passes to its jobs."""
    return withheld(os.environ, allowed)
