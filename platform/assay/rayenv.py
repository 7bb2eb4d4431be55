"""How a process talks to Ray, set in its environment: no Ray import (~2 s) needed to say it.

`assay cluster` and `assay submit` only talk to a head's Jobs API; they set these and load
`ray.job_submission`, never the launcher's torch and Lightning.
"""

from __future__ import annotations

import os
from pathlib import Path

# What this process's Ray is told unless the user said otherwise: no usage stats, and Ray's
# Train V2 API (the default in 2.60, pinned so an older Ray behaves the same). Set when a Ray
# session opens, never at import: importing Assay changes nothing in the caller's process.
RAY_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_V2_ENABLED": "1"}


def ray_defaults() -> None:
    for var, value in RAY_DEFAULTS.items():
        os.environ.setdefault(var, value)


def auth_env() -> None:
    """Ray 2.60 clusters want a token by default (`ray start` writes ~/.ray/auth_token); a
    client that does not say so fails with "Missing authentication token"."""
    if (Path.home() / ".ray" / "auth_token").exists() or os.environ.get("RAY_AUTH_TOKEN"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
