"""The conversion report: a terminal table and a self-contained HTML page."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["render_html", "render_table"]


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return "-"


def _metric(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "-"
    if "accuracy" in metrics:
        return f"acc {metrics['accuracy']:.4f} (float {metrics['reference_accuracy']:.4f})"
    if "top1_agreement" in metrics:
        return f"top-1 agree {metrics['top1_agreement']:.4f}"
    if "finite_fraction" in metrics:  # an imported .tflite file: no original to compare with
        return f"finite {metrics['finite_fraction']:.4f}"
    return f"rel err {metrics['mean_relative_error']:.4f}"


def _rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for bundle in report["bundles"]:
        for cand in bundle["candidates"]:
            latency = cand["latency_ms"]
            rows.append(
                (
                    bundle["profile"],
                    ("* " if cand["chosen"] else "  ") + cand["variant"],
                    _size(cand["size_bytes"]),
                    f"{latency['p50']:.3f}" if latency else "-",
                    f"{latency['p95']:.3f}" if latency else "-",
                    _metric(cand["metrics"]),
                    "chosen" if cand["chosen"] else (cand["error"] or cand["rejected"] or ""),
                )
            )
    return rows


HEADER = ("PROFILE", "VARIANT", "SIZE", "P50 MS", "P95 MS", "QUALITY", "VERDICT")


def render_table(report: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [HEADER, *_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
    for bundle in report["bundles"]:
        lines.append(
            f"{bundle['profile']}: {bundle['path']} ({bundle['precision']}, "
            f"{_size(bundle['size_bytes'])}; source {_size(bundle['source_size_bytes'])}; "
            f"chosen by {bundle['chosen_by']})"
        )
        lines += [f"  note: {n}" for n in bundle["host_differences"] + bundle["notes"]]
    return "\n".join(lines)


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    body = ["<table><thead><tr>", *(f"<th>{e(h)}</th>" for h in HEADER), "</tr></thead><tbody>"]
    for row in _rows(report):
        chosen = row[1].startswith("*")
        body.append(
            f"<tr class='{'chosen' if chosen else ''}'>"
            + "".join(f"<td>{e(c.strip())}</td>" for c in row)
            + "</tr>"
        )
    body.append("</tbody></table>")
    for bundle in report["bundles"]:
        body.append(
            f"<h2>{e(bundle['profile'])}</h2><p>{e(bundle['path'])}: "
            f"{e(bundle['precision'])}, {e(_size(bundle['size_bytes']))}, "
            f"chosen by {e(bundle['chosen_by'])}</p>"
        )
        notes = bundle["host_differences"] + bundle["notes"]
        if notes:
            body.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    source = report["source"]
    kind = (
        f"opset {source['opset']}"
        if "opset" in source
        else f"{e(source['framework'])}, {e(source.get('precision', ''))}, imported as it is"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>edgefleet conversion report</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}"
        "table{border-collapse:collapse}td,th{padding:.3rem .6rem;border-bottom:1px solid #ddd;"
        "text-align:left;font-variant-numeric:tabular-nums}tr.chosen{background:#e8f5e9;"
        "font-weight:600}</style></head><body>"
        f"<h1>Conversion report</h1><p>source {e(source['path'])} "
        f"(sha256 {e(source['sha256'][:16])}…, {e(_size(source['size_bytes']))}, "
        f"{kind})</p>" + "".join(body) + "</body></html>\n"
    )
