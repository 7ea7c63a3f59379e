"""LineGuard: the ML workflow for AI visual inspection on production lines.

Reading ``src/lineguard/`` top to bottom is reading the lifecycle: config, data
(synth, ingest, manifest, storage, labelstudio), model development (preprocess,
augment, models, train, tune, baseline), evaluation (evaluate, gate, tracking),
deployment (export, compress, pipeline), the edge runtime (edge/) and monitoring.
"""

__version__ = "0.1.0"


class LineguardError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero.

    Raise it (or a subclass) for anything the user can fix: a bad file, a bad config
    key, a missing dataset. The message names what was wrong and what is expected.
    Bugs stay ordinary exceptions so they keep their traceback.
    """


__all__ = ["LineguardError", "__version__"]
