"""The plan's HTML report (Pareto plot embedded as base64 PNG) and its pareto.json."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Sequence

from fitplan.jsonio import atomic_write_text, save_versioned


def pareto_plot_png(all_points: Sequence[tuple[float, float]], plan: Any) -> bytes:
    """Predicted accuracy vs latency: all trials (grey), predicted front (blue), measured latency of
    verified candidates (red, joined to their prediction), the chosen plan (star), the budget line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    if all_points:
        xs, ys = zip(*all_points)
        ax.scatter(xs, ys, s=4, c="0.75", label="trials (predicted)", rasterized=True)
    front = [(e["predicted"]["latency_ms"], e["predicted"]["accuracy"]) for e in plan.pareto]
    if front:
        fx, fy = zip(*sorted(front))
        ax.plot(fx, fy, "o-", ms=3, c="tab:blue", label="Pareto front (predicted)")
    meas = [(e["predicted"]["latency_ms"], e["measured"]["latency_ms"]["value"], e["predicted"]["accuracy"])
            for e in plan.pareto if (e.get("measured") or {}).get("latency_ms", {}).get("value") is not None]
    for i, (p, m, a) in enumerate(meas):
        ax.plot([p, m], [a, a], c="tab:red", lw=0.8)
        ax.scatter([m], [a], marker="x", c="tab:red", label="measured latency" if i == 0 else None)
    lat = plan.measured.get("latency_ms", {}).get("value") if isinstance(plan.measured.get("latency_ms"), dict) else None
    ax.scatter([lat if lat is not None else plan.predicted["latency_ms"]], [plan.predicted["accuracy"]],
               marker="*", s=200, c="gold", edgecolors="k", zorder=5, label="chosen")
    if plan.budget.get("latency_ms"):
        ax.axvline(plan.budget["latency_ms"], ls="--", c="k", label=f"budget {plan.budget['latency_ms']:g} ms")
    ax.set_xlabel(f"latency per batch of {plan.budget.get('batch_size', 1)} (ms)")
    ax.set_ylabel("accuracy (predicted)")
    ax.set_title(f"{plan.space.get('space')} on {plan.device.get('name')}")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(plan: Any, out_dir: Path, all_points: Sequence[tuple[float, float]]) -> dict[str, str]:
    """Write ``report.html``, ``summary.txt`` and ``pareto.json``; return their paths."""
    out_dir = Path(out_dir)
    save_versioned(out_dir / "pareto.json", "fitplan-pareto", 1, {"front": plan.pareto})
    png = base64.b64encode(pareto_plot_png(all_points, plan)).decode()
    rows = []
    for i, e in enumerate(plan.pareto[:50]):
        m = (e.get("measured") or {}).get("latency_ms") or {}
        mv = f"{m['value']:.3f}" if m.get("value") is not None else "-"
        rows.append(f"<tr><td>{i}</td><td>{e['predicted']['accuracy']:.4f}</td>"
                    f"<td>{e['predicted']['latency_ms']:.3f}</td><td>{mv}</td>"
                    f"<td>{e['predicted'].get('size_mb', 0):.3f}</td><td>{'yes' if e.get('chosen') else ''}</td></tr>")
    meas = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v.get('value') if isinstance(v, dict) else v))}"
                   f" &mdash; {html.escape(str(v.get('method', '')) if isinstance(v, dict) else '')}</li>"
                   for k, v in plan.measured.items())
    pred = "".join(f"<li><b>{html.escape(k)}</b>: {v:.4g} &mdash; {html.escape(plan.predicted_by.get(k, ''))}</li>"
                   for k, v in plan.predicted.items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in plan.notes)
    checks = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in plan.checks.items())
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>fitplan report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:2px 8px;text-align:right}}</style>
</head><body><h1>fitplan plan: {html.escape(str(plan.space.get('space')))} on {html.escape(str(plan.device.get('name')))}</h1>
<p>Budget: {html.escape(str({k: v for k, v in plan.budget.items() if v is not None}))}</p>
<img alt="Pareto plot" src="data:image/png;base64,{png}"/>
<h2>Predicted</h2><ul>{pred}</ul><h2>Measured</h2><ul>{meas or '<li>nothing measured</li>'}</ul>
<h2>Checks</h2><ul>{checks}</ul><h2>Notes</h2><ul>{notes}</ul>
<h2>Pareto front (predicted, best accuracy first)</h2>
<table><tr><th>#</th><th>accuracy</th><th>latency ms (pred)</th><th>latency ms (measured)</th><th>size MB</th><th>chosen</th></tr>
{''.join(rows)}</table>
<h2>Chosen config</h2><pre>{html.escape(str(plan.config))}</pre>
</body></html>"""
    atomic_write_text(out_dir / "report.html", doc)
    atomic_write_text(out_dir / "summary.txt", plan.summary() + "\n")
    return {"report_html": str(out_dir / "report.html"), "summary_txt": str(out_dir / "summary.txt"),
            "pareto_json": str(out_dir / "pareto.json")}
