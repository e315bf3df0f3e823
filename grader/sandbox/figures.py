"""A kernel's first figure, drawn once in a ``grade batch`` slot's zygote for every kernel forked from it.

A process's first matplotlib figure costs more than the next ones: matplotlib finds and loads its fonts
(``findfont``, then FreeType's faces), builds the mathtext parser (a pyparsing grammar) and Pillow loads
its PNG writer; every later figure finds most of that done. The zygote draws one throwaway figure of the
kinds the notebooks draw (lines, a scatter with a colour map, an image, a histogram, a legend, mathtext
titles, ``tight_layout``, a PNG cropped as the inline backend crops it) on a bare Agg canvas, after its
imports (:func:`grader.sandbox.launch.preimport`): each forked kernel then starts with that done, except
for the fonts' files (below). Measured on the q_sampler notebook's cells in processes forked from a
warmed parent against an unwarmed one, 30 of each in alternating groups of 5 (the method of
``benchmarks/bench_figures_warm.py``): 2.49 s against 2.62 s of CPU (means; the difference 0.13 ± 0.07
s), for 0.3-0.45 s once in the zygote. (Keeping the fonts too, which cannot be done safely, below, saved
0.21 ± 0.08 s.)

The fonts themselves are not kept: a FreeType face holds its file open, and a forked kernel closes
every descriptor it inherits, so the faces are dropped again (:func:`_drop_open_fonts`) and each
kernel opens its own (what stays is what needs no file: font lookups, the parser, the code paths).

Nothing a notebook can see changes: no pyplot figure is made (no figure number, no backend chosen:
the kernel's pyplot still picks the inline backend at its first figure), no setting is touched, and
the caches filled are pure (the same inputs give the same fonts and glyph metrics whether filled here
or later), so a kernel's figures are the bytes a cold kernel draws (``tests/grader/test_figures.py``).
"""

from __future__ import annotations

import io
import os

__all__ = ["warm"]


def warm() -> None:
    """Draw one throwaway figure (see the module's docstring); matplotlib missing, or its caches not where
    :func:`_drop_open_fonts` empties them: nothing to do."""
    try:
        from matplotlib import font_manager, mathtext
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return
    if not all(hasattr(cache, "cache_clear") for cache in (getattr(font_manager, "_get_font", None),
                                                          getattr(mathtext.MathTextParser, "_parse_cached", None))):
        return
    figure = Figure(figsize=(4, 2))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    left.plot([0.0, 1.0], [0.0, 1.0], label="line")
    left.scatter([0.0, 1.0], [1.0, 0.0], s=1, c=[0.0, 1.0], cmap="coolwarm", label="points")
    left.hist([0.0, 0.5, 1.0], bins=3, density=True, histtype="stepfilled", alpha=0.5)
    left.set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title=r"$\log\,\mathrm{SNR}(t)$, $t = 1$")
    left.legend(fontsize=8)
    right.imshow([[0.0, 1.0], [1.0, 0.0]], cmap="gray")
    right.set(xticks=[], yticks=[])
    right.set_title(r"$\sigma = 0.5$", fontsize=8)
    figure.tight_layout()
    figure.savefig(io.BytesIO(), format="png", bbox_inches="tight")
    del figure, left, right
    _drop_open_fonts()


def _drop_open_fonts() -> None:
    """Let go of every FreeType face the figure loaded: each holds its font file open, and a forked kernel
    closes every descriptor it inherits (:mod:`grader.sandbox.zygote`), so a face kept would read its glyphs
    through a closed descriptor, or through whatever file the kernel opened later under the same number.
    The faces live in matplotlib's font cache and in mathtext's cache of parsed strings (their glyph boxes
    name their faces); both are emptied, then the zygote's open files are checked. One still open raises:
    the zygote then fails its start, and its slot launches that kernel cold and starts a zygote again for
    the next (``tests/grader/test_figures.py`` fails first, on a matplotlib that keeps faces elsewhere)."""
    import gc

    from matplotlib import font_manager, mathtext

    font_manager._get_font.cache_clear()
    mathtext.MathTextParser._parse_cached.cache_clear()
    gc.collect()
    still = sorted(name for name in _open_files() if name.endswith(_FONT_FILES))
    if still:
        raise RuntimeError(f"font files still open after the warm-up figure: {still}")


_FONT_FILES = (".ttf", ".ttc", ".otf", ".afm", ".pfb", ".pfa")


def _open_files() -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return names
