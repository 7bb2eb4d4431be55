"""The page `dvc plots show` writes (dvc_plots/index.html), made to work offline.

DVC's own page loads Vega, Vega-Lite and vega-embed from a CDN: with no network its Vega plots are
empty boxes. `.dvc/config` points DVC at this template instead (`plots.html_template`), which
carries the three libraries inside it, taken from vl-convert-python's bundle (the Vega project's
own build of them for offline use); the `plots_page` stage of dvc.yaml writes it."""

from __future__ import annotations

from pathlib import Path

from assay.paths import atomic_write_bytes

# DVC's templates are Vega-Lite 5 specs; vl-convert bundles several versions of the library.
VEGA_LITE = "5.21"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>Assay: DVC plots</title>
    <script type="text/javascript">
/* Vega, Vega-Lite and vega-embed (vl-convert-python's bundle, Vega-Lite @VL@): no network */
(function () {
@BUNDLE@
})();
    </script>
    <style>
        body { font-family: sans-serif; margin: 1.5em; }
        img { max-width: 100%; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    <h1>Assay: DVC plots</h1>
    <p>From <code>dvc plots show</code>: learning curves, confusion matrices and the evaluation
    pictures of each run in dvc.yaml. No network needed.</p>
    <noscript>These plots are drawn by JavaScript: allow it for this file.</noscript>
    {plot_divs}
</body>
</html>
"""


def template() -> str:
    """The HTML template: DVC fills `{plot_divs}` (and `{refresh_tag}`); there is no `{scripts}`,
    where DVC would put its CDN script tags."""
    import vl_convert  # ~0.1 s; a native library with the bundle inside

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    bundle = bundle.replace("</script", "<\\/script")  # inside an inline <script> element
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        if placeholder in bundle:  # DVC replaces these wherever they are
            raise RuntimeError(f"vl-convert's bundle holds DVC's placeholder {placeholder}")
    return PAGE.replace("@VL@", VEGA_LITE).replace("@BUNDLE@", bundle)


def write_template(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, template().encode())
    path.chmod(0o644)  # a page anyone who may read the project may open
    return path
