"""Training-step time of the default model under an OpenMP wait policy (docs/benchmarks.md, "OpenMP wait policy").

    OMP_WAIT_POLICY=ACTIVE  python benchmarks/omp_wait_policy.py 2
    OMP_WAIT_POLICY=PASSIVE python benchmarks/omp_wait_policy.py 2

Twelve SGD steps of ``tinycnn`` (2 classes) on a random batch of 64 x 3 x 128 x 128 with the given number of
torch threads; prints the median of the last ten. Run the policies in turn, several times, on the machine as
it is (idle, or beside the work it shares the cores with): the point is the ratio under the same load.
The policy must be in the environment before torch starts, so this script sets nothing itself -- but
importing lineguard would set PASSIVE when unset, which is why the model is imported after torch here.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    policy = os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp's default spin)")
    import torch

    torch.set_num_threads(threads)
    from lineguard.models import create_model

    model = create_model("tinycnn", 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 3, 128, 128), torch.randint(0, 2, (64,))
    times = []
    for _ in range(12):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    last = sorted(times[2:])
    print(f"threads {threads}, OMP_WAIT_POLICY {policy}: median step {last[len(last) // 2]:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
