"""Files the package ships (config/, launch/, models/): the installed share directory, else the source tree."""

import pathlib
import sys
from typing import List

from .names import PACKAGE

SOURCE_TREE = pathlib.Path(__file__).resolve().parent.parent
# The trained scene LLaVA-3D (adatoken3d-train-tiny) that the node loads when model_path is empty.
SHIPPED_MODEL = pathlib.Path('models') / 'scene-llava3d-tiny'


def share_candidates(relative) -> List[pathlib.Path]:
    """Where a shipped file may be, in order: the ament index's share/adatoken3d, the environment's
    share/adatoken3d (where pip puts setup.py's data_files, also without ament_index_python), the
    source tree."""
    places = []
    try:
        from ament_index_python.packages import get_package_share_directory

        places.append(pathlib.Path(get_package_share_directory(PACKAGE)) / relative)
    except Exception:  # not installed in an ament index
        pass
    places += [pathlib.Path(sys.prefix) / 'share' / PACKAGE / relative, SOURCE_TREE / relative]
    return places


def shipped(relative) -> pathlib.Path:
    """The first existing candidate (the source tree's path when none exists, for error messages)."""
    places = share_candidates(relative)
    return next((p for p in places if p.exists()), places[-1])


def default_model_dir() -> pathlib.Path:
    return shipped(SHIPPED_MODEL)
