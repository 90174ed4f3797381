"""report.html: one page, readable in a browser and safe with hostile data.

The body is the report's markdown rendered by markdown-it-py with raw HTML off (every data string in it was escaped
by report.md_text or put in a code span, so it arrives as text); the page around it is a jinja2 template with
autoescaping, so the title and anything else it is given are text too. Self-contained: the style is inline, the
plots are the PNG files beside the page, nothing is fetched from the network. Wide tables scroll inside their own
box with their header row kept in view; numbers are right-aligned (the markdown's column alignment).
"""
from __future__ import annotations

import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup

STYLE = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6475; --rule: #d9dde5; --head: #f3f5f8; --accent: #2454a6; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.6rem; margin: 0.2em 0 0.4em; }
h2 { font-size: 1.25rem; margin: 2em 0 0.5em; padding-bottom: 0.2em; border-bottom: 2px solid var(--rule); }
h3 { font-size: 1.02rem; margin: 1.5em 0 0.4em; color: var(--muted); }
p, li { max-width: 80ch; }
a { color: var(--accent); }
code { font: 0.88em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--head);
       padding: 0 0.25em; border-radius: 3px; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; border: 1px solid var(--rule); }
table { display: block; max-width: 100%; max-height: 75vh; overflow: auto; border-collapse: separate;
        border-spacing: 0; font-size: 13px; font-variant-numeric: tabular-nums; border: 1px solid var(--rule);
        border-radius: 4px; margin: 0.6em 0 1.2em; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--rule); vertical-align: top; }
td { white-space: nowrap; }
th { position: sticky; top: 0; z-index: 1; background: var(--head); text-align: left; font-weight: 600;
     white-space: normal; min-width: 6ch; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tbody tr:hover td { background: #eef3fb; }
#headline + p + table td { white-space: normal; min-width: 12ch; }
"""

PAGE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ style }}</style>
</head>
<body>
<main>
{{ body }}
</main>
</body>
</html>
""")


def render_html(title: str, markdown: str) -> str:
    """The page: `markdown` rendered with raw HTML off, inside the template; `title` is escaped by the template."""
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = renderer.render(markdown).replace("<h2>Headline</h2>", '<h2 id="headline">Headline</h2>', 1)
    return PAGE.render(title=title, style=Markup(STYLE), body=Markup(body))
