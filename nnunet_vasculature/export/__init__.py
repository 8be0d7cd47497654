"""Taking a trained model where submissions are made: ``export-model`` (a zip in nnU-Net's export layout
with what ``predict``/``submit`` need), ``bundle`` (offline wheels and the Kaggle inference script)."""
