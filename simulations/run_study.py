"""Run a named study from configs/: ``python simulations/run_study.py compare [key=value ...]``.

A thin wrapper over ``fedmia run`` so that studies are named, not retyped; no logic lives here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedmia.experiment.cli import app

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def main(argv: list[str]) -> None:
    studies = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    if not argv or argv[0] not in studies:
        print(f"usage: run_study.py STUDY [key=value ...]; studies: {', '.join(studies)}", file=sys.stderr)
        raise SystemExit(2)
    app(["run", str(CONFIGS / f"{argv[0]}.yaml"), *argv[1:]], prog_name="fedmia")


if __name__ == "__main__":
    main(sys.argv[1:])
