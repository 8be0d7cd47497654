"""Dataset conversion: synthetic Kaggle-layout data and SenNet → nnU-Net raw."""
