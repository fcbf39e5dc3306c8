"""hpcpipe: run DVC pipeline stages as Slurm jobs (or local subprocesses), with W&B tracking.

Importing the package imports nothing heavy: the launcher runs on login nodes.
"""

__version__ = "0.1.0"
