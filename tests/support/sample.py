"""The committed CIFAR-10 sample (tests/data/cifar10-sample.tar.xz), unpacked in part.

Most tests need a few hundred of its 12,000 images: writing them all costs ~10 s of
filesystem time, and every ``dvc add`` of the raw folder and every ``prepare`` then
hashes and decodes all of them. ``extract`` writes only the first N images of each
class of each split (the archive is itself a seeded random sample, sorted by name, so
these are a random pick too), in the layout ``data.source: imagefolder`` reads.
``dvc_file`` gives the ``.dvc`` file DVC writes for such a folder, so a copy of the
example project can carry its ``data/raw.dvc`` for the folder it really has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

ARCHIVE = Path(__file__).resolve().parents[1] / "data" / "cifar10-sample.tar.xz"


def extract(dest: Path, per_class: Mapping[str, int] | None = None) -> Path:
    """Unpack the first ``per_class[split]`` images of each class (all with None); returns raw/."""
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(ARCHIVE) as archive:
        if per_class is None:
            archive.extractall(dest, filter="data")
            return dest / "raw"
        for member in archive:
            parts = Path(member.name).parts  # raw/<split>/<class>/<file>
            if not member.isfile() or len(parts) != 4:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) < per_class[parts[1]]:
                taken[key] = taken.get(key, 0) + 1
                archive.extract(member, dest, filter="data")
    return dest / "raw"


def dvc_file(raw: Path, scratch: Path) -> str:
    """The ``raw.dvc`` that ``dvc add`` writes for the folder ``raw`` (computed by the real dvc
    CLI in ``scratch``, a DVC project of its own, with ``raw`` hard-linked into it)."""
    data = scratch / "data"
    shutil.copytree(raw, data / "raw", copy_function=os.link)
    subprocess.run(["dvc", "init", "-q", "--no-scm"], cwd=scratch, check=True)
    subprocess.run(["dvc", "add", "-q", "data/raw"], cwd=scratch, check=True, capture_output=True)
    return (data / "raw.dvc").read_text()
