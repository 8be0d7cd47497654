"""``python -m nnunet_vasculature.postprocess {score,tune,apply,submit,validate} [COMPETITION] ...``.

The console script's commands of that name (:func:`nnunet_vasculature.cli.main`); without a competition word the
command is SenNet's, so ``python -m nnunet_vasculature.postprocess tune -i val.zarr --labels ... -o
postprocessing.json`` reads as it always did."""
from __future__ import annotations

import functools
import sys

from nnunet_vasculature import cli

main = functools.partial(cli.main, prog="python -m nnunet_vasculature.postprocess",
                         commands=("score", "tune", "apply", "submit", "validate"))

if __name__ == "__main__":
    sys.exit(main())
