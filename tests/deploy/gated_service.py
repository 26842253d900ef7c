"""Run the service with model loading held back until a file exists: a replica that stays not ready.

A real slow load (a big model, a slow disk) looks the same from outside: the process listens, live
is 200, ready and every inference route are 503. test_nginx.py puts such a replica behind the load
balancer, then creates the file and watches it join.

    python -m tests.deploy.gated_service GATE_FILE [seq2seq-serve flags...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from service.__main__ import main
from service.registry import EngineFactory, Registry


def hold_loading(gate: Path) -> None:
    load_all = Registry.load_all

    def gated_load_all(self: Registry, factory: EngineFactory) -> None:
        while not gate.exists():
            time.sleep(0.1)
        load_all(self, factory)

    Registry.load_all = gated_load_all  # type: ignore[method-assign]


if __name__ == "__main__":
    hold_loading(Path(sys.argv[1]))
    main(sys.argv[2:])
