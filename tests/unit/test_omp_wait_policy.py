"""Importing lineguard makes OpenMP threads wait passively unless the user chose otherwise (see lineguard/__init__)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import lineguard, os; print(os.environ.get('OMP_WAIT_POLICY'))"


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_wait_policy_defaults_to_passive_and_a_users_value_wins(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected

