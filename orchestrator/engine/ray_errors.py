"""Telling Ray's failures apart: an error our code raised in an actor, or an actor that is gone."""

from __future__ import annotations

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from actors.backends.collective import PeerLost
from orchestrator.core.errors import UserError


def remote_cause(err: Exception) -> Exception:
    """The exception a stage raised, unwrapped from Ray's envelope."""
    return err.cause if isinstance(err, RayTaskError) and err.cause is not None else err


def unwrap_get(ref):
    """ray.get that re-raises a task's UserError as itself."""
    try:
        return ray.get(ref)
    except RayTaskError as err:
        if isinstance(remote_cause(err), UserError):
            raise remote_cause(err) from None
        raise


def stage_died(err: BaseException) -> bool:
    """A stage or the sink process is gone (killed, node lost), as opposed to an error in our code; a stage whose
    collective with the others failed (a peer gone, or not there within pipeline.collective_timeout) counts too."""
    return isinstance(err, RayActorError | ObjectLostError) or (
        isinstance(err, RayTaskError) and isinstance(err.cause, RayActorError | ObjectLostError | PeerLost)
    )
