"""Ray for sweeps and RLlib training: a private local instance reachable from this machine only, or a cluster.

On Linux, Ray 2.58 gives a local node the machine's network address, and its servers (GCS,
raylet, object manager, every worker's gRPC server, the runtime-env agent) then listen on all
interfaces; anyone who reaches those ports can run code in the instance. A node whose address is
the loopback one listens on the loopback only. Ray picks the loopback for a local node when
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (`ray_constants.ENABLE_RAY_CLUSTER`, read once when ray is
imported), so `init_ray` sets both for the start of the instance. tests/test_bad_inputs_trust.py
reads the listening sockets from the OS.
"""

from __future__ import annotations

import os

from cavlab.errors import UserError

_LOCAL_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(address: str | None, num_cpus: int) -> None:
    """Start a private Ray instance of `num_cpus` CPUs that listens on the loopback only, dashboard off
    (address None); or connect to the running cluster at `address` (host:port, auto)."""
    import ray

    if address is not None:
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except ConnectionError as exc:
            raise UserError(f"--ray {address}: cannot connect to a Ray cluster there ({exc})") from None
        return
    from ray._private import ray_constants

    previous = os.environ.get(_LOCAL_NODE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOCAL_NODE_ENV] = "0"  # Ray's own processes, started now, inherit it
    ray_constants.ENABLE_RAY_CLUSTER = False  # what the variable sets when read at import
    try:
        # "local": a new instance, even if RAY_ADDRESS names another
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)  # fmt: skip
    finally:
        if previous[0] is None:
            os.environ.pop(_LOCAL_NODE_ENV, None)
        else:
            os.environ[_LOCAL_NODE_ENV] = previous[0]
        ray_constants.ENABLE_RAY_CLUSTER = previous[1]
