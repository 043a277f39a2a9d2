"""The status page as one self-contained HTML document, rendered on the server.

No script and no external asset: the style is inline under a per-response nonce, the chart is
inline SVG, filtering, sorting and paging are plain links. Every value from Azure or from
other people (vault names, reasons, rules, warnings) is escaped, isolated with `<bdi>` so a
right-to-left override cannot reorder the text around it, and shortened for display (the
full text stays in the `title`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape
from urllib.parse import quote, urlencode

from kvfirewall.status import (
    CHART_DAYS,
    OUTCOME_NAMES,
    SORT_KEYS,
    Status,
    StatusQuery,
    VaultRow,
)

SHOWN_CHARS = 120  # longer values are cut on the page; the full text is in the title
SORT_LABELS = {"outcome": "outcome", "vault": "name", "changes": "changes"}
CHANGE_LABELS = {"added": "added", "removed": "removed", "kept": "in place", "access": "changed"}

STYLE = """
:root{color-scheme:light;--ink:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;
--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--info:#0969da}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--ink);background:#fff}
header{padding:14px 24px;border-bottom:1px solid var(--line);background:var(--bg)}
header h1{margin:0;font-size:20px}
header p{margin:2px 0 0;color:var(--muted)}
main{padding:8px 24px 32px;max-width:1200px}
h2{font-size:16px;margin:22px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0 6px;padding:0}
.cards div{border:1px solid var(--line);border-radius:6px;padding:8px 14px;min-width:110px}
.cards dt{color:var(--muted);font-size:12px}
.cards dd{margin:0;font-size:24px;font-weight:600}
.cards .ok dd{color:var(--ok)}.cards .warn dd{color:var(--warn)}.cards .bad dd{color:var(--bad)}
.source{margin:4px 0;color:var(--muted)}
.source strong{color:var(--ink)}
svg{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
svg text{font-size:11px;fill:var(--muted)}
.axis{stroke:var(--line)}
.chg{fill:var(--info)}.fail{fill:var(--bad)}
.legend{color:var(--muted);margin:4px 0}
.key{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;border-radius:2px}
.key.chg{background:var(--info)}.key.fail{background:var(--bad)}
ul.notices{padding-left:18px}
.notices li{margin:2px 0}
.notices .kind{font-weight:600}
nav a,nav span{margin-right:10px}
nav span[aria-current]{font-weight:600}
a{color:var(--info)}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--bg);font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td,td *{overflow-wrap:anywhere}
td.vault{min-width:15ch}
.out{font-weight:600}
.out-failed{color:var(--bad)}.out-planned{color:var(--warn)}.out-skipped{color:var(--muted)}
.out-updated,.out-unchanged{color:var(--ok)}
.muted{color:var(--muted)}
details summary{cursor:pointer;color:var(--info)}
details ul{margin:4px 0;padding-left:18px}
footer{color:var(--muted);padding:0 24px 24px}
"""


def content_security_policy(nonce: str) -> str:
    """Nothing but the inline style of this response and `data:` images may load."""
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )


def render_status_page(status: Status, *, nonce: str, key: str | None = None) -> str:
    """The whole page. `key` is the function key the page was opened with (`?code=`): its
    links carry it, so that they open for the same person."""
    links = _Links(status.query, key)
    s = status.summary
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        '<link rel="icon" href="data:,">',  # no favicon request to the app
        "<title>kvfirewall status</title>",
        f'<style nonce="{_e(nonce)}">{STYLE}</style></head><body>',
        "<header><h1>kvfirewall status</h1>",
        f"<p>as of {_time(status.now)}"
        + (f" · newest run {_text(s.run)} ({_time(s.time)})" if s else "")
        + "</p></header><main>",
    ]
    if s is None:
        parts.append("<p>No run has stored a report yet: the timer stores one every run.</p>")
    else:
        parts += _summary(status)
        parts += _chart(status)
        parts += _notices(status)
        parts += _vaults(status, links)
        parts += _runs(status, links)
    if status.leases is not None:
        parts += _leases(status)
    parts.append("</main><footer>Rendered from stored reports and the ledger only.</footer>")
    parts.append("</body></html>")
    return "\n".join(parts)


class _Links:
    """URLs of this page with another query, and of the stored runs, relative to
    `/api/status`, carrying the function key when there is one."""

    def __init__(self, query: StatusQuery, key: str | None) -> None:
        self.query = query
        self.key = key

    def page(self, **change: object) -> str:
        values = {"outcome": self.query.outcome, "sort": self.query.sort, "page": 1, **change}
        params = {k: v for k, v in values.items() if v not in (None, "outcome", 1)}
        if self.key:
            params["code"] = self.key
        return "status" + ("?" + urlencode(params) if params else "")

    def run(self, name: str) -> str:
        url = f"runs/{quote(name, safe='')}"
        return url + (f"?{urlencode({'code': self.key})}" if self.key else "")


def _summary(status: Status) -> list[str]:
    s = status.summary
    assert s is not None
    cards = (
        ("", "Vaults in scope", s.in_scope, "in-scope"),
        ("ok", "Compliant", s.compliant, "compliant"),
        ("warn", "Drifted", s.drifted, "drifted"),
        ("", "Skipped", s.skipped, "skipped"),
        ("bad" if s.failed else "", "Failed", s.failed, "failed"),
    )
    since = ""
    if s.source_since is not None:
        since = f", in use since {'' if s.source_since_exact else 'at least '}"
        since += _time(s.source_since)
    snapshot = ""
    if s.snapshot_version and s.snapshot_version != s.source_version:
        snapshot = f"; last good snapshot: version {_text(s.snapshot_version)}"
    prefixes = f", {s.snapshot_prefixes} IPv4 prefixes stored" if s.snapshot_prefixes else ""
    return [
        '<section aria-label="Summary"><dl class="cards">',
        *(
            f'<div class="{cls}"><dt>{label}</dt><dd data-count="{name}">{value}</dd></div>'
            for cls, label, value, name in cards
        ),
        "</dl>",
        f'<p class="source">Mode <strong>{_text(s.mode)}</strong> · '
        f"{s.out_of_scope} vaults out of scope · AzureDevOps service tag "
        f'<strong data-field="version">{_text(s.source_version)}</strong> '
        f"({_text(s.source_status)}, from {_text(s.source)}){since}{snapshot}{prefixes}</p>",
        "</section>",
    ]


def _chart(status: Status) -> list[str]:
    """Bars of changes (updated or planned) stacked on failures, one per run, by time."""
    width, height, left, bottom, top = 760, 170, 36, 22, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    end = status.now
    start = end - timedelta(days=CHART_DAYS)
    peak = max((r.changes + r.failures for r in status.chart), default=0)
    scale = plot_h / max(peak, 1)
    bar = max(1.0, min(10.0, plot_w / max(len(status.chart), CHART_DAYS) * 0.7))
    changes = sum(r.changes for r in status.chart)
    failures = sum(r.failures for r in status.chart)
    parts = [
        f"<section><h2>Changes and failures per run, last {CHART_DAYS} days</h2>",
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        'aria-labelledby="chart-title chart-desc">',
        f'<title id="chart-title">Changes and failures per run, last {CHART_DAYS} days</title>',
        f'<desc id="chart-desc">{len(status.chart)} runs, {changes} vault changes and '
        f"{failures} vault failures in all; the highest run had {peak}.</desc>",
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
        f'y2="{top + plot_h}"/>',
        f'<text x="{left - 6}" y="{top + 8}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for days_ago in range(CHART_DAYS, -1, -10):
        x = left + plot_w * (CHART_DAYS - days_ago) / CHART_DAYS
        moment = end - timedelta(days=days_ago)
        anchor = "start" if days_ago == CHART_DAYS else "end" if days_ago == 0 else "middle"
        parts.append(
            f'<text x="{x:.1f}" y="{height - 6}" text-anchor="{anchor}">{moment:%b %d}</text>'
        )
    span = (end - start).total_seconds()
    for r in status.chart:
        x = left + plot_w * (r.time - start).total_seconds() / span - bar / 2
        x = min(max(x, left), left + plot_w - bar)
        fail_h, change_h = r.failures * scale, r.changes * scale
        base = top + plot_h
        parts.append(f"<g><title>{_text(r.name)}: {r.changes} changes, {r.failures} failed</title>")
        if fail_h:
            parts.append(
                f'<rect class="fail" x="{x:.1f}" y="{base - fail_h:.1f}" '
                f'width="{bar:.1f}" height="{fail_h:.1f}"/>'
            )
        if change_h:
            parts.append(
                f'<rect class="chg" x="{x:.1f}" y="{base - fail_h - change_h:.1f}" '
                f'width="{bar:.1f}" height="{change_h:.1f}"/>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    parts.append(
        '<p class="legend"><span class="key chg"></span>vaults changed (updated, or planned '
        'in audit) <span class="key fail"></span>vaults failed</p></section>'
    )
    return parts


def _notices(status: Status) -> list[str]:
    if not status.notices:
        return []
    labels = {
        "source": "IP source refused",
        "budget": "Cut short",
        "endpoint": "No service endpoint",
        "other": "Warning",
    }
    return [
        '<section><h2>Warnings</h2><ul class="notices">',
        *(
            f'<li data-kind="{n.kind}"><span class="kind">{labels[n.kind]}:</span> '
            f"{_text(n.text, 600)}</li>"
            for n in status.notices
        ),
        "</ul></section>",
    ]


def _vaults(status: Status, links: _Links) -> list[str]:
    query = status.query
    filters = [_nav_item("all", links.page(outcome=None), query.outcome is None)]
    filters += [
        _nav_item(
            f"{o} ({status.outcome_counts.get(o, 0)})", links.page(outcome=o), query.outcome == o
        )
        for o in OUTCOME_NAMES
    ]
    sorts = [_nav_item(SORT_LABELS[k], links.page(sort=k), query.sort == k) for k in SORT_KEYS]
    parts = [
        '<section><h2 id="vaults">Vaults</h2>',
        f'<nav aria-label="Filter by outcome">Show: {" ".join(filters)}</nav>',
        f'<nav aria-label="Sort">Sort by: {" ".join(sorts)}</nav>',
        f'<p class="muted" data-field="matching">{status.matching} vaults'
        f"{' with outcome ' + query.outcome if query.outcome else ''}"
        f" · page {query.page} of {status.pages}</p>",
        '<table><thead><tr><th scope="col">Vault</th><th scope="col">Resource group</th>'
        '<th scope="col">Outcome</th><th scope="col">Why</th>'
        '<th scope="col">Rules (whose)</th></tr></thead><tbody>',
    ]
    parts += [_vault_row(v) for v in status.vaults]
    parts.append("</tbody></table>")
    if status.pages > 1:
        pager = []
        if query.page > 1:
            pager.append(f'<a rel="prev" href="{_e(links.page(page=query.page - 1))}">previous</a>')
        pager.append(f"<span>page {query.page} of {status.pages}</span>")
        if query.page < status.pages:
            pager.append(f'<a rel="next" href="{_e(links.page(page=query.page + 1))}">next</a>')
        parts.append(f'<nav aria-label="Pages">{" ".join(pager)}</nav>')
    parts.append("</section>")
    return parts


def _vault_row(v: VaultRow) -> str:
    ours = sum(r.owner == "kvfirewall" and r.change != "removed" for r in v.rules)
    others = sum(r.owner == "others" for r in v.rules)
    summary = f"{ours} kvfirewall's, {others} someone else's"
    if v.rules:
        items = "".join(
            f"<li>{_text(r.rule)} <span class=muted>— {r.owner}, "
            f"{CHANGE_LABELS[r.change]}: {_text(r.why)}</span></li>"
            for r in v.rules
        )
        rules = f"<details><summary>{summary}</summary><ul>{items}</ul></details>"
    else:
        rules = f'<span class="muted">{summary}</span>'
    why = _text(v.reason, 300)
    if v.error:
        why += f'<br><span class="out-failed">{_text(v.error, 300)}</span>'
        why += " <span class=muted>(retryable)</span>" if v.retryable else ""
    return (
        f'<tr data-outcome="{_e(v.outcome)}"><td class="vault" title="{_e(v.id)}">'
        f"{_text(v.name)}</td><td>{_text(v.resource_group)}</td>"
        f'<td class="out out-{_e(v.outcome)}">{_text(v.outcome)}</td>'
        f"<td>{why}</td><td>{rules}</td></tr>"
    )


def _runs(status: Status, links: _Links) -> list[str]:
    parts = [
        "<section><h2>Last runs</h2><table><thead><tr>"
        '<th scope="col">Run</th><th scope="col">Trigger</th>'
        + "".join(f'<th scope="col">{o}</th>' for o in OUTCOME_NAMES)
        + "</tr></thead><tbody>"
    ]
    for r in status.runs:
        counts = "".join(f'<td class="num">{int(r.counts.get(o, 0))}</td>' for o in OUTCOME_NAMES)
        parts.append(
            f'<tr><td><a href="{_e(links.run(r.name))}">{_time(r.time)}</a></td>'
            f"<td>{_text(r.trigger)}</td>{counts}</tr>"
        )
    parts.append("</tbody></table></section>")
    return parts


def _leases(status: Status) -> list[str]:
    assert status.leases is not None
    if not status.leases:
        return ["<section><h2>Active leases</h2><p>No access lease is open.</p></section>"]
    rows = "".join(
        f"<tr><td>{_text(x.vault)}</td><td>{_text(x.holder)}</td><td>{_time(x.expires)}</td></tr>"
        for x in status.leases
    )
    return [
        '<section><h2>Active leases</h2><table><thead><tr><th scope="col">Vault</th>'
        '<th scope="col">Holder</th><th scope="col">Expires</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    ]


def _nav_item(label: str, url: str, current: bool) -> str:
    if current:
        return f'<span aria-current="page">{_e(label)}</span>'
    return f'<a href="{_e(url)}">{_e(label)}</a>'


def _text(value: object, limit: int = SHOWN_CHARS) -> str:
    """A value from elsewhere as inert, direction-isolated text, cut at `limit` characters
    (the whole value then in the title)."""
    text = str(value)
    if len(text) <= limit:
        return f"<bdi>{_e(text)}</bdi>"
    return f'<bdi title="{_e(text)}">{_e(text[:limit])}…</bdi>'


def _time(moment: datetime) -> str:
    return f'<time datetime="{moment.isoformat()}">{moment:%Y-%m-%d %H:%M} UTC</time>'


def _e(value: object) -> str:
    return escape(str(value), quote=True)
