"""The bottom layer: every file format this package reads or writes, and the naming facts they share.

- :mod:`.slices`: Kaggle folders of per-slice TIFFs (listing, checked reads, label values);
- :mod:`.volumes`: z-sliceable volumes for analysis (labels, probabilities from zarr, slice folders, .npz);
- :mod:`.sources`: prediction inputs (Kaggle kidney folders, nnU-Net raw images, converted z-chunks);
- :mod:`.store`: the probability store (one zarr schema, one writer, the one quantiser);
- :mod:`.rle`: Kaggle run-length encoding;
- :mod:`.sennet`: voxel sizes, slice ids and case names of the SenNet layout;
- :mod:`.paths`: nnU-Net's folder variables and the files this package keeps beside nnU-Net's.

Nothing here imports another subpackage of ``nnunet_vasculature`` (only :mod:`..errors`).
"""
