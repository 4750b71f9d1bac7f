"""The HTML pages housebox writes, from the JSON it writes beside them (never from live objects), so that
whoever records the data (`sample`, `evaluate`, `check`, the web page) rewrites the page the same way."""

from __future__ import annotations

import html
from pathlib import Path


def write_sample_page(out: Path, report: dict) -> Path:
    """`index.html` of a sample folder, from its report.json: the samples to listen to, their originality
    verdicts (when checked) and the spectrograms."""
    s = report["settings"]
    checked = report.get("originality", {}).get("samples", {})
    rows = "\n".join(
        f'<li><p>{html.escape(name)} {_verdict_html(checked.get(name))}</p>'
        f'<audio controls preload="none" src="{html.escape(name)}"></audio></li>'
        for name in report["samples"]
    )
    verdict = _originality_table(report["originality"]) if checked else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>housebox samples</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}} li{{margin:1em 0}} img{{max-width:100%}}
.verdict{{padding:.1em .5em;border-radius:.6em;color:#fff;font-size:.9em}} .original{{background:#2a7d3b}}
.suspicious{{background:#b8860b}} .copied{{background:#b22222}} td,th{{padding:.2em .6em;text-align:left}}</style>
</head><body>
<h1>housebox samples</h1>
<p>artist <b>{html.escape(str(s['artist']))}</b>, genres <b>{html.escape(', '.join(s['genres']) or 'unknown')}</b>,
{report['seconds']} s each, seed {report['seed']}, temperature {s['temperature']}, decoded from level {report['decoded_from_level']}.</p>
{verdict}
<ol>
{rows}
</ol>
<img src="spectrogram.png" alt="spectrograms">
</body></html>
"""
    path = out / "index.html"
    path.write_text(page)
    return path


def _verdict_html(result: dict | None) -> str:
    """A coloured originality badge for one sample, naming the detectors that fired (empty when not checked)."""
    if not result:
        return ""
    verdict = html.escape(result["verdict"])
    fired = result.get("fired") or {}
    why = f" ({html.escape(', '.join(fired))})" if fired else ""
    return f'<span class="verdict {verdict}" title="originality check">{verdict}{why}</span>'


def _detector_cell(result: dict, detector: str, key: str) -> str:
    """One detector's figure for one sample, or `not checked` and why (never a number it did not measure)."""
    status = (result.get("detectors") or {}).get(detector, "")
    if result.get(key) is None:
        return f'<span title="{html.escape(status)}">not checked</span>'
    return f'<span title="{html.escape(status)}">{result[key]:.2f} s</span>'


def _code_cell(result: dict) -> str:
    return _detector_cell(result, "codes", "longest_code_seconds")


def code_passage_text(r: dict) -> str:
    """The longest code passage of a result, in words ('' without one)."""
    runs = r.get("code_runs") or []
    if not runs:
        return ""
    run = max(runs, key=lambda c: c["seconds"])
    slips = f", {run['agreement']:.0%} of the codes equal" if run.get("agreement", 1.0) < 1 else ""
    return (f"codes of {run['artist']} ({run['track_id']}) at {run['track_start']:.1f} s, from "
            f"{run['sample_start']:.1f} s here, level {run['level']}, {run['seconds']:.1f} s{slips}")


def _best_match(r: dict) -> str:
    """The evidence behind a verdict, in words: the melody match when only the melody detector fired, the
    code passage when only the codes detector did."""
    fired = r.get("fired") or {}
    melody = r.get("melody_matches") or []
    if "codes" in fired and "audio" not in fired and "melody" not in fired and r.get("code_runs"):
        return code_passage_text(r)
    if melody and "melody" in fired and "audio" not in fired:
        m = melody[0]
        return (f"melody of {m['artist']} ({m['track_id']}) at {m['track_start']:.1f} s, from {m['sample_start']:.1f} s "
                f"here, {m['semitones']:+d} semitones, {m['tempo']:.2f}x tempo, {m['seconds']:.1f} s")
    if r["matches"]:
        m = r["matches"][0]
        return f"{m['artist']} ({m['track_id']}) at {m['track_start']:.1f} s, from {m['sample_start']:.1f} s here"
    return ""


def _originality_table(originality: dict) -> str:
    """Per sample: verdict, seconds matching the training set, longest melody passage and code passage
    beyond what training tracks share, best match."""
    rows = []
    for name, r in originality["samples"].items():
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_verdict_html(r)}</td><td>{r['matched_seconds']:.1f} s</td>"
                    f"<td>{r['longest_match_seconds']:.1f} s</td>"
                    f"<td>{_detector_cell(r, 'melody', 'longest_melody_seconds')}</td><td>{_code_cell(r)}</td>"
                    f"<td>{html.escape(_best_match(r))}</td></tr>")
    return (f"<h2>Originality</h2><p>checked against {html.escape(str(originality.get('against', '')))}</p>"
            "<table><tr><th>sample</th><th>verdict</th><th>matched</th><th>longest passage</th><th>melody</th>"
            "<th>codes</th><th>best match</th></tr>" + "".join(rows) + "</table>")
