"""The work queue of a fanned-out run: its messages, and the Storage queue they go on.

A run over every vault lists the estate once and settles the vaults that need no write; the
drifted ones go on `kvfirewall-work` in messages of one subscription each, so that the
Functions host hands them to `reconcile_queue` on as many instances as the backlog asks for.
A message names what to reconcile, never how: the consumer plans again on a fresh read under
the vault's lease, so a message delivered twice, or late, does no harm.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from kvfirewall.report import parse_report_name
from kvfirewall.rules import SUBSCRIPTION_RE, RuleError, parse_vault_id
from kvfirewall.settings import StateLocation, _connection_fields
from kvfirewall.transport import RequestTimeouts, shared_transport

QUEUE_NAME = "kvfirewall-work"
POISON_QUEUE_NAME = f"{QUEUE_NAME}-poison"  # where the host moves a message it gave up on
MESSAGE_VERSION = 1
# A message is at most 64 KiB once base64-encoded (the host's default messageEncoding): 48 KiB
# of JSON. A vault id is at most about 220 characters: 100 of them fit with room to spare,
# and 100 writes take a subscription's write quota 10 s at its refill rate.
VAULTS_PER_MESSAGE = 100
MAX_MESSAGE_CHARS = 40_000
QUEUE_TIMEOUTS = {"connect": 5.0, "read": 8.0}
_FIELDS = frozenset({"v", "run", "part", "subscription", "ranges", "vaults"})


class MalformedMessage(ValueError):
    """A queue message that is not one of kvfirewall's: dropped with a warning (a delivery
    again would not fix it)."""


@dataclass(frozen=True, kw_only=True)
class WorkMessage:
    """One share of a run: vaults of one subscription, found drifted when the run listed them."""

    run: str  # the run's id, which is the name its report is stored under
    part: int  # 1, 2, ...: the planner's own results are part 0
    subscription: str
    ranges: str  # the range snapshot version the run planned with
    vaults: tuple[str, ...]

    def to_text(self) -> str:
        return json.dumps(
            {
                "v": MESSAGE_VERSION,
                "run": self.run,
                "part": self.part,
                "subscription": self.subscription,
                "ranges": self.ranges,
                "vaults": list(self.vaults),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_text(cls, text: str) -> WorkMessage:
        """Parse as strictly as any input: anyone with the queue's data role can write it."""
        if len(text) > MAX_MESSAGE_CHARS * 2:
            raise MalformedMessage("message too large")
        try:
            data = json.loads(text)
        except ValueError:
            raise MalformedMessage("not JSON") from None
        if not isinstance(data, dict) or set(data) != _FIELDS or data["v"] != MESSAGE_VERSION:
            raise MalformedMessage("not a kvfirewall work message (fields or version)")
        run, part, subscription = data["run"], data["part"], data["subscription"]
        vaults, ranges = data["vaults"], data["ranges"]
        if not isinstance(run, str) or parse_report_name(run) is None:
            raise MalformedMessage("run is not a run id")
        if type(part) is not int or not 1 <= part <= 1_000_000:
            raise MalformedMessage("part is not a whole number from 1")
        if not isinstance(subscription, str) or not SUBSCRIPTION_RE.match(subscription):
            raise MalformedMessage("subscription is not a subscription id")
        if not isinstance(ranges, str) or len(ranges) > 100:
            raise MalformedMessage("ranges is not a version")
        if not isinstance(vaults, list) or not 1 <= len(vaults) <= VAULTS_PER_MESSAGE:
            raise MalformedMessage(f"vaults is not a list of 1 to {VAULTS_PER_MESSAGE} ids")
        for vault in vaults:
            try:
                ref = parse_vault_id(vault) if isinstance(vault, str) else None
            except RuleError:
                ref = None
            if ref is None or ref.subscription != subscription.lower():
                raise MalformedMessage("vaults holds an id that is not a vault of subscription")
        return cls(
            run=run,
            part=part,
            subscription=subscription.lower(),
            ranges=ranges,
            vaults=tuple(vaults),
        )


class Batcher:
    """Groups a run's drifted vaults by subscription into messages, sending each as it fills
    (so that memory holds at most one message per subscription) and the rest on `close`."""

    def __init__(self, run: str, send: Callable[[str], None]) -> None:
        self._run = run
        self._ranges = ""
        self._send = send
        self._open: dict[str, list[str]] = {}
        self._chars: dict[str, int] = {}
        self.messages = 0
        self.vaults = 0

    def add(self, vault_id: str, ranges: str) -> None:
        """Queue a vault the run planned on range version `ranges` (the same for a run)."""
        self._ranges = ranges
        subscription = parse_vault_id(vault_id).subscription
        batch = self._open.setdefault(subscription, [])
        chars = self._chars.get(subscription, 0) + len(vault_id) + 3
        if batch and (len(batch) >= VAULTS_PER_MESSAGE or chars > MAX_MESSAGE_CHARS):
            self._flush(subscription)
            batch, chars = self._open.setdefault(subscription, []), len(vault_id) + 3
        batch.append(vault_id)
        self._chars[subscription] = chars
        self.vaults += 1

    def close(self) -> None:
        for subscription in list(self._open):
            self._flush(subscription)

    def _flush(self, subscription: str) -> None:
        batch = self._open.pop(subscription)
        self._chars.pop(subscription, None)
        if not batch:
            return
        self.messages += 1
        message = WorkMessage(
            run=self._run,
            part=self.messages,
            subscription=subscription,
            ranges=self._ranges,
            vaults=tuple(batch),
        )
        self._send(message.to_text())


def queue_client(location: StateLocation, *, arm_endpoint: str):
    """The work queue in the state's storage account, or None where there is none: a local
    directory, or a connection string that names other endpoints but no queue's (its account
    name alone would point at the public cloud's)."""
    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    from kvfirewall.clouds import default_credential

    options = {
        "message_encode_policy": TextBase64EncodePolicy(),  # as the host decodes by default
        "transport": shared_transport(),
        "raw_request_hook": RequestTimeouts(**QUEUE_TIMEOUTS),
        "retry_total": 1,
    }
    if location.kind == "identity":
        if not location.queue_url:
            return None
        credential = default_credential(arm_endpoint, client_id=location.client_id)
        return QueueClient(location.queue_url, QUEUE_NAME, credential=credential, **options)
    if location.kind != "connection-string":
        return None
    fields = _connection_fields(location.value)
    development = fields.get("usedevelopmentstorage", "").lower() == "true"
    if not development and "queueendpoint" not in fields and "blobendpoint" in fields:
        return None
    return QueueClient.from_connection_string(location.value, QUEUE_NAME, **options)


def sender(client) -> Callable[[str], None]:
    """Send a message, creating the queue the first time it is missing."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    def send(text: str) -> None:
        try:
            client.send_message(text)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):  # created meanwhile
                client.create_queue()
            client.send_message(text)

    return send
