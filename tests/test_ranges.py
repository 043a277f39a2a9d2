"""Service-tag parsing, the desired set, and the guard that keeps a broken source harmless."""

from __future__ import annotations

import copy
import json
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from kvfirewall.ranges import (
    RangeSourceError,
    Snapshot,
    choose_snapshot,
    desired_rules,
    parse_service_tags,
)
from kvfirewall.settings import Settings
from kvfirewall.sources import builtin_snapshot

FIXTURES = Path(__file__).parent / "fixtures"
JULY = json.loads((FIXTURES / "ServiceTags_Public_20250728.AzureDevOps-only.json").read_text())
OCTOBER = json.loads((FIXTURES / "ServiceTags_Public_20251028.AzureDevOps-only.json").read_text())
SUB = "00000000-0000-0000-0000-000000000001"


def ado_ipv4(document: dict) -> set[IPv4Network]:
    """The global AzureDevOps tag's IPv4 prefixes, read independently of the parser."""
    entry = next(v for v in document["values"] if v["name"] == "AzureDevOps")
    return {IPv4Network(p) for p in entry["properties"]["addressPrefixes"] if ":" not in p}


def settings(**env: str) -> Settings:
    return Settings.from_env({"KVF_SUBSCRIPTIONS": SUB, **env})


def test_real_file_parses_to_the_union_of_regional_ipv4_prefixes_without_ipv6():
    snap = parse_service_tags(OCTOBER, source="file")
    assert snap.version == "8"
    assert snap.prefixes == ado_ipv4(OCTOBER)
    assert len(snap.regions) == 24
    assert all(p.version == 4 for p in snap.prefixes)
    assert snap.regions["westeurope"] == (IPv4Network("40.74.28.0/23"),)
    assert not snap.warnings


def test_builtin_snapshot_is_the_real_october_file():
    assert builtin_snapshot().prefixes == ado_ipv4(OCTOBER)
    assert builtin_snapshot().version == "8"


def test_api_shape_with_string_change_numbers_parses_the_same():
    api = copy.deepcopy(OCTOBER)
    api.update(name="public", type="Microsoft.Network/serviceTags", changeNumber="375")
    for value in api["values"]:
        props = value["properties"]
        props["changeNumber"] = str(props["changeNumber"])
        for extra in ("regionId", "platform", "networkFeatures"):
            props.pop(extra)
    snap = parse_service_tags(api, source="api")
    assert (snap.version, snap.regions) == ("8", parse_service_tags(OCTOBER, source="f").regions)


def test_geographies_resolve_to_their_regions_plus_explicit_regions_and_extras():
    snap = builtin_snapshot()
    want = desired_rules(
        settings(
            KVF_ADO_GEOGRAPHIES="Europe",
            KVF_ADO_REGIONS="swedencentral",
            KVF_EXTRA_IP_RULES="52.9.9.9",
        ),
        snap,
    )
    assert set(want.ip_rules) == {
        IPv4Network("40.74.28.0/23"),  # West Europe
        IPv4Network("20.166.41.0/24"),  # North Europe
        IPv4Network("20.91.148.128/25"),  # Sweden Central
        IPv4Network("52.9.9.9/32"),
    }
    assert want.ip_rules[IPv4Network("40.74.28.0/23")] == "AzureDevOps westeurope (Europe)"


def test_united_states_means_all_nine_us_regions():
    want = desired_rules(settings(KVF_ADO_GEOGRAPHIES="United States"), builtin_snapshot())
    assert len(want.ip_rules) == 9
    assert IPv4Network("20.125.155.0/24") in want.ip_rules  # West US 3


def test_an_unknown_region_is_a_warning_not_silence():
    want = desired_rules(settings(KVF_ADO_REGIONS="westeurpoe"), builtin_snapshot())
    assert not want.ip_rules
    assert "westeurpoe" in want.warnings[0]


def test_documents_without_the_tag_are_source_errors():
    with pytest.raises(RangeSourceError):
        parse_service_tags({"values": []}, source="x")
    with pytest.raises(RangeSourceError):
        parse_service_tags(["not", "a", "document"], source="x")


def test_private_and_host_bit_prefixes_are_dropped_with_a_warning():
    doc = copy.deepcopy(OCTOBER)
    weu = next(v for v in doc["values"] if v["name"] == "AzureDevOps.WestEurope")
    weu["properties"]["addressPrefixes"] += ["10.0.0.0/8", "40.74.30.7/23", 42]
    snap = parse_service_tags(doc, source="x")
    assert snap.regions["westeurope"] == (IPv4Network("40.74.28.0/23"),)
    assert len(snap.warnings) == 3


# ---- the guard -----------------------------------------------------------------------------

EUROPE = ("westeurope", "northeurope")


