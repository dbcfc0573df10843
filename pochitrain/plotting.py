"""Matplotlib set-up shared by every plot: Agg backend and a font that has Japanese glyphs.

Class names and titles are often Japanese; DejaVu Sans, the default font, draws empty boxes
for them. ``use_cjk_font`` adds IPAex Gothic (``matplotlib-fontja``, else a system CJK font) as
a fallback after DejaVu Sans, so Latin text keeps its look.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_SYSTEM_CJK = ("Noto Sans CJK JP", "Noto Sans JP", "IPAexGothic", "IPAGothic", "TakaoGothic",
               "Yu Gothic", "Meiryo", "MS Gothic", "Hiragino Sans", "Source Han Sans JP")


@functools.lru_cache(maxsize=1)
def use_cjk_font() -> str | None:
    """Make Japanese text render in every later figure; returns the CJK font's name (None when
    no CJK font is available, then Japanese text draws as boxes with a warning)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager

    name = None
    try:
        from importlib.resources import files

        ttf = files("matplotlib_fontja") / "fonts" / "ipaexg.ttf"
        if ttf.is_file():
            font_manager.fontManager.addfont(str(ttf))
            name = font_manager.FontProperties(fname=str(ttf)).get_name()
    except (ModuleNotFoundError, OSError):
        name = None
    if name is None:
        installed = {f.name for f in font_manager.fontManager.ttflist}
        name = next((n for n in _SYSTEM_CJK if n in installed), None)
    if name is not None:
        # a list of families: glyphs missing from DejaVu Sans fall back to the CJK font
        matplotlib.rcParams["font.family"] = ["DejaVu Sans", name]
    return name


_preloading: list[threading.Thread] = []


def preload() -> None:
    """Import matplotlib and set the font up in a background thread, so that a command that
    draws at its end has it ready instead of waiting for the import after its work."""
    if not _preloading:
        def load() -> None:
            use_cjk_font()
            import matplotlib.backends.backend_agg
            import matplotlib.figure  # noqa: F401

        _preloading.append(threading.Thread(target=load, name="pochi-preload-mpl",
                                            daemon=True))
        _preloading[0].start()


def wait_preload() -> None:
    """Let a :func:`preload` finish (a daemon thread cut off mid-import at exit can crash)."""
    if _preloading:
        _preloading[0].join()


def pyplot():  # type: ignore[no-untyped-def]
    """``matplotlib.pyplot`` on the Agg backend with the CJK font set up."""
    wait_preload()
    use_cjk_font()
    import matplotlib.pyplot as plt

    return plt


def figure(**kwargs):  # type: ignore[no-untyped-def]
    """A ``matplotlib.figure.Figure`` with the CJK font set up, without pyplot: no global
    figure state to close, and a command that draws one picture skips pyplot's import."""
    wait_preload()
    use_cjk_font()
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def tight_layout(fig: Any) -> None:
    """``fig.tight_layout()``, without the placeholder layout engine it leaves on the figure:
    with one, ``savefig`` lays the figure out again before it draws (a fifth of a save's
    time, the same pixels)."""
    fig.tight_layout()
    fig.set_layout_engine(None)
