"""MkDocs hooks: regenerate the generated pages before every build."""

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))

import gen_gallery  # noqa: E402
import gen_howto  # noqa: E402
import gen_optimizers  # noqa: E402
import gen_schedules  # noqa: E402


def on_pre_build(config, **kwargs):
    """Redraw the schedules, rewrite the optimizer pages, run the guides.

    The examples gallery is written from the outputs stored in
    docs/examples/: the build does not run the examples (some take minutes).
    """
    del config, kwargs
    gen_schedules.generate(DOCS)
    gen_optimizers.generate(DOCS)
    gen_howto.generate(DOCS)
    gen_gallery.generate(DOCS)