def guard(fresh, last_good, error=None, max_loss=20.0, regions=EUROPE):
    return choose_snapshot(
        fresh,
        error=error,
        last_good=last_good,
        builtin=builtin_snapshot(),
        regions=regions,
        max_loss_percent=max_loss,
    )


def edited(
    document: dict,
    *,
    drop: tuple[str, ...] = (),
    version: int | None = None,
    replace: dict[str, list[str]] | None = None,
) -> Snapshot:
    """A copy of a real file with regional tags dropped or replaced and a new changeNumber."""
    doc = copy.deepcopy(document)
    doc["values"] = [v for v in doc["values"] if v["name"] not in drop]
    for value in doc["values"]:
        if value["name"] == "AzureDevOps" and version is not None:
            value["properties"]["changeNumber"] = version
        if value["name"] in (replace or {}):
            value["properties"]["addressPrefixes"] = replace[value["name"]]
    return parse_service_tags(doc, source="file")


def regional_names(count: int) -> tuple[str, ...]:
    """The first regional tags that are not in Europe."""
    names = [v["name"] for v in OCTOBER["values"] if v["name"].startswith("AzureDevOps.")]
    return tuple(n for n in names if "Europe" not in n)[:count]


def test_real_history_july_to_october_is_accepted_as_a_new_version():
    july = parse_service_tags(JULY, source="file")
    october = parse_service_tags(OCTOBER, source="file")
    decision = guard(october, july)
    assert (decision.status, decision.save) == ("fresh", True)
    assert decision.snapshot.version == "8" and july.version == "7"
    assert decision.removed == ()
    again = guard(october, october)
    assert (again.status, again.save) == ("unchanged", False)


def test_an_older_version_never_replaces_a_newer_one():
    july = parse_service_tags(JULY, source="file")
    october = parse_service_tags(OCTOBER, source="file")
    decision = guard(july, october)
    assert decision.snapshot is october
    assert "version 7 is older than 8" in decision.warnings[-1]


def test_a_failed_fetch_keeps_the_last_good_snapshot():
    last = parse_service_tags(JULY, source="file")
    decision = guard(None, last, error="timeout")
    assert decision.snapshot is last
    assert decision.status == "kept-last-good"
    assert "timeout" in decision.warnings[-1]


def test_a_failed_first_fetch_falls_back_to_the_builtin_snapshot():
    decision = guard(None, None, error="HTTP 403")
    assert decision.status == "builtin-fallback"
    assert decision.snapshot.prefixes == builtin_snapshot().prefixes


def test_a_source_that_lost_many_prefixes_is_refused():
    last = parse_service_tags(OCTOBER, source="file")
    decision = guard(edited(OCTOBER, drop=regional_names(10), version=9), last)
    assert decision.snapshot is last
    assert "drops 10 of 24" in decision.warnings[-1]


def test_a_loss_without_a_new_change_number_is_refused():
    last = parse_service_tags(OCTOBER, source="file")
    decision = guard(edited(OCTOBER, drop=regional_names(1)), last)
    assert decision.snapshot is last
    assert "without a new changeNumber" in decision.warnings[-1]


def test_a_configured_region_that_vanishes_is_a_broken_source():
    last = parse_service_tags(OCTOBER, source="file")
    decision = guard(edited(OCTOBER, drop=("AzureDevOps.NorthEurope",), version=9), last)
    assert decision.snapshot is last
    assert "no prefixes for northeurope" in decision.warnings[-1]


def test_a_small_real_change_with_a_new_version_is_accepted_and_reported():
    last = parse_service_tags(OCTOBER, source="file")
    rotated = edited(
        OCTOBER,
        version=9,
        drop=regional_names(1),
        replace={"AzureDevOps.WestEurope": ["20.61.10.0/24"]},
    )
    decision = guard(rotated, last)
    assert decision.snapshot is rotated
    assert decision.removed == (IPv4Network("20.37.194.0/24"), IPv4Network("40.74.28.0/23"))
    assert decision.added == (IPv4Network("20.61.10.0/24"),)


def test_an_empty_or_ipv6_only_tag_is_refused():
    doc = copy.deepcopy(OCTOBER)
    for value in doc["values"]:
        value["properties"]["addressPrefixes"] = [
            p for p in value["properties"]["addressPrefixes"] if ":" in p
        ]
    decision = guard(parse_service_tags(doc, source="file"), None)
    assert decision.status == "builtin-fallback"
    assert "no IPv4 prefixes" in decision.warnings[-1]


def test_a_first_download_is_guarded_against_the_builtin_snapshot():
    # Nothing stored yet: an older, smaller document must not replace the shipped data.
    decision = guard(parse_service_tags(JULY, source="file"), None)
    assert decision.status == "builtin-fallback"
    assert "older than 8" in decision.warnings[-1]
    only_us = edited(
        OCTOBER,
        version=9,
        drop=tuple(
            v["name"]
            for v in OCTOBER["values"]
            if v["name"].startswith("AzureDevOps.") and "US" not in v["name"]
        ),
    )
    assert guard(only_us, None).status == "builtin-fallback"


