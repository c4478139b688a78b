"""`--html PATH`: one self-contained page of a session's results (no script, nothing fetched,
images embedded as data: URIs), for a person to see where a conversion differs.

Per case: the checks at a glance (failed first) with their figures, tolerances and reasons; per
photograph and processor path the original evaluation's image, the transformers processor's and a
heat map of their difference (`plots.pixel_figure`); per-block parity as a chart
(`plots.parity_chart`); the as-loaded figures per backend; the audit's findings and verdicts.
Everything shown that came from a run or a file (case and key names, reasons, paths) is quoted
(`quote`: control characters escaped, length bounded) and then HTML-escaped.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from .quote import listing, quote

# failed checks first, then what did not run or was expected to fail, then what passed
STATUS_RANK = {"failed": 0, "error": 0, "xfailed": 1, "skipped": 2, "passed": 3}
SHOWN_LINES = 40  # of a reason (the report keeps 4000 characters)
# figures the page shows in their own sections or columns, not in a check's list of figures
OWN_SECTIONS = {"status", "max_abs_diff", "atol", "reason", "block_parity", "divergence", "findings", "default", "pil",
                "notes", "line", "verdicts", "may_skip", "may_fail"}

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.2em;border-bottom:2px solid #ccc;padding-top:.8em}h3{font-size:1em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.4em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:.2em .5em;vertical-align:top;text-align:left}
.num{text-align:right;font-family:monospace}.st{font-weight:bold;white-space:nowrap}
.failed,.error,.wrong{background:#fdd;color:#900}.passed,.same{background:#dfd;color:#060}
.xfailed,.drift{background:#ffe9c6;color:#840}.skipped{background:#eee;color:#555}
pre{white-space:pre-wrap;margin:0;font-size:.95em;max-height:16em;overflow:auto}
figure{margin:.4em 0}figcaption{font-size:.85em;color:#444}img{max-width:100%;height:auto}
.muted{color:#777;font-size:.9em}
"""


def text(value, limit: int = 200) -> str:
    """Untrusted text as page text: control characters escaped and bounded, then HTML-escaped."""
    return html.escape(quote(value, limit))


def lines(value, limit: int = 400) -> str:
    """Multi-line untrusted text (a reason) for a <pre>: each line quoted, the first SHOWN_LINES."""
    rows = str(value).splitlines() or [""]
    shown = "\n".join(quote(row, limit) for row in rows[:SHOWN_LINES])
    more = f"\n... ({len(rows) - SHOWN_LINES} more lines)" if len(rows) > SHOWN_LINES else ""
    return html.escape(shown + more)


def number(value, name: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.8f}" if "cosine" in name else f"{value:.3g}"  # 0.99999988 is not 1
    return text(value, 60)


def _figure_value(value, name: str = "") -> str | None:
    """A compact view of one figure: scalars, short lists; None for what the page leaves out."""
    if isinstance(value, (bool, int, float)) or value is None:
        return number(value, name)
    if isinstance(value, str):
        return text(value, 120)
    if isinstance(value, (list, tuple, dict)) and not value:
        return "none"
    if isinstance(value, (list, tuple)):
        return html.escape(listing(value, limit=6))
    if isinstance(value, dict):
        if all(isinstance(v, (int, float)) for v in value.values()):
            return html.escape(listing([f"{k} {v:.3g}" for k, v in value.items()], limit=6))
        return None
    return None


def _data_uri(png: bytes | str) -> str:
    import base64

    encoded = png if isinstance(png, str) else base64.b64encode(png).decode("ascii")
    return f"data:image/png;base64,{encoded}"


def _anchor(case_id: str) -> str:
    return "case-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in case_id)


def _status(status: str) -> str:
    return f'<td class="st {html.escape(status)}">{html.escape(status)}</td>'


def ordered_checks(checks: dict) -> list[tuple[str, dict]]:
    """Failed (and errored) checks first, then xfailed, skipped, passed; declared order within."""
    return sorted(checks.items(), key=lambda item: STATUS_RANK.get(item[1].get("status"), 0))


