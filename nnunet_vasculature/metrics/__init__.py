"""The metrics layer: each metric a plain function on arrays plus an accumulator fed piece by piece (``add``,
``score``: the protocol in :mod:`.base`). It imports only ``io`` and ``errors``; import its modules by name
(``from nnunet_vasculature.metrics.surface_dice import surface_dice``), this package imports none of them."""