def test_a_change_without_a_new_change_number_is_refused_even_if_it_only_adds():
    last = parse_service_tags(OCTOBER, source="file")
    grown = edited(OCTOBER, replace={"AzureDevOps.WestEurope": ["40.74.28.0/23", "52.0.0.0/22"]})
    decision = guard(grown, last)
    assert decision.snapshot is last
    assert "without a new changeNumber" in decision.warnings[-1]


def test_the_change_number_must_be_a_number():
    doc = copy.deepcopy(OCTOBER)
    del next(v for v in doc["values"] if v["name"] == "AzureDevOps")["properties"]["changeNumber"]
    with pytest.raises(RangeSourceError, match="no numeric changeNumber"):
        parse_service_tags(doc, source="x")


def test_prefixes_wider_than_any_azure_devops_range_are_dropped():
    snap = edited(OCTOBER, replace={"AzureDevOps.WestEurope": ["40.74.28.0/23", "52.0.0.0/16"]})
    assert snap.regions["westeurope"] == (IPv4Network("40.74.28.0/23"),)
    assert "wider than /20" in snap.warnings[0]


@pytest.mark.parametrize(
    ("tampered", "refusal"),
    [
        ({"version": "8", "source": "x", "regions": {"westeurope": ["0.0.0.0/0"]}}, "not a public"),
        (
            {"version": "8", "source": "x", "regions": {"westeurope": ["10.0.0.0/8"]}},
            "not a public",
        ),
        ({"version": "8", "source": "x", "regions": {"westeurope": ["52.0.0.0/16"]}}, "wider than"),
        ({"version": "", "source": "x", "regions": {}}, "no numeric version"),
    ],
)
def test_a_stored_snapshot_is_validated_like_a_download(tampered, refusal):
    with pytest.raises(ValueError, match=refusal):
        Snapshot.from_json(tampered)


# ---- the AzureCloud tag (access leases check addresses against it) ------------------------

CLOUD_EUROPE = json.loads(
    (FIXTURES / "ServiceTags_Public_20251028.AzureDevOps-and-AzureCloud-europe.json").read_text()
)


def cloud_ipv4(document: dict) -> set[IPv4Network]:
    return {
        IPv4Network(p)
        for v in document["values"]
        if v["name"].startswith("AzureCloud.")
        for p in v["properties"]["addressPrefixes"]
        if ":" not in p
    }


def test_the_azure_cloud_tag_is_parsed_beside_the_azure_devops_ranges():
    snap = parse_service_tags(CLOUD_EUROPE, source="file")
    assert snap.prefixes == ado_ipv4(CLOUD_EUROPE)  # the AzureDevOps ranges are unchanged
    assert set(snap.azure_cloud) == cloud_ipv4(CLOUD_EUROPE) and len(snap.azure_cloud) == 944
    assert builtin_snapshot().azure_cloud == snap.azure_cloud
    inside = next(iter(cloud_ipv4(CLOUD_EUROPE))).network_address + 1
    assert snap.in_azure_cloud(inside)
    assert not snap.in_azure_cloud(IPv4Network("20.1.2.3/32").network_address)
    assert Snapshot.from_json(json.loads(json.dumps(snap.to_json()))) == snap


def test_the_global_azure_cloud_tag_wins_over_its_regions():
    doc = copy.deepcopy(CLOUD_EUROPE)
    doc["values"].append(
        {"name": "AzureCloud", "id": "AzureCloud",
         "properties": {"changeNumber": 1, "region": "", "addressPrefixes": ["4.0.0.0/11", "1.0.0.0/8"]}}
    )  # fmt: skip
    snap = parse_service_tags(doc, source="file")
    assert snap.azure_cloud == (IPv4Network("4.0.0.0/11"),)  # a /8 is a broken source
    assert any("wider than /10" in w for w in snap.warnings)


def test_with_leases_a_source_without_azure_cloud_is_refused():
    last = builtin_snapshot()
    fresh = edited(OCTOBER, version=9)  # no AzureCloud tag at all
    kept = choose_snapshot(fresh, error=None, last_good=last, builtin=last,
                           regions=("westeurope",), max_loss_percent=20, azure_cloud=True)  # fmt: skip
    assert kept.snapshot is last and "no IPv4 prefixes for AzureCloud" in kept.warnings[-1]
    taken = choose_snapshot(fresh, error=None, last_good=last, builtin=last,
                            regions=("westeurope",), max_loss_percent=20)  # fmt: skip
    assert taken.snapshot is fresh  # without leases, AzureCloud is not needed
