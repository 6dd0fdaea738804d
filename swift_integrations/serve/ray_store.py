"""A profile store that Ray Serve replicas share when they have no shared disk.

Every replica of a deployment learns skip profiles (and draft memories) for the pipeline steps it
serves; a step's profile converged on one replica should serve all of them. On one machine, or a
cluster with a shared filesystem, that is just one :class:`~swift_engine.store.profile_store.ProfileStore`
directory (the store is safe across processes). Where there is no shared disk, the records live
in one Ray actor instead:

* :class:`ProfileStoreActor` owns a real :class:`ProfileStore` on its node's disk, so the records
  survive the actor's restarts (it is detached and restarted by Ray) and keep all of the store's
  rules: validation, atomic writes, bounded size.
* :class:`RayProfileStore` is the replica's side: a :class:`ProfileStore` whose *records* are the
  actor's, while the machine's measurements (the kernel choice and pass costs, which describe this
  machine's CPU) stay in its own cache (``swift_engine.kernels.costs.measurement_dir``).

Read-modify-write (:meth:`ProfileStore.update`, how concurrent searches merge their counters and
observations) cannot send the caller's merge function to the actor, so it is optimistic: read
the record and its ``updated_at``, merge locally, then write only if nobody wrote in between
(compare-and-set on the actor, which runs one call at a time), else merge again. An unreachable
actor is a :class:`~swift_engine.store.profile_store.ProfileStoreUnavailable` (an ``OSError``), which
the engine already treats as "no profile": generation never fails because of the store.
"""

from __future__ import annotations

import builtins
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swift_engine.store.profile_store import (
    DEFAULT_MAX_RECORDS,
    ProfileStore,
    ProfileStoreUnavailable,
    check_update_result,
)
from swift_engine.store.records import ProfileRecord, default_profile_dir

__all__ = ["DEFAULT_ACTOR_NAME", "ProfileStoreActor", "RayProfileStore", "store_actor"]

log = logging.getLogger(__name__)

#: The named actor replicas look up (in :data:`ACTOR_NAMESPACE`).
DEFAULT_ACTOR_NAME = "swift-profile-store"
ACTOR_NAMESPACE = "swift"
#: Seconds a store call may wait for the actor before the store counts as unavailable.
DEFAULT_CALL_TIMEOUT = 30.0
#: Compare-and-set rounds before an update gives up (each lost round means another writer won).
_MAX_UPDATE_ROUNDS = 16


def _stamp(record: ProfileRecord | None) -> float | None:
    return None if record is None else record.updated_at


class ProfileStoreActor:
    """The records of every replica, in a :class:`ProfileStore` on this actor's node.

    Plain class: :func:`store_actor` turns it into a Ray actor. Ray runs one method at a time on it,
    and the store locks each record besides, so compare-and-set is atomic.
    """

    def __init__(self, directory: str | None = None, max_records: int | None = DEFAULT_MAX_RECORDS) -> None:
        self.store = ProfileStore(directory, max_records=max_records)
        log.info("profile store actor serving %s", self.store.directory)

    def directory(self) -> str:
        return str(self.store.directory)

    def get(self, fingerprint: str, step_key: str) -> ProfileRecord | None:
        return self.store.get(fingerprint, step_key)

    def list(self, fingerprint: str | None = None) -> builtins.list[ProfileRecord]:
        return self.store.list(fingerprint)

    def update_if(
        self, fingerprint: str, step_key: str, expected: float | None, record: ProfileRecord
    ) -> tuple[str, ProfileRecord | None]:
        """Store ``record`` if the stored one still has ``updated_at == expected`` (None: absent).

        Returns ``("ok", stored)``, ``("conflict", current)`` (someone wrote first: merge with
        ``current`` and try again), or ``("kept", None)``: a newer release's record is there and
        stays (as :meth:`ProfileStore.update` does).
        """
        outcome = {"status": "kept"}

        def swap(current: ProfileRecord | None) -> ProfileRecord | None:
            if _stamp(current) != expected:
                outcome["status"] = "conflict"
                return None
            outcome["status"] = "ok"
            return record

        stored = self.store.update(fingerprint, step_key, swap)
        return outcome["status"], stored

    def put(self, record: ProfileRecord) -> bool:
        return self.store._put(record)

    def delete(self, fingerprint: str, step_key: str) -> bool:
        return self.store.delete(fingerprint, step_key)

    def reset(self, fingerprint: str | None = None, step_key: str | None = None) -> int:
        return self.store.reset(fingerprint, step_key)

    def clean(self) -> dict[str, int]:
        return self.store.clean()


