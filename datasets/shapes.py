"""The course's image set of shapes, for notebooks: the code is ``reference/shapes.py``.

That module is installed with the grader (which trains and grades on the images); this file
runs its source here, so that a notebook loads the set by path from the course folder as it
loads ``datasets/toy2d.py``, without importing the ``reference`` package::

    import importlib.util
    spec = importlib.util.spec_from_file_location("shapes", "datasets/shapes.py")
    shapes = importlib.util.module_from_spec(spec); spec.loader.exec_module(shapes)
    images, labels = shapes.load_shapes(1000, torch.Generator().manual_seed(0))

See ``reference/shapes.py`` for what the images are, their licence and their determinism.
"""

from pathlib import Path as _Path

_SOURCE = _Path(__file__).resolve().parents[1] / "reference" / "shapes.py"
exec(compile(_SOURCE.read_text(encoding="utf-8"), str(_SOURCE), "exec"))  # one source of truth
