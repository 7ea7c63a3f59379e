"""One forkserver for the fault-injection tests' child processes, with the slow imports done once.

The children of R1 (store writes) and R7 (sync uploads) are SIGKILLed and restarted many
times; forking them from a server that already imported the store, s3fs and botocore
makes a restart take milliseconds instead of seconds. The preload only applies when the
forkserver starts, so every test that uses it asks for the same list (a module that is
not installed is skipped by the forkserver).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import ForkServerContext

PRELOAD = [
    "lineguard.edge.store",
    "lineguard.edge.outbox",
    "lineguard.edge.sync",
    "tests.unit._records",
    "tests.integration.test_store_faults",
    "tests.integration.test_sync_s3",
    "s3fs",
    "aiobotocore.session",
]


def forkserver() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx
