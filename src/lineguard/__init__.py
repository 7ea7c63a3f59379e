"""LineGuard: the ML workflow for AI visual inspection on production lines.

Reading ``src/lineguard/`` top to bottom is reading the lifecycle: config, data
(synth, ingest, manifest, storage, labelstudio), model development (preprocess,
augment, models, train, tune, baseline), evaluation (evaluate, gate, tracking),
deployment (export, compress, pipeline), the edge runtime (edge/) and monitoring.
"""

import os

__version__ = "0.1.0"

# OpenMP threads (PyTorch's CPU kernels) spin on a core while they wait for work by default. On a small shared
# machine -- an edge box also running the camera, a 2-core build server -- every other process then competes with
# spinning threads: a training step of the default model with 2 threads took 2.6 s instead of 0.3 s while another
# job ran (docs/benchmarks.md, "OpenMP wait policy"). Passive waiting costs nothing measurable on an idle machine.
# Set before torch is first imported anywhere in the process; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class LineguardError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero.

    Raise it (or a subclass) for anything the user can fix: a bad file, a bad config
    key, a missing dataset. The message names what was wrong and what is expected.
    Bugs stay ordinary exceptions so they keep their traceback.
    """


__all__ = ["LineguardError", "__version__"]
