"""The MVF-Net network: backbones (`backbones`) and the multi-view regressor (`network`)."""