def store_actor(
    name: str = DEFAULT_ACTOR_NAME,
    directory: str | None = None,
    *,
    namespace: str = ACTOR_NAMESPACE,
    on_head_node: bool = True,
) -> Any:
    """The named profile-store actor, created (detached, restarted by Ray) if it does not exist yet.

    ``directory`` is on the actor's node (default: that node's default profile directory). It is
    pinned to the head node unless ``on_head_node=False``, so that a restarted actor finds its
    records again on the same disk; on a cluster whose head node should do no work, pin it
    elsewhere with Ray's own options (:func:`ray.remote` ``resources``) and pass that handle.
    Needs a connected Ray (``ray.init`` or inside a Ray Serve replica).
    """
    import ray

    options: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": 3,
        "num_cpus": 0,
    }
    if on_head_node:
        options["resources"] = {"node:__internal_head__": 0.001}
    return ray.remote(ProfileStoreActor).options(**options).remote(directory)


class RayProfileStore(ProfileStore):
    """A :class:`ProfileStore` whose records live in a :class:`ProfileStoreActor` (see the module docstring).

    ``actor``: the actor handle, or ``None`` to look up (or create) the one named ``name``.
    ``directory``: where this machine's own files go (kernel choice, costs); default: this
    machine's default profile directory. ``timeout``: seconds a call may wait for the actor.
    """

    def __init__(
        self,
        actor: Any = None,
        *,
        name: str = DEFAULT_ACTOR_NAME,
        namespace: str = ACTOR_NAMESPACE,
        directory: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        super().__init__(directory if directory is not None else default_profile_dir())
        self._actor = actor if actor is not None else store_actor(name, namespace=namespace)
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"RayProfileStore(actor={self._actor!r}, local={str(self.directory)!r})"

    def _call(self, method: str, *args: Any) -> Any:
        """One actor call; any failure to reach the actor is the store being unavailable."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            return ray.get(getattr(self._actor, method).remote(*args), timeout=self._timeout)
        except (GetTimeoutError, RayActorError) as exc:
            raise ProfileStoreUnavailable(errno.EHOSTUNREACH, f"the profile store actor is unavailable: {exc}") from exc

    # -- records: the actor's ------------------------------------------------------------------
    def get(self, fingerprint: str, step_key: str) -> ProfileRecord | None:
        return self._call("get", fingerprint, step_key)

    def list(self, fingerprint: str | None = None) -> builtins.list[ProfileRecord]:
        return self._call("list", fingerprint)

    def update(
        self,
        fingerprint: str,
        step_key: str,
        fn: Callable[[ProfileRecord | None], ProfileRecord | None],
    ) -> ProfileRecord | None:
        """:meth:`ProfileStore.update` by compare-and-set: ``fn`` runs here, once per round."""
        current = self.get(fingerprint, step_key)
        for _ in range(_MAX_UPDATE_ROUNDS):
            copy = current.model_copy(deep=True) if current is not None else None
            result = fn(copy)
            if result is None:
                return current
            check_update_result(result, fingerprint, step_key)
            status, stored = self._call("update_if", fingerprint, step_key, _stamp(current), result)
            if status != "conflict":
                return stored
            current = stored
        raise ProfileStoreUnavailable(
            errno.EBUSY, f"profile {step_key!r}: {_MAX_UPDATE_ROUNDS} concurrent writers won in a row; not written"
        )

    def _put(self, record: ProfileRecord) -> bool:
        record = ProfileRecord.model_validate(record.model_dump())
        return bool(self._call("put", record))

    def delete(self, fingerprint: str, step_key: str) -> bool:
        return bool(self._call("delete", fingerprint, step_key))

    def reset(self, fingerprint: str | None = None, step_key: str | None = None) -> int:
        return int(self._call("reset", fingerprint, step_key))

    def clean(self) -> dict[str, int]:
        return dict(self._call("clean"))

    @property
    def actor_directory(self) -> Path:
        """Where the actor keeps the records, on its own node."""
        return Path(self._call("directory"))
