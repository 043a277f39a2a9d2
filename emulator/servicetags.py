"""Service Tag Discovery API: the downloadable file re-shaped the way the REST API returns it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_KEPT_PROPERTIES = ("changeNumber", "region", "systemService", "addressPrefixes")


def check_file_doc(doc: Any) -> None:
    """Refuse documents that are not ServiceTags_Public file-shaped, to catch fixture mistakes."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("values"), list):
        raise ValueError("service tags doc must be an object with a 'values' list")
    for value in doc["values"]:
        if not isinstance(value, Mapping) or not isinstance(value.get("properties"), Mapping):
            raise ValueError("each service tag value needs a 'properties' object")


def api_shape(doc: Mapping[str, Any], subscription: str) -> dict[str, Any]:
    """Convert the file shape to the API shape.

    The API reports changeNumber as strings and drops regionId/platform/networkFeatures,
    which is exactly what trips code written against only one of the two sources.
    """
    values = []
    for value in doc["values"]:
        props = value["properties"]
        api_props: dict[str, Any] = {}
        for key in _KEPT_PROPERTIES:
            if key not in props:
                continue
            item = props[key]
            if key == "changeNumber":
                item = str(item)
            elif key == "addressPrefixes":
                item = list(item)
            api_props[key] = item
        values.append({"name": value.get("name"), "id": value.get("id"), "properties": api_props})
    return {
        "name": "public",
        "id": f"/subscriptions/{subscription}/providers/Microsoft.Network/serviceTags/public",
        "type": "Microsoft.Network/serviceTags",
        "changeNumber": str(doc.get("changeNumber", "")),
        "cloud": doc.get("cloud", "Public"),
        "values": values,
    }
