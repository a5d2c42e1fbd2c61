"""The per-sample table of report.html: one row per sample, sortable and filterable in place.

The rows are plain server-rendered HTML (readable without JavaScript, searchable with the
browser's find); a short inlined script sorts on a header click (numbers numerically, missing
values last) and filters by verdict and by how the sample was decided. Every cell that sorts
numerically carries its exact value in `data-v`, so sorting never parses the rounded text.
Thumbnails are tiny grey or colour PNGs written here with zlib (a 28x28 MNIST digit is ~0.4 kB
as base64), so 1,000 rows stay well under 3 MB and the page still needs no network.
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from typing import Sequence

import numpy as np

from verifier.batch.report_figures import VERDICTS, image_shape, picture
from verifier.batch.report_format import (DASH, decided_group, distortion_state, misclassified, number, sample_time,
                                          seconds)

THUMB_MAX = 32  # pixels per side; larger images are averaged down in blocks

TABLE_CSS = """.controls{margin:.5em 0}.controls label{margin-right:1.5em}
.scroll{max-height:75vh;overflow:auto;border:1px solid #dee2e6}
#sample-table{font-size:13px;width:100%}#sample-table td{white-space:nowrap}
#sample-table thead th{position:sticky;top:0;background:#f8f9fa;z-index:1}
#sample-table th button{font:inherit;font-weight:bold;border:0;background:none;cursor:pointer;padding:0;text-align:left}
#sample-table th[aria-sort=ascending] button::after{content:" ▲"}
#sample-table th[aria-sort=descending] button::after{content:" ▼"}
#sample-table img.thumb{width:28px;height:28px;image-rendering:pixelated;display:block}
.tag{font-size:11px;background:#ffe3e3;color:#c92a2a;border-radius:3px;padding:0 4px;margin-left:4px}"""

_SCRIPT = """(function () {
  var table = document.getElementById("sample-table"), body = table.tBodies[0];
  var verdict = document.getElementById("filter-verdict"), decided = document.getElementById("filter-decided");
  var shown = document.getElementById("shown-count");
  function key(row, i, numeric) {
    var cell = row.cells[i], v = cell.getAttribute("data-v");
    if (numeric) { return v === null || v === "" ? null : Number(v); }
    return v === null ? cell.textContent : v;
  }
  function sortBy(th) {
    var i = th.cellIndex, numeric = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      if (h.hasAttribute("aria-sort")) { h.setAttribute("aria-sort", "none"); }
    });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, i, numeric), y = key(b, i, numeric);
      if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
      return dir * (numeric ? x - y : String(x).localeCompare(String(y)));
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function has(row, name, value) {  // the attribute lists values separated by "|"
    return !value || ("|" + row.getAttribute(name) + "|").indexOf("|" + value + "|") >= 0;
  }
  function filter() {
    var n = 0;
    Array.prototype.forEach.call(body.rows, function (r) {
      var ok = has(r, "data-verdict", verdict.value) && has(r, "data-decided", decided.value);
      r.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = String(n);
  }
  table.tHead.addEventListener("click", function (e) {
    var th = e.target.closest("th");
    if (th && th.hasAttribute("aria-sort")) { sortBy(th); }
  });
  verdict.addEventListener("change", filter);
  decided.addEventListener("change", filter);
  filter();
})();"""


def png(pixels: np.ndarray) -> bytes:
    """An 8-bit grey (H, W) or RGB (H, W, 3) PNG; values already in 0..255."""
    a = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8))
    height, width = a.shape[:2]
    colour = 2 if a.ndim == 3 else 0
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def thumbnails(rows: Sequence[dict], images, input_shape) -> dict[int, str]:
    """Sample index -> base64 PNG of the clean sample ({} if the input is not image-like).
    Values are mapped from [min(0, lowest), max(1, highest)] over these samples to 0..255."""
    shape = image_shape(input_shape)
    if shape is None or not rows:
        return {}
    chosen = np.stack([np.asarray(images[r["index"]], dtype=np.float64).ravel() for r in rows])
    lo, hi = min(0.0, float(chosen.min())), max(1.0, float(chosen.max()))
    out = {}
    for r, flat in zip(rows, chosen):
        image = picture((flat - lo) / (hi - lo), shape)
        step = math.ceil(max(image.shape[:2]) / THUMB_MAX)
        if step > 1:  # block means: keeps a large image's thumbnail small
            h, w = (image.shape[0] // step) * step, (image.shape[1] // step) * step
            image = image[:h, :w].reshape(h // step, step, w // step, step, *image.shape[2:]).mean(axis=(1, 3))
        out[r["index"]] = base64.b64encode(png(np.round(np.clip(image, 0, 1) * 255))).decode()
    return out


def _columns(distortion: bool, radii: Sequence[float] | None = None) -> list[tuple[str, str | None, str]]:
    """(title, sort type or None, tooltip); `radii`: a verdict column per radius instead of one
    verdict with its margins."""
    cols = [("#", "num", "sample index in the data"), ("image", None, "the clean sample"),
            ("label", "num", "true label"), ("prediction", "num", "the network's class for the clean sample")]
    if radii:
        cols += [(f"eps={number(eps)}", "text", f"robust, adversarial or unknown at eps = {number(eps)}; "
                  "hover for how it was decided") for eps in radii]
    else:
        cols += [("verdict", "text", "robust, adversarial or unknown at this eps"),
                 ("decided by", "text", "the stage that decided (clean: misclassified without perturbation)"),
                 ("margin lower", "num", "proven lower bound of the least margin over the ball"),
                 ("margin upper", "num", "margin of the best point found in the ball")]
    if distortion:
        cols += [("distortion lower", "num", "certified lower bound of the minimum distortion"),
                 ("distortion upper", "num", "distance of the best adversarial example found"),
                 ("distortion", "text", "proven minimal when the interval is closed, else best found")]
    cols += [("verify s", "num", "seconds of verification" + (", all radii" if radii else ""))]
    if distortion:
        cols += [("distortion s", "num", "seconds of the minimum-distortion search")]
    cols += [("total s", "num", "seconds this sample took (verification + distortion)")]
    return cols


def _num(value, text: str | None = None, extra: str = "") -> str:
    """A numeric cell: exact value in data-v (absent when missing), `text` or 4 digits shown."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f'<td class="n">{DASH}{extra}</td>'
    shown = number(value) if text is None else text
    value = int(value) if isinstance(value, (int, np.integer)) else float(value)
    return f'<td class="n" data-v="{value!r}">{html.escape(shown)}{extra}</td>'


def _row(r: dict, thumb: str | None, distortion: bool, radii: Sequence[float] | None = None) -> str:
    e = html.escape
    group = decided_group(r)
    how = r.get("decided_by") or DASH
    how_cell = (f'<td title="{e(how)}">error</td>' if group == "error" else f"<td>{e(how)}</td>")
    image = (f'<td><img class="thumb" alt="sample {r["index"]}" src="data:image/png;base64,{thumb}"></td>'
             if thumb else f"<td>{DASH}</td>")
    tag = '<span class="tag">misclassified</span>' if misclassified(r) else ""
    cells = [_num(r["index"], str(r["index"])), image, _num(r["label"], str(r["label"])),
             _num(r.get("prediction"), None if r.get("prediction") is None else str(r["prediction"]), tag)]
    verdicts, groups = [r["verdict"]], [group]
    if radii:  # a line of report_radii.sample_rows: the verdict at each radius
        verdicts = [r["verdicts"].get(eps, DASH) for eps in radii]
        groups = [decided_group({"decided_by": r["decided"].get(eps)}) for eps in radii]
        cells += [f'<td class="{e(v)}" title="{e(str(r["decided"].get(eps) or DASH))}">{e(v)}</td>'
                  for eps, v in zip(radii, verdicts)]
    else:
        cells += [f'<td class="{e(r["verdict"])}">{e(r["verdict"])}</td>', how_cell,
                  _num(r.get("margin_lower")), _num(r.get("margin_upper"))]
    if distortion:
        cells += [_num(r.get("distortion_lower")), _num(r.get("distortion_upper")),
                  f"<td>{e(distortion_state(r))}</td>"]
    cells.append(_num(r.get("time"), seconds(r.get("time"))))
    if distortion:
        cells.append(_num(r.get("distortion_time"), seconds(r.get("distortion_time"))))
    total = sample_time(r)
    cells.append(_num(round(total, 4), seconds(total)))
    return (f'<tr data-verdict="{e("|".join(dict.fromkeys(verdicts)))}" '
            f'data-decided="{e("|".join(dict.fromkeys(groups)))}">' + "".join(cells) + "</tr>")


def samples_table(rows: Sequence[dict], thumbs: dict[int, str], distortion: bool,
                  radii: Sequence[float] | None = None) -> str:
    """The section: filters, the count of shown rows, the table and its script. `radii`: rows are
    report_radii.sample_rows lines, shown with a verdict column per radius; the filters then
    keep a sample with that verdict (or way of deciding) at any radius."""
    e = html.escape
    head = "".join(f'<th title="{e(tip)}"' + (f' data-type="{kind}" aria-sort="none"><button type="button">'
                                              f"{e(title)}</button></th>" if kind else f">{e(title)}</th>")
                   for title, kind, tip in _columns(distortion, radii))
    if radii:
        seen = [v for r in rows for v in r["verdicts"].values()]
        groups = sorted({decided_group({"decided_by": how}) for r in rows for how in r["decided"].values()})
    else:
        seen, groups = [r["verdict"] for r in rows], sorted({decided_group(r) for r in rows})
    verdicts = [v for v in VERDICTS if v in seen]
    options = lambda values: "".join(f'<option value="{e(v)}">{e(v)}</option>' for v in values)  # noqa: E731
    body = "\n".join(_row(r, thumbs.get(r["index"]), distortion, radii) for r in rows)
    return (f"<h2 id='per-sample'>Every sample</h2><div class='controls'>"
            f"<label>verdict <select id='filter-verdict'><option value=''>all</option>{options(verdicts)}</select>"
            f"</label><label>decided by <select id='filter-decided'><option value=''>all</option>{options(groups)}"
            f"</select></label><span><span id='shown-count'>{len(rows)}</span> of <span id='row-count'>{len(rows)}"
            f"</span> samples shown</span></div><p>Click a column's name to sort by it (again to reverse); "
            f"'decided by' <i>clean</i> marks a sample the network misclassifies without any perturbation.</p>"
            f"<div class='scroll'><table id='sample-table'><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody>"
            f"</table></div><script>{_SCRIPT}</script>")
