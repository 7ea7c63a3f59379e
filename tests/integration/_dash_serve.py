"""``python -m tests.integration._dash_serve --bundle B --store S --token-file F [--monitor grey|cones] [--port 0]``.

Serves the dashboard test station (tests/unit/_dash_station.py) with the real
:func:`lineguard.edge.serve.run_api`: uvicorn on 127.0.0.1, the Host check, the page guard, the drain on
SIGTERM. Used by test_dashboard_browser.py while ``lineguard serve`` runs no drift monitor.
"""

from __future__ import annotations

import argparse

from lineguard.edge.hotswap import ModelSlot
from lineguard.edge.serve import resolve_token, run_api
from lineguard.edge.store import Store
from tests.unit._dash_station import DashStation, PushRuntime, cone_reference, grey_reference


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--station", default="line1")
    ap.add_argument("--monitor", choices=["grey", "cones"], default=None,
                    help="run a drift monitor whose reference is grey frames or the bundle recipes' synthetic cones")
    args = ap.parse_args()
    slot = ModelSlot.open(args.bundle)
    store = Store(args.store, min_free_bytes=0)
    monitor = None
    if args.monitor:
        from lineguard.monitor import Monitor

        bundle = slot.current().bundle
        ref = grey_reference() if args.monitor == "grey" else cone_reference(tuple(bundle.recipes))
        monitor = Monitor(ref, arl0=10_000.0, bundle_version=f"{bundle.name}:{bundle.version}")
    station = DashStation(args.station, store, PushRuntime(slot, store, args.station, monitor), slot, monitor)
    token, note = resolve_token(token_file=args.token_file)
    run_api(station, token=token, port=args.port, close=store.close, token_note=note)


if __name__ == "__main__":
    main()
