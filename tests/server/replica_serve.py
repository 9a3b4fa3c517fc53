"""``mlfs serve`` with every artifact build held back ``TEST_BUILD_DELAY_S`` seconds before it starts and
``TEST_BUILD_HOLD_S`` seconds after its files are written (before they are published), so tests can kill a
server in the middle of a build and watch concurrent requests overlap one, however fast the build is.

Run as ``python tests/server/replica_serve.py serve --store ...`` (the arguments of ``mlfs``)."""

from __future__ import annotations

import os
import sys
import time

from server.cache import ArtifactCache

DELAY_S = float(os.environ.get("TEST_BUILD_DELAY_S", "0"))
HOLD_S = float(os.environ.get("TEST_BUILD_HOLD_S", "0"))
_build = ArtifactCache._build


def _delayed_build(self, key, build, lease):
    def delayed(folder):
        time.sleep(DELAY_S)
        info = build(folder)
        time.sleep(HOLD_S)
        return info

    return _build(self, key, delayed, lease)


if __name__ == "__main__":
    ArtifactCache._build = _delayed_build
    from server.cli import main

    sys.argv = ["mlfs", *sys.argv[1:]]
    main()
