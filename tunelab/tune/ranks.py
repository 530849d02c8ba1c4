"""`tunelab tune` under torchrun: the processes of one launch train each trial together, and only rank 0 talks to
the study.

Rank 0 asks the study for a trial and sends its number and values to the other ranks; every rank builds the
same config from them and joins the trial's run. At each evaluation rank 0 reports the metric and asks the
pruner, and sets its verdict in the trial's store, where the other ranks wait for it (`Verdicts`): they stop
together. A store, not a collective: gloo frees an exchange's tensors on its own thread, which needs the GIL,
and a run stopped right after one closes its process group while that thread waits (a deadlock).

Each trial is an ordinary distributed run: tunelab.run.train sets up its process group from the environment
(env://) and closes it at the end. A second group set up that way would find the first one's addresses under the
same keys of torchrun's store (c10d names every default group alike) and could connect to a closed socket, so
every trial gets a store of its own: rank 0 picks a free port and hosts the trial's store there
(MASTER_PORT and TORCHELASTIC_USE_AGENT_STORE are set for the trial only). Assignments travel between trials in
a short gloo group over torchrun's own store, under a prefix of their own for each round.
"""
from __future__ import annotations

import contextlib
import os
import socket
from datetime import timedelta
from typing import Iterator


class Ranks:
    """This process's place in the launch, and the exchange of trial assignments."""

    def __init__(self, timeout_s: float):
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.timeout = timedelta(seconds=timeout_s)
        self._round = 0
        self._store = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, assignment: dict | None) -> dict | None:
        """Rank 0's `assignment` ({"number", "values"}, or None: no more trials) on every rank, with the port of
        the trial's store added."""
        if self.world == 1:
            return assignment
        import torch.distributed as dist

        self._round += 1  # every rank counts the same rounds: a prefix no earlier round wrote under
        store = dist.PrefixStore(f"tunelab-tune/{self._round}", self._control_store())
        dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.world, timeout=self.timeout)
        try:
            box = [dict(assignment, port=_free_port()) if self.is_main and assignment is not None else assignment]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        finally:
            dist.destroy_process_group()

    def _control_store(self):
        """torchrun's store (its agent hosts it); without an agent (a launcher that only sets the environment),
        one that rank 0 hosts at MASTER_PORT for the whole search."""
        import torch.distributed as dist

        if self._store is None:
            addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
            agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            self._store = dist.TCPStore(addr, port, world_size=self.world, is_master=self.is_main and not agent,
                                        timeout=self.timeout, multi_tenant=True)
        return self._store

    @contextlib.contextmanager
    def trial_store(self, assignment: dict) -> Iterator[None]:
        """The environment a trial's run sets up its process group from: a store rank 0 hosts on the trial's
        own port."""
        if self.world == 1:
            yield
            return
        saved = {k: os.environ.get(k) for k in ("MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE")}
        os.environ.update(MASTER_PORT=str(assignment["port"]), TORCHELASTIC_USE_AGENT_STORE="False")
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _free_port() -> int:
    """A TCP port nobody listens on now (the trial's store takes it a moment later)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Verdicts:
    """The pruner's verdict at each evaluation of one trial, from rank 0 to every rank: `share(k, verdict)` sets
    rank 0's under key k of the trial's store (hosted by rank 0 for the run's process group) and returns it; on
    the other ranks it waits for that key. Rank 0 goes on once every rank has read it, so a pruned run cannot
    close the store under a rank still on its way to it."""

    def __init__(self, ranks: Ranks, assignment: dict | None):
        self.ranks, self.port = ranks, (assignment or {}).get("port")
        self._store = None

    def __call__(self, evaluation: int, verdict: str | None) -> str | None:
        if self.ranks.world == 1:
            return verdict
        import torch.distributed as dist

        if self._store is None:  # the run's process group is up by its first evaluation, and the store with it
            self._store = dist.TCPStore(os.environ["MASTER_ADDR"], self.port, is_master=False,
                                        timeout=self.ranks.timeout)
        key = f"tunelab-tune/verdict/{evaluation}"
        if self.ranks.is_main:
            self._store.set(key, verdict or "")
            self._store.wait([f"{key}/read/{r}" for r in range(1, self.ranks.world)])
            return verdict
        shared = self._store.get(key).decode() or None
        self._store.set(f"{key}/read/{self.ranks.rank}", "1")
        return shared
