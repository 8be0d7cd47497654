"""What the tests share: fixture writers built with independent libraries (nnU-Net, tensorstore, zarr,
the real v1 network), tiny models, the offline-install environment. Imported as ``helpers.NAME`` (pytest puts
tests/ on the path for its test modules)."""
