"""The report's two pages as HTML text: the index (summary and the table of every image)
and one page per image. Plain HTML, inline CSS and a few lines of JavaScript; every
reference is a relative path inside the report folder (no server, no network)."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Optional, Sequence

from dsb.report.fates import FATE_NAMES, legend

#: Folders inside the report, and the per-image file names (relative to the report root).
IMAGES_DIR = "images"
THUMBS_DIR = "thumbs"
CURVES = "training_curves.png"

_CSS = """
:root{--fg:#1d1d1f;--mut:#667;--line:#e2e2e6;--hi:#f3f5f9;--acc:#2f6fd6}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);margin:0 auto;padding:14px 22px 40px;max-width:1700px}
h1{font-size:20px;margin:0 0 2px}h2{font-size:16px;margin:22px 0 8px}
a{color:var(--acc);text-decoration:none}a:hover{text-decoration:underline}
.muted{color:var(--mut)}.id{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:3px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--hi);font-weight:600}td.l,th.l{text-align:left}
.cards{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
.big{font-size:30px;font-weight:650;line-height:1.1}
.bar{display:inline-block;height:9px;background:var(--acc);vertical-align:middle;border-radius:2px}
.key{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:5px;border:1px solid #0003}
.legend td{white-space:normal;text-align:left}
.curves{max-width:100%;height:auto}
.nowrap{white-space:nowrap;margin-right:10px}
details.fates{margin:14px 0}details.fates summary{cursor:pointer}
"""

_INDEX_CSS = """
#images thead th{position:sticky;top:0;z-index:1}
#images th[data-sort]{cursor:pointer;user-select:none}#images th[data-sort]:hover{background:#e4e9f2}
#images th[aria-sort=ascending]::after{content:" \\25B2"}#images th[aria-sort=descending]::after{content:" \\25BC"}
#images tbody tr:hover{background:#f7f9fc}
td.thumb{padding:2px 4px}td.thumb img{display:block;width:auto;height:auto;max-width:72px;max-height:72px}
.controls{margin:6px 0 8px;display:flex;gap:16px;align-items:center}
"""

_INDEX_JS = """
const table = document.getElementById('images'), body = table.tBodies[0];
for (const th of table.querySelectorAll('th[data-sort]')) th.addEventListener('click', () => {
  const col = th.cellIndex, num = th.dataset.sort === 'num';
  const dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
  for (const other of table.querySelectorAll('th[aria-sort]')) other.removeAttribute('aria-sort');
  th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
  const key = row => { const cell = row.cells[col], v = cell.dataset.v ?? cell.textContent; return num ? parseFloat(v) : v; };
  const rows = [...body.rows].sort((a, b) => { const x = key(a), y = key(b); return dir * (num ? x - y : x.localeCompare(y)); });
  body.append(...rows);
});
const typeFilter = document.getElementById('type-filter'), shown = document.getElementById('shown');
typeFilter.addEventListener('change', () => {
  let n = 0;
  for (const row of body.rows) { row.hidden = typeFilter.value !== '' && row.dataset.type !== typeFilter.value; n += !row.hidden; }
  shown.textContent = n;
});
"""

_IMAGE_CSS = """
.nav{display:flex;gap:18px;align-items:baseline;margin-bottom:8px}
.controls{display:flex;gap:10px;align-items:center;margin:8px 0;flex-wrap:wrap}
.controls button{font:inherit;padding:2px 10px;border:1px solid var(--line);background:#fff;border-radius:4px;cursor:pointer}
.controls button.on{background:var(--acc);color:#fff;border-color:var(--acc)}
.pair{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:12px}
figure{margin:0;min-width:0}figcaption{margin-bottom:4px}
.view{overflow:auto;max-height:82vh;border:1px solid var(--line);background:#111}
.stack{position:relative;line-height:0;width:100%;cursor:zoom-in}
.stack img{display:block;width:100%;height:auto}
.stack img.layer{position:absolute;left:0;top:0;image-rendering:pixelated}
.zoomed .stack img{image-rendering:pixelated}.zoomed .stack{cursor:zoom-out}
.plain .layer{display:none}
#info{min-height:1.5em;margin:6px 0}
"""

_IMAGE_JS = """
const W = SIZE[1], views = [...document.querySelectorAll('.view')], ZOOMS = [0, 1, 2, 4];
let zoom = 0;
function setZoom(z) {
  zoom = z;
  for (const v of views) { v.querySelector('.stack').style.width = z ? (W * z) + 'px' : '100%'; v.classList.toggle('zoomed', z > 0); }
  for (const b of document.querySelectorAll('[data-zoom]')) b.classList.toggle('on', +b.dataset.zoom === z);
}
for (const b of document.querySelectorAll('[data-zoom]')) b.addEventListener('click', () => setZoom(+b.dataset.zoom));
for (const v of views) {
  const stack = v.querySelector('.stack'), side = v.dataset.side;
  stack.addEventListener('click', () => setZoom(ZOOMS[(ZOOMS.indexOf(zoom) + 1) % ZOOMS.length]));
  v.addEventListener('scroll', () => { for (const o of views) if (o !== v) { o.scrollLeft = v.scrollLeft; o.scrollTop = v.scrollTop; } });
  stack.addEventListener('mousemove', e => {
    const r = stack.getBoundingClientRect(), x = (e.clientX - r.left) * W / r.width, y = (e.clientY - r.top) * SIZE[0] / r.height;
    let best = null, dist = Infinity;
    for (const n of NUCLEI[side]) if (y >= n[0] && x >= n[1] && y < n[2] && x < n[3]) {
      const d = (y - (n[0] + n[2]) / 2) ** 2 + (x - (n[1] + n[3]) / 2) ** 2; if (d < dist) { dist = d; best = n; } }
    document.getElementById('info').textContent = best ? `${side} nucleus ${best[4]}: ${FATES[best[5]]}, best IoU ${best[6].toFixed(2)}, ${best[7]} px` : '';
  });
}
document.getElementById('outlines').addEventListener('change', e => document.body.classList.toggle('plain', !e.target.checked));
"""


def _script_json(value) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def _page(title: str, css: str, body: str, script: str = "") -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{_CSS}{css}</style></head>\n<body>\n{body}\n"
        + (f"<script>{script}</script>\n" if script else "") + "</body></html>\n"
    )


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def legend_table(unfolded: bool = False) -> str:
    """The fates' colours in one line, unfolding to their rules."""
    keys = " ".join(f"<span class=nowrap><span class=key style=\"background:{colour}\"></span>{name}</span>"
                    for name, colour, _, _ in legend())
    rows = "".join(
        f"<tr><td class=l><span class=key style=\"background:{colour}\"></span><b>{name}</b></td>"
        f"<td class=l>{escape(true_help) or '-'}</td><td class=l>{escape(pred_help) or '-'}</td></tr>"
        for name, colour, true_help, pred_help in legend()
    )
    return (f"<details class=fates{' open' if unfolded else ''}><summary><b>Fates of nuclei at IoU 0.5</b>: {keys}</summary>"
            "<table class=legend><thead><tr><th class=l>fate</th><th class=l>true nucleus</th>"
            f"<th class=l>predicted nucleus</th></tr></thead><tbody>{rows}</tbody></table>"
            "<p class=muted>Matched outlines go from pale green (IoU just above 0.5) to deep green (IoU near 1). "
            "Error counts: missed and split count true nuclei, merged and spurious count predictions "
            "(as <code>dsb evaluate</code>); loose counts true nuclei.</p></details>")


_KIND_COLUMNS = (("n_true", "true"), ("n_pred", "pred"), ("missed", "missed"), ("merged", "merged"),
                 ("split", "split"), ("spurious", "spurious"), ("small_missed_rate", "small missed"),
                 ("area_ratio", "area pred/true"))
#: Image-table columns: (key, header, kind, tooltip); kind "num" or "str" sorts, "" does not.
_TABLE_COLUMNS = (
    ("thumb", "", "", ""), ("image_id", "image", "str", "ImageId"), ("image_type", "type", "str", ""),
    ("group", "group", "str", "experiment group"), ("fold", "fold", "num", ""),
    ("size", "size", "num", "height x width (sorts by pixels)"), ("n_true", "true", "num", "true nuclei"),
    ("n_pred", "pred", "num", "predicted nuclei"), ("score", "score", "num", "mean over IoU 0.50-0.95 of TP/(TP+FP+FN)"),
    ("ap50", "AP@0.5", "num", "TP/(TP+FP+FN) at IoU > 0.5"), ("ap75", "AP@0.75", "num", "TP/(TP+FP+FN) at IoU > 0.75"),
    ("missed", "missed", "num", "true nuclei covered at most half by predictions"),
    ("merged", "merged", "num", "predictions covering more than half of two or more true nuclei"),
    ("split", "split", "num", "true nuclei covered more than half by predictions together, none alone"),
    ("spurious", "spurious", "num", "predictions overlapping no true nucleus"),
    ("loose", "loose", "num", "true nuclei found but with IoU at most 0.5"),
)


def index_page(title: str, source: str, summary: dict, rows: Sequence[dict], totals: dict,
               has_curves: bool) -> str:
    """The report's ``index.html``: ``summary`` as :func:`dsb.report.build.summarise`
    makes it, ``rows`` (one per image, worst score first) as the renderer returns them,
    ``totals`` the TP/FP/FN sums per threshold."""
    lo, hi = summary["interval"]
    interval = "" if math.isnan(lo) else (f"95% interval {lo:.4f}-{hi:.4f} (bootstrap over {summary['n_groups']} "
                                    f"{summary['interval_unit']})")
    parts = [f"<h1>{escape(title)}</h1><p class=muted>{escape(source)}</p>",
             f"<div class=cards><div><div class=big id=map>{summary['map']:.4f}</div>"
             f"<div>mAP over <b id=n-images>{summary['n_images']}</b> images</div>"
             f"<div class=muted id=interval>{escape(interval)}</div></div>"]

    kinds = summary["error_kinds_per_type"]
    head = "".join(f"<th>{h}</th>" for _, h in _KIND_COLUMNS)
    body = []
    for image_type, values in summary["per_type"].items():
        cells = "".join(f"<td>{_fmt(kinds.get(image_type, {}).get(k))}</td>" for k, _ in _KIND_COLUMNS)
        body.append(f"<tr data-type=\"{escape(image_type)}\"><td class=l>{escape(image_type)}</td>"
                    f"<td>{values['n_images']}</td><td>{values['map']:.4f}</td>{cells}</tr>")
    cells = "".join(f"<td>{_fmt(summary['error_kinds'].get(k))}</td>" for k, _ in _KIND_COLUMNS)
    body.append(f"<tr><td class=l><b>all</b></td><td>{summary['n_images']}</td><td><b>{summary['map']:.4f}</b></td>{cells}</tr>")
    parts.append("<div><table id=per-type><thead><tr><th class=l>image type</th><th>images</th><th>mAP</th>"
                 f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
                 "<p class=muted>Error kinds at IoU 0.5 (small: under 100 px; area: median predicted/true area of "
                 "matched nuclei).</p>")
    if summary.get("per_fold"):
        fold_rows = "".join(f"<tr><td>{escape(k)}</td><td>{v['n_images']}</td><td>{v['map']:.4f}</td></tr>"
                            for k, v in summary["per_fold"].items())
        parts.append("<table id=per-fold><thead><tr><th>fold</th><th>images</th><th>mAP</th></tr></thead>"
                     f"<tbody>{fold_rows}</tbody></table>")
    parts.append("</div></div>")

    thr_rows = "".join(
        f"<tr><td>{t}</td><td>{v:.4f}</td><td class=l><span class=bar style=\"width:{120 * v:.0f}px\"></span></td>"
        f"<td>{tp}</td><td>{fp}</td><td>{fn}</td></tr>"
        for (t, v), tp, fp, fn in zip(summary["per_threshold"].items(), totals["tp"], totals["fp"], totals["fn"]))
    parts.append("<h2>Per IoU threshold</h2><div class=cards><table id=per-threshold><thead><tr><th>IoU &gt;</th>"
                 "<th>TP/(TP+FP+FN)</th><th></th><th>TP</th><th>FP</th><th>FN</th></tr></thead>"
                 f"<tbody>{thr_rows}</tbody></table>"
                 + (f"<img class=curves src=\"{CURVES}\" alt=\"training curves\" width=800>" if has_curves else "")
                 + "</div>")
    parts.append(legend_table())

    show = [c for c in _TABLE_COLUMNS if c[0] not in ("group", "fold") or any(r.get(c[0]) not in (None, "") for r in rows)]
    types = sorted({r["image_type"] for r in rows})
    options = "".join(f"<option value=\"{escape(t)}\">{escape(t)} ({sum(r['image_type'] == t for r in rows)})</option>"
                      for t in types)
    parts.append(f"<h2>Images</h2><div class=controls><label>image type <select id=type-filter>"
                 f"<option value=\"\">all ({len(rows)})</option>{options}</select></label>"
                 f"<span><b id=shown>{len(rows)}</b> shown; click a header to sort, a picture to open the image</span></div>")
    head = "".join(_header_cell(*column) for column in show)
    body = [_index_row(r, show) for r in rows]
    parts.append(f"<table id=images><thead><tr>{head}</tr></thead><tbody>\n{''.join(body)}</tbody></table>")
    return _page(title, _INDEX_CSS, "\n".join(parts), _INDEX_JS)


def _header_cell(key: str, header: str, kind: str, tip: str) -> str:
    attrs = " class=l" if kind == "str" else ""
    if kind:
        attrs += f" data-sort={kind}"
    if key == "score":  # the rows come sorted by score, worst first
        attrs += " aria-sort=ascending"
    if tip:
        attrs += f' title="{escape(tip)}"'
    return f"<th{attrs}>{header}</th>"


def _index_row(r: dict, columns) -> str:
    page = f"{IMAGES_DIR}/{r['slug']}.html"
    cells = []
    for key, _, _, _ in columns:
        if key == "thumb":
            tw, th = r["thumb_size"]
            cells.append(f"<td class=thumb><a href=\"{page}\"><img loading=lazy src=\"{THUMBS_DIR}/{r['slug']}.png\" "
                         f"width={tw} height={th} alt=\"\"></a></td>")
        elif key == "image_id":
            cells.append(f"<td class=\"l id\" data-v=\"{escape(r['image_id'])}\" title=\"{escape(r['image_id'])}\">"
                         f"<a href=\"{page}\">{escape(r['image_id'][:16])}</a></td>")
        elif key == "size":
            h, w = r["height"], r["width"]
            cells.append(f"<td data-v={h * w}>{h}&times;{w}</td>")
        elif key in ("image_type", "group"):
            cells.append(f"<td class=l>{escape(str(r.get(key) or ''))}</td>")
        elif key == "fold":
            cells.append(f"<td data-v={-1 if r.get('fold') is None else r['fold']}>{_fmt(r.get('fold'))}</td>")
        else:
            value = r[key]
            cells.append(f"<td data-v={value!r}>{_fmt(value)}</td>" if isinstance(value, float) else f"<td>{value}</td>")
    return f"<tr data-type=\"{escape(r['image_type'])}\" data-id=\"{escape(r['image_id'])}\">{''.join(cells)}</tr>\n"


def image_page(row: dict, nuclei: dict, per_threshold: Sequence[dict], prev: Optional[dict],
               next_: Optional[dict], rank: int, n_images: int, title: str) -> str:
    """``images/<slug>.html``: the image with its true and predicted outlines side by side
    (zoomable, scroll-synchronised; hovering names a nucleus's fate and IoU), its counts
    by fate and its per-threshold scores."""
    slug, h, w = row["slug"], row["height"], row["width"]
    nav = ["<a href=\"../index.html\">&larr; all images</a>"]
    if prev is not None:
        nav.append(f"<a href=\"{prev['slug']}.html\" id=prev>&lsaquo; worse</a>")
    if next_ is not None:
        nav.append(f"<a href=\"{next_['slug']}.html\" id=next>better &rsaquo;</a>")
    nav.append(f"<span class=muted>{rank} of {n_images} by score, worst first &middot; {escape(title)}</span>")
    facts = [f"type <b>{escape(row['image_type'])}</b>", f"{h}&times;{w} px"]
    if row.get("group"):
        facts.append(f"group <b>{escape(str(row['group']))}</b>")
    if row.get("fold") is not None:
        facts.append(f"fold {row['fold']}")
    facts.append(f"score <b id=score>{row['score']:.4f}</b>")

    def caption(side: str) -> str:
        counts = row["fates"][side]
        parts = ", ".join(f"<span class=key style=\"background:{colour}\"></span>{counts.get(name, 0)} {name}"
                          for name, colour, *_ in legend() if counts.get(name))
        n = row["n_true"] if side == "truth" else row["n_pred"]
        return f"<b>{'truth' if side == 'truth' else 'prediction'}</b> ({n} nuclei): {parts or 'none'}"

    def view(side: str) -> str:
        return (f"<figure><figcaption>{caption(side)}</figcaption><div class=view data-side={side}><div class=stack>"
                f"<img src=\"{slug}.png\" width={w} height={h} alt=\"image\">"
                f"<img class=layer id={side}-layer src=\"{slug}.{side}.png\" width={w} height={h} alt=\"{side} outlines\">"
                "</div></div></figure>")

    thr = "".join(f"<tr><td>{r['t']:.2f}</td><td>{r['tp']}</td><td>{r['fp']}</td><td>{r['fn']}</td>"
                  f"<td>{r['precision']:.4f}</td><td class=l><span class=bar style=\"width:{100 * r['precision']:.0f}px\">"
                  "</span></td></tr>" for r in per_threshold)
    zoom = "".join(f"<button data-zoom={z}{' class=on' if z == 0 else ''}>{label}</button>"
                   for z, label in ((0, "fit"), (1, "1:1"), (2, "2&times;"), (4, "4&times;")))
    body = (f"<div class=nav>{''.join(nav)}</div><h1 class=id>{escape(row['image_id'])}</h1>"
            f"<p>{' &middot; '.join(facts)}</p>"
            f"<div class=controls>zoom {zoom}<label><input type=checkbox id=outlines checked> outlines</label>"
            "<span class=muted>click the image to zoom in; hover a nucleus for its fate</span></div>"
            f"<div class=pair>{view('truth')}{view('pred')}</div><div id=info class=muted></div>"
            "<div class=cards><div><h2>Per IoU threshold</h2><table id=thresholds><thead><tr><th>IoU &gt;</th><th>TP</th>"
            f"<th>FP</th><th>FN</th><th>TP/(TP+FP+FN)</th><th></th></tr></thead><tbody>{thr}</tbody></table></div>"
            f"<div><h2>Fates</h2>{legend_table(unfolded=True)}</div></div>")
    script = (f"const SIZE = [{h}, {w}], NUCLEI = {_script_json(nuclei)}, "
              f"FATES = {_script_json(FATE_NAMES)};\n{_IMAGE_JS}")
    return _page(f"{row['image_id']} - {title}", _IMAGE_CSS, body, script)
