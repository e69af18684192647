"""MkDocs hooks: regenerate the generated pages before every build."""

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))

import gen_optimizers  # noqa: E402
import gen_schedules  # noqa: E402


def on_pre_build(config, **kwargs):
    """Redraw the schedule gallery and rewrite the optimizer pages."""
    del config, kwargs
    gen_schedules.generate(DOCS)
    gen_optimizers.generate(DOCS)
