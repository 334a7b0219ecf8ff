"""Fault injection for tests, kept out of the product: Ray worker setup hooks.

Each factory returns a closure (pickled by value, so workers need not import this module) to pass as
``runtime_env={"worker_process_setup_hook": ...}``; it patches ned-ray inside every worker process.
"""

from __future__ import annotations


def kill_an_actor_once(marker: str):
    """The first model actor to get a batch dies mid-batch (as on a lost node or an OOM kill); the
    marker file (created exclusively) says it happened and makes every later call normal."""

    def hook() -> None:
        import os

        from ned_ray.job import stages

        original = stages.GroupEncoder.__call__

        def call(self, batch):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return original(self, batch)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)

        stages.GroupEncoder.__call__ = call

    return hook


def hide_paths_on_marked_nodes(variable: str = "NED_RAY_TEST_HIDE"):
    """On nodes started with ``env_vars={variable: PREFIX}``, paths under PREFIX look missing (a node
    that does not mount a shared folder)."""

    def hook() -> None:
        import os

        prefix = os.environ.get(variable)
        if not prefix:
            return
        from ned_ray.job.executors import ray as ray_executor

        visible = ray_executor._visible
        ray_executor._visible = lambda path: not path.startswith(prefix) and visible(path)

    return hook
