"""Resource events from Event Grid: which vault, if any, an event asks kvfirewall to look at.

An event is only a hint that a vault changed. Its data is never used as the vault's state: the
vault is read fresh from Resource Manager. So all this module needs is the vault id, taken
from an event that is exactly a successful Key Vault write, and parsed as strictly as every
other id. Anything else is either *ignored* (a well-formed event of another kind: normal on a
subscription topic) or *malformed* (not what Event Grid sends: logged as a warning and
dropped, because redelivering a poison event helps no one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from azure.eventgrid import SystemEventNames

from kvfirewall.pools import PoolKind, PoolRef, parse_pool_id
from kvfirewall.rules import RuleError, VaultRef, parse_vault_id

# The event type as the Event Grid SDK names it; also the template's event filter.
WRITE_SUCCESS = SystemEventNames.ResourceWriteSuccessEventName.value
# The operation that creates or updates a vault; also the template's Event Grid filter value.
VAULT_WRITE_OPERATION = "Microsoft.KeyVault/vaults/write"
# The writes of the resources agents' networks come from (PoolKind), in the template's filter
# after the vault write: such a write may move a pool's subnet.
POOL_WRITE_OPERATIONS = tuple(f"{kind.value}/write" for kind in PoolKind)
MAX_FIELD_CHARS = 2048  # ARM ids are far shorter; anything longer is not an id


class MalformedEvent(ValueError):
    """An event that is not what Event Grid sends; the message is safe to log."""


@dataclass(frozen=True, kw_only=True)
class EventTarget:
    """What to do with one event: reconcile `vault`, look at `pool` (whose write may have
    moved its network), or ignore it for `reason`."""

    vault: VaultRef | None
    reason: str
    pool: PoolRef | None = None


def event_target(*, event_type: object, subject: object, data: object) -> EventTarget:
    """The vault a resource event names, or why the event is ignored.

    Raises `MalformedEvent` for events that claim to be a vault write but are not well formed.
    Event types and operation names are compared case-insensitively: the Activity Log
    upper-cases operation names, and nothing is lost by being lenient on case.
    """
    if not isinstance(event_type, str):
        raise MalformedEvent(f"event type is {_kind(event_type)}, not a string")
    if event_type.lower() != WRITE_SUCCESS.lower():
        return EventTarget(vault=None, reason=f"event type {_shown(event_type)} is not acted on")
    if not isinstance(data, Mapping):
        raise MalformedEvent(f"{WRITE_SUCCESS} event data is {_kind(data)}, not an object")
    operation = data.get("operationName")
    if not isinstance(operation, str):
        raise MalformedEvent(f"data.operationName is {_kind(operation)}, not a string")
    pool_write = operation.lower() in {o.lower() for o in POOL_WRITE_OPERATIONS}
    if operation.lower() != VAULT_WRITE_OPERATION.lower() and not pool_write:
        return EventTarget(vault=None, reason=f"operation {_shown(operation)} is not a vault write")
    if not isinstance(subject, str):
        raise MalformedEvent(f"subject is {_kind(subject)}, not a string")
    if len(subject) > MAX_FIELD_CHARS:
        raise MalformedEvent(f"subject is {len(subject)} characters long, not a vault id")
    try:
        target: VaultRef | PoolRef = (parse_pool_id if pool_write else parse_vault_id)(subject)
    except RuleError as exc:
        raise MalformedEvent(f"subject: {exc}") from None
    # Present in every real event; when present it must name the same resource.
    uri = data.get("resourceUri")
    if uri is not None and (not isinstance(uri, str) or uri.lower() != subject.lower()):
        raise MalformedEvent(f"data.resourceUri {_shown(uri)} does not match the subject")
    subscription = data.get("subscriptionId")
    if subscription is not None and (
        not isinstance(subscription, str) or subscription.lower() != target.subscription
    ):
        raise MalformedEvent(
            f"data.subscriptionId {_shown(subscription)} does not match the subject"
        )
    if isinstance(target, PoolRef):
        if f"{target.kind.value}/write".lower() != operation.lower():
            raise MalformedEvent(f"subject is not a resource of operation {_shown(operation)}")
        return EventTarget(vault=None, pool=target, reason="agent pool write")
    return EventTarget(vault=target, reason="vault write")


def _kind(value: object) -> str:
    return "missing" if value is None else type(value).__name__


def _shown(value: object) -> str:
    """A value fit for a log line: repr (so control and look-alike characters show), bounded."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"
