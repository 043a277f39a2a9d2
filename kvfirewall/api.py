"""The HTTP API's request bodies, validated before anything touches Azure.

`POST /api/reconcile` takes an optional JSON object `{"vaultId": str, "dryRun": bool}`. The
parser is strict: unknown keys, wrong types and ids that are not Key Vault resource ids in a
managed subscription are refused with a message for the caller, so a typo (`"dryrun"`) can
never turn a preview into a write.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from kvfirewall.rules import RuleError, VaultRef, parse_vault_id

MAX_BODY_BYTES = 16 * 1024  # a vault id and a flag; anything bigger is not a request of ours
FIELDS = ("vaultId", "dryRun")


class BadRequest(ValueError):
    """Input the API refuses; the message is safe to return to the caller."""


@dataclass(frozen=True, kw_only=True)
class ReconcileRequest:
    vault: VaultRef | None = None  # None: every vault in scope
    dry_run: bool = False


def parse_reconcile_request(
    body: bytes, *, subscriptions: tuple[str, ...] | None
) -> ReconcileRequest:
    """Parse and validate a reconcile request body (empty means: all vaults, not a dry run).
    `subscriptions`: the managed ones; None when management groups make them known only to
    the run (which then skips a vault outside them)."""
    if not body.strip():
        return ReconcileRequest()
    document = json_object(body, fields=FIELDS)
    dry_run = document.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise BadRequest(f"dryRun must be true or false, not {json_type(dry_run)}")
    if "vaultId" not in document:  # absent means every vault; null is a mistake, not "all"
        return ReconcileRequest(dry_run=dry_run)
    vault = vault_field(document["vaultId"], field="vaultId")
    if subscriptions is not None and vault.subscription not in subscriptions:
        raise BadRequest(f"vaultId: subscription {vault.subscription} is not managed")
    return ReconcileRequest(vault=vault, dry_run=dry_run)


def vault_field(value: object, *, field: str) -> VaultRef:
    """A field of a request body that must be one Key Vault resource id."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string, not {json_type(value)}")
    try:
        return parse_vault_id(value)
    except RuleError as exc:
        raise BadRequest(f"{field}: {exc}") from None


def json_object(body: bytes, *, fields: tuple[str, ...]) -> dict:
    """A request body that must be one JSON object of known fields, each at most once."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadRequest("body is not JSON") from None
    if not isinstance(document, dict):
        raise BadRequest(f"body must be a JSON object, not {json_type(document)}")
    unknown = sorted(set(document) - set(fields))
    if unknown:
        shown = ", ".join(repr(k[:50]) for k in unknown[:5])
        raise BadRequest(f"unknown field(s) {shown}; expected {', '.join(fields)}")
    return document


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are unique: with `{"dryRun": true, "dryRun": false}` the last
    value would silently win, and a preview become a write."""
    repeated = sorted(key for key, n in Counter(key for key, _ in pairs).items() if n > 1)
    if repeated:
        raise BadRequest(
            f"field(s) given more than once: {', '.join(repr(k[:50]) for k in repeated[:5])}"
        )
    return dict(pairs)


def json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
