"""The HTML report's inline stylesheet and its colour scale for bit widths (1 bit red .. 8 bits
blue, float grey), so the report needs no external file."""

from __future__ import annotations

BITS_COLORS = {1: ("#b2182b", "#fff"), 2: ("#d6604d", "#fff"), 3: ("#f4a582", "#222"), 4: ("#fddbc7", "#222"),
               5: ("#d1e5f0", "#222"), 6: ("#92c5de", "#222"), 7: ("#4393c3", "#fff"), 8: ("#2166ac", "#fff")}
FLOAT_COLOR, OTHER_COLOR = ("#eeeeee", "#555"), ("#fff7bc", "#222")


def bits_class(bits: float) -> str:
    """CSS class of a bit-width cell: b1..b8, bfp (32 = float) or bother."""
    if bits >= 32:
        return "bfp"
    return f"b{int(bits)}" if bits == int(bits) and int(bits) in BITS_COLORS else "bother"


def bits_legend() -> str:
    cells = "".join(f'<span class="b b{k}">{k}</span>' for k in BITS_COLORS)
    return f'<p class="legend">bits: {cells}<span class="b bfp">fp</span><span class="b bother">other</span></p>'


def _bits_css() -> str:
    rules = [f".b{k}{{background:{bg};color:{fg}}}" for k, (bg, fg) in BITS_COLORS.items()]
    rules.append(f".bfp{{background:{FLOAT_COLOR[0]};color:{FLOAT_COLOR[1]}}}")
    rules.append(f".bother{{background:{OTHER_COLOR[0]};color:{OTHER_COLOR[1]}}}")
    return "\n".join(rules)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;
  background:#fafafa;margin:0;padding:24px 32px;max-width:1240px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:32px 0 8px;padding-bottom:4px;border-bottom:2px solid #ddd}
h3{font-size:16px;margin:0 0 4px}
nav{margin:8px 0 0;font-size:13px}
nav a{color:#1f5fa8;text-decoration:none}
.data{font-size:12.5px;margin:2px 0 6px}
.meta,.note,.path{color:#666;font-size:12.5px;margin:2px 0 8px}
.path{font-family:ui-monospace,"DejaVu Sans Mono",monospace;word-break:break-all}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;white-space:nowrap}
thead th{background:#f0f2f5;font-weight:600}
tbody tr:nth-child(even) td:not(.b){background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.center{text-align:center;color:#b8860b}
td.name{font-weight:600}
table.bits td.b,table.bits th{text-align:center;min-width:26px;padding:3px 6px}
.legend{font-size:12.5px;margin:4px 0}
.legend .b{display:inline-block;min-width:22px;text-align:center;padding:1px 4px;margin:0 2px;border-radius:3px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px;vertical-align:0}
figure{margin:0}
img{max-width:100%;height:auto;display:block}
figure.wide{max-width:100%}
.plots{display:flex;flex-wrap:wrap;gap:12px;margin-top:8px}
.plots figure{background:#fff;border:1px solid #e3e3e3;padding:6px}
.plots figure.half{flex:1 1 520px;max-width:calc(50% - 6px)}
.plots figure.wide{flex:1 1 100%}
figcaption{font-size:12px;color:#666;text-align:center}
article.run{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:14px 16px;margin:14px 0}
.method{font-weight:400;color:#666;font-size:13px;margin-left:6px}
pre.cmd{background:#f4f4f6;padding:6px 8px;border-radius:4px;font-size:12px;white-space:pre-wrap;
  word-break:break-all;margin:4px 0 8px}
dl.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:2px 18px;font-size:12.5px;
  margin:4px 0}
dl.facts div{display:flex;gap:6px;min-width:0}
dl.facts dt{color:#666;flex:none}
dl.facts dd{margin:0;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
""" + _bits_css() + "\n"
