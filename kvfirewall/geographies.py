"""Azure DevOps geographies and the Azure regions whose inbound ranges serve them.

Follows the inbound-connections table of "Allowed address lists and network connections"
(Azure DevOps docs). That page says to allow *all* US regions for the United States, which the
table already lists. Regions the table does not name (EastAsia, SwedenCentral, UAENorth, the
EUAP canaries) have `AzureDevOps.<Region>` service tags too; operators reach them with
KVF_ADO_REGIONS rather than by guessing which geography they serve.
"""

from __future__ import annotations

GEOGRAPHY_REGIONS: dict[str, tuple[str, ...]] = {
    "Asia Pacific": ("southeastasia",),
    "Australia": ("australiaeast", "australiasoutheast"),
    "Brazil": ("brazilsouth",),
    "Canada": ("canadacentral",),
    "Europe": ("westeurope", "northeurope"),
    "India": ("southindia", "centralindia"),
    "United Kingdom": ("uksouth",),
    "United States": (
        "centralus",
        "eastus",
        "eastus2",
        "northcentralus",
        "southcentralus",
        "westcentralus",
        "westus",
        "westus2",
        "westus3",
    ),
}

_BY_KEY = {name.casefold(): name for name in GEOGRAPHY_REGIONS}


def canonical_geography(value: str) -> str | None:
    """The table's spelling of a geography given in any case, or None if unknown."""
    return _BY_KEY.get(" ".join(value.split()).casefold())
