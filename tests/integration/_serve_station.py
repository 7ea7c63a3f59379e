"""``python -m tests.integration._serve_station --bundle B --token-file F --dump D [--allow-hot-swap]``.

Serves the in-test station (tests/unit/_api_station.py) with the real :func:`lineguard.edge.serve.run_api`
(uvicorn, the drain on SIGTERM) on 127.0.0.1 and a free port; on close, the store's rows are
written to ``--dump`` as JSON -- the flush the SIGTERM test checks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lineguard.edge.serve import resolve_token, run_api
from tests.unit._api_station import make_station


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--allow-hot-swap", action="store_true")
    args = ap.parse_args()
    station = make_station(args.bundle)
    token, note = resolve_token(token_file=args.token_file)

    def close() -> None:
        station.close()
        Path(args.dump).write_text(json.dumps(station.store.rows))

    run_api(station, token=token, port=args.port, allow_hot_swap=args.allow_hot_swap, close=close, token_note=note)


if __name__ == "__main__":
    main()