def checks_table(checks: dict) -> str:
    rows = []
    for name, r in ordered_checks(checks):
        figures = [f"{text(k, 40)}: {shown}" for k, v in r.items() if k not in OWN_SECTIONS
                   and (shown := _figure_value(v, k)) is not None]
        reason = r.get("reason") or r.get("error") or ""
        rows.append(f"<tr><td>{text(name, 60)}</td>{_status(r.get('status', '?'))}<td class=num>{number(r.get('max_abs_diff'))}</td>"
                    f"<td class=num>{number(r.get('atol'))}</td><td>{'<br>'.join(figures)}</td>"
                    f"<td><pre>{lines(reason)}</pre></td></tr>")
    return ("<table class=checks><tr><th>check</th><th>status</th><th>max abs diff</th><th>tolerance</th>"
            "<th>figures</th><th>reason</th></tr>" + "".join(rows) + "</table>")


def pixels_section(case_id: str, pictures: dict, as_loaded: dict) -> str:
    """One figure per (photograph, processor path)."""
    if not pictures:
        return ""
    out = ["<h3>Pixel values: original evaluation, transformers processor, difference</h3>"]
    from .plots import pixel_figure

    for photograph, paths in pictures.items():
        for path, record in paths.items():
            figures = as_loaded.get(path) if isinstance(as_loaded.get(path), dict) else {}
            limit = figures.get("grey_levels_limit")
            processor = quote(record.get("processor_class") or figures.get("processor_class") or "?", 80)
            title = f"{quote(case_id, 80)}: {quote(photograph, 60)}, {quote(path, 20)} backend ({processor})"
            png = pixel_figure(record, title, limit)
            caption = (f"{text(photograph, 60)}, {text(path, 20)} backend ({html.escape(processor)}): "
                       + (f"max {number(record.get('max_levels'))} grey levels" if record.get("max_levels") is not None
                          else "shapes differ, no difference map")
                       + (f", limit {number(limit)}" if limit is not None else ""))
            out.append(f'<figure><img class=pixels data-case="{text(case_id)}" data-photograph="{text(photograph, 60)}" '
                       f'data-path="{text(path, 20)}" alt="{caption}" src="{_data_uri(png)}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    return "".join(out)


def parity_section(case_id: str, logits: dict) -> str:
    parity = logits.get("block_parity")
    if not isinstance(parity, dict):
        return ""
    from .plots import parity_chart

    blocks = parity.get("blocks") or []
    said = (f"first block over tolerance: <b>{text(parity['first_block_over'])}</b>" if parity.get("first_block_over")
            else "no block over tolerance")
    said += f"; worst block (relative to its output): {text(parity.get('worst_block') or '-')}; {len(blocks)} blocks"
    if parity.get("unpaired_blocks"):
        said += f"; unpaired: {_figure_value(parity['unpaired_blocks'])}"
    out = [f"<h3>Per-block parity (each block run on the oracle's input to it)</h3><p>{said}</p>"]
    if blocks:
        png = parity_chart(parity, logits.get("atol"), f"{quote(case_id, 80)}: per-block max abs diff vs the oracle")
        out.append(f'<figure><img class=parity data-case="{text(case_id)}" alt="per-block parity of {text(case_id)}" '
                   f'src="{_data_uri(png)}"></figure>')
    if logits.get("divergence"):
        out.append(f"<p>{text(logits['divergence'], 400)}</p>")
    return "".join(out)


def as_loaded_section(as_loaded: dict) -> str:
    paths = [p for p in ("default", "pil") if isinstance(as_loaded.get(p), dict)]
    if not paths:
        return ""
    columns = ("processor_class", "grey_levels", "grey_levels_limit", "max_abs_diff", "atol", "cosine_similarity",
               "min_cosine", "top1_agreement", "top5_agreement")
    rows = "".join(f"<tr><td>{text(p)}</td>" + "".join(
        f"<td class=num>{number(as_loaded[p].get(c), c)}</td>" for c in columns) + "</tr>" for p in paths)
    pipeline = (f"<p>pipeline top-1 on the first photograph: {text(as_loaded['pipeline_top1'])}</p>"
                if as_loaded.get("pipeline_top1") else "")
    return ("<h3>As loaded, per processor backend</h3><table><tr><th>backend</th>"
            + "".join(f"<th>{c.replace('_', ' ')}</th>" for c in columns) + f"</tr>{rows}</table>{pipeline}")


def _verdict_class(verdict: str) -> str:
    return "same" if verdict == "same" else "drift" if verdict.startswith("drift") else "wrong"


def audit_section(audit: dict) -> str:
    if not audit or audit.get("status") == "skipped":
        return ""
    out = [f"<h3>Audit of {text(audit.get('repo') or '?')}</h3>"]
    if audit.get("error"):
        out.append(f"<p class=wrong>not done: {text(audit['error'], 400)}</p>")
    findings = audit.get("findings") or []
    if findings:
        rows = "".join(f"<tr><td>{text(f.get('area'))}</td><td>{text(f.get('subject'))}</td>"
                       f"<td class=\"st {_verdict_class(str(f.get('verdict')))}\">{text(f.get('verdict'))}</td>"
                       f"<td>{text(f.get('detail'), 400)}</td></tr>" for f in findings)
        out.append(f"<table><tr><th>area</th><th>subject</th><th>verdict</th><th>detail</th></tr>{rows}</table>")
    out += [f"<p class=muted>{text(n, 400)}</p>" for n in audit.get("notes") or []]
    return "".join(out)


def case_section(case_id: str, entry: dict, pictures: dict, saved) -> str:
    checks = entry.get("checks") or {}
    logits, as_loaded = checks.get("logits") or {}, checks.get("as_loaded") or {}
    facts = [f"family {text(entry.get('family'))}", f"weights {text(entry.get('weights') or '-')}",
             f"source {text(entry.get('source') or '-', 300)}", f"{number(entry.get('seconds'))} s",
             f"peak {number(entry.get('peak_rss_mb'))} MB"]
    if saved:
        facts.append(f"saved: {text(saved, 300)}")
    if entry.get("weights_reason"):
        facts.append(f"random weights: {text(entry['weights_reason'], 300)}")
    parts = [f'<section id="{_anchor(case_id)}"><h2>{text(case_id)}</h2><p class=muted>{"; ".join(facts)}</p>',
             checks_table(checks), pixels_section(case_id, pictures, as_loaded),
             parity_section(case_id, logits), as_loaded_section(as_loaded), audit_section(checks.get("audit") or {})]
    if not pictures and not isinstance(logits.get("block_parity"), dict):
        parts.append("<p class=muted>No pixel images (the as-loaded check did not compare any) and no per-block parity "
                     "(recorded for streamed cases and failed logits checks) for this case.</p>")
    return "".join(parts) + "</section>"


def _failed(entry: dict) -> bool:
    return any(r.get("status") in ("failed", "error") for r in (entry.get("checks") or {}).values())


def page(cases: dict, pictures: dict, saved: dict | None = None, versions: dict | None = None) -> str:
    """The whole page, as ASCII text (anything else as character references)."""
    saved = saved or {}
    order = sorted(cases, key=lambda c: (not _failed(cases[c]), c))  # cases with a failed check first
    check_names = list(dict.fromkeys(n for c in order for n in (cases[c].get("checks") or {})))
    head = "".join(f"<th>{text(n, 40)}</th>" for n in check_names)
    rows = []
    for case_id in order:
        checks = cases[case_id].get("checks") or {}
        cells = "".join(_status(checks[n]["status"]) if n in checks else "<td>-</td>" for n in check_names)
        rows.append(f'<tr><td><a href="#{_anchor(case_id)}">{text(case_id)}</a></td>{cells}</tr>')
    stack = ", ".join(f"{text(k, 40)} {text(v, 40)}" for k, v in (versions or {}).items())
    failed = sum(_failed(cases[c]) for c in order)
    body = (f"<h1>vision-port-harness: {len(order)} cases, {failed} with a failed check</h1>"
            f"<p class=muted>written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {stack}</p>"
            f"<table><tr><th>case</th>{head}</tr>{''.join(rows)}</table>"
            + "".join(case_section(c, cases[c], pictures.get(c) or {}, saved.get(c)) for c in order))
    document = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>vision-port-harness report</title>"
                f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
    return document.encode("ascii", "xmlcharrefreplace").decode("ascii")


def write(path: Path, cases: dict, pictures: dict, saved: dict | None = None, versions: dict | None = None) -> dict:
    """Build the page and write it whole or not at all (`atomic.write_text`); its size and seconds."""
    from .atomic import write_text

    started = time.perf_counter()
    document = page(cases, pictures, saved, versions)
    write_text(Path(path), document)
    return {"bytes": len(document), "seconds": round(time.perf_counter() - started, 3)}
