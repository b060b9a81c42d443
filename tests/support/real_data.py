"""Where the real data that no test builds can be found, when this machine has it (tests that need it skip
otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

#: LM-O (its meshes are the objects of the ``package:lmo`` weights): ``$MESHPOSE_LMO`` or ``../shared/data/lmo``
LMO = Path(os.environ.get("MESHPOSE_LMO", Path(__file__).resolve().parents[3] / "shared" / "data" / "lmo"))
