"""The record of a fanned-out run in the state's container, and its one report.

A run that queues its drifted vaults (see `fan_out`) reserves its report's name first: that
name is the run's id. Under `runs/<id>/` it keeps a manifest (trigger, mode, start, and once
the listing is done, how many messages it sent) and one part per share of the work, each a
report of its own: part 0 the vaults the listing settled, part n the results of message n
(or, if the host gave up on that message, its vaults failed as poisoned). A part is created
once and never overwritten, so a message delivered twice cannot count twice.

The run is done when the manifest knows its messages and every part is there. Whoever sees
that first (the last consumer, the planner, or a reader of the run's progress) assembles the
parts into the reserved report, written only over the empty reservation (its ETag): a second
assembler finds it filled and leaves it. The parts are then deleted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Literal

from kvfirewall.report import OUTCOMES

RUNS = "runs"
PART_KINDS = ("listing", "message", "poison")
PartKind = Literal["listing", "message", "poison"]
_SUMMED = ("cutShort", "cutShortSubscriptions")


class RunRecord:
    """One fanned-out run's manifest and parts, in an `AzureStore`'s container."""

    def __init__(self, store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._prefix = f"{RUNS}/{run_id}/"

    def _blob(self, name: str):
        return self.store.container.get_blob_client(self._prefix + name)

    def start(self, *, trigger: str, mode: str, started: datetime) -> None:
        """The manifest of a run still listing: its messages are not known yet."""
        self._manifest({"trigger": trigger, "mode": mode, "started": started.isoformat()})

    def listed(self, *, messages: int, queued: int) -> None:
        """The listing is done: `messages` sent, holding `queued` vaults."""
        self._manifest({**self.manifest(), "messages": messages, "queued": queued})

    def _manifest(self, data: dict) -> None:
        self._blob("manifest.json").upload_blob(json.dumps(data).encode(), overwrite=True)

    def manifest(self) -> dict:
        """The manifest; `KeyError` when the run has none (no such run, or assembled)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return json.loads(self._blob("manifest.json").download_blob().readall())
        except ResourceNotFoundError:
            raise KeyError(self.run_id) from None

    def add_part(
        self, part: int, kind: PartKind, chunks: Iterable[bytes], *, counts: dict[str, int]
    ) -> bool:
        """Store a part once; False if it was there already (a repeated delivery)."""
        from azure.core.exceptions import ResourceExistsError

        try:
            self._blob(_part_name(part)).upload_blob(
                (bytes(c) for c in chunks),
                overwrite=False,
                metadata={"kind": kind, "counts": json.dumps(counts, separators=(",", ":"))},
            )
        except ResourceExistsError:
            return False
        return True

    def has_part(self, part: int) -> bool:
        return self._blob(_part_name(part)).exists()

    def _parts(self) -> dict[int, dict[str, str]]:
        """The parts stored so far: number -> blob metadata."""
        found = {}
        for blob in self.store.container.list_blobs(
            name_starts_with=self._prefix + "part-", include=["metadata"]
        ):
            number = blob.name[len(self._prefix) + len("part-") : -len(".json")]
            if number.isdigit():
                found[int(number)] = blob.metadata or {}
        return found

    def progress(self) -> dict | None:
        """Where a run stands: `{"id", "status", "trigger", "mode", "started", "messages",
        "queued", "messagesDone", "poisoned", "counts"}`, counts summed over the parts so
        far; None when there is no such run in progress."""
        try:
            manifest = self.manifest()
        except KeyError:
            return None
        parts = self._parts()
        counts: Counter = Counter()
        for metadata in parts.values():
            counts.update(json.loads(metadata.get("counts", "{}")))
        messages = manifest.get("messages")
        done = sum(1 for n in parts if n > 0)
        if messages is None:
            status = "listing"
        else:
            status = "done" if all(n in parts for n in range(messages + 1)) else "running"
        return {
            "id": self.run_id,
            "status": status,
            "trigger": manifest.get("trigger"),
            "mode": manifest.get("mode"),
            "started": manifest.get("started"),
            "messages": messages,
            "queued": manifest.get("queued"),
            "messagesDone": done,
            "poisoned": sum(1 for m in parts.values() if m.get("kind") == "poison"),
            "counts": dict(counts),
        }

    def complete(self, now: datetime) -> dict | None:
        """If every part is in and the report is not written yet, write it from the parts
        (only over the empty reservation) and delete the parts; returns the report's head
        when this call wrote it, else None."""
        try:
            manifest = self.manifest()
        except KeyError:
            return None
        messages = manifest.get("messages")
        parts = self._parts()
        if messages is None or any(n not in parts for n in range(messages + 1)):
            return None
        from azure.core.exceptions import ResourceNotFoundError

        etag = self.store.report_reservation(self.run_id)
        head = None
        if etag is not None:
            try:
                head = self._head(manifest, parts, now)
                counts = {
                    **{k: head["counts"][k] for k in (*OUTCOMES, "outOfScope")},
                    **{k: head[k] for k in _SUMMED},
                }
                if not self.store.fill_report(
                    self.run_id, self._document(head, sorted(parts)), counts=counts, etag=etag
                ):
                    head = None  # another assembler wrote it: the same report
            except ResourceNotFoundError:  # another assembler wrote it and deleted the parts
                return None
        self._forget(parts)
        return head

    def _read_part(self, number: int) -> dict:
        return json.loads(self._blob(_part_name(number)).download_blob().readall())

    def _head(self, manifest: dict, parts: dict[int, dict[str, str]], now: datetime) -> dict:
        """The parts' heads merged: counts and calls summed, warnings once each."""
        counts: Counter = Counter()
        calls: Counter = Counter()
        summed: Counter = Counter()
        warnings: list[str] = []
        source: dict = {}
        for number in sorted(parts):
            part = self._read_part(number)
            counts.update(part.get("counts") or {})
            calls.update(part.get("armCalls") or {})
            summed.update({k: part.get(k, 0) for k in _SUMMED})
            for warning in part.get("warnings") or ():
                if warning not in warnings:
                    warnings.append(warning)
            if number == 0:
                source = part.get("source") or {}
            elif (part.get("source") or {}).get("version") != source.get("version"):
                warning = (
                    f"message {number} reconciled with ranges version "
                    f"{(part.get('source') or {}).get('version')}: the stored snapshot had "
                    f"moved on since the run listed the vaults with {source.get('version')}"
                )
                warnings.append(warning)
        started = datetime.fromisoformat(manifest["started"])
        return {
            "mode": manifest.get("mode"),
            "source": source,
            "counts": {
                **{o: counts.get(o, 0) for o in OUTCOMES},
                "outOfScope": counts.get("outOfScope", 0),
            },
            "armCalls": dict(calls),
            "durationSeconds": round((now - started).total_seconds(), 3),
            "cutShort": summed["cutShort"],
            "cutShortSubscriptions": summed["cutShortSubscriptions"],
            "warnings": warnings,
            "run": self.run_id,
            "messages": manifest.get("messages"),
            "queued": manifest.get("queued"),
            "poisoned": sum(1 for m in parts.values() if m.get("kind") == "poison"),
        }

    def _document(self, head: dict, numbers: list[int]) -> Iterator[bytes]:
        """The report, one part's vaults at a time."""
        yield json.dumps({**head, "vaultsListed": "all"})[:-1].encode() + b', "vaults": ['
        first = True
        for number in numbers:
            for vault in self._read_part(number).get("vaults") or ():
                yield (b"" if first else b",") + b"\n" + json.dumps(vault).encode()
                first = False
        yield b"\n]}\n"

    def _forget(self, parts: dict[int, dict[str, str]]) -> None:
        """Delete the run's blobs: its report holds everything now."""
        from azure.core.exceptions import ResourceNotFoundError

        for name in [*(_part_name(n) for n in parts), "manifest.json"]:
            try:
                self._blob(name).delete_blob()
            except ResourceNotFoundError:  # deleted by another assembler
                continue


def _part_name(number: int) -> str:
    return f"part-{number:07d}.json"
