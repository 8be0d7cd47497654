"""Synthetic data in each competition's exact Kaggle layout, one module per competition, each with a
``synthesize(out, seed, ...)`` function; :mod:`.vessels` holds the vessel-tree geometry they share."""
