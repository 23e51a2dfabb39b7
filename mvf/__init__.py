"""mvf: multi-view 3D face morphable model regression (MVF-Net) on PyTorch and PyTorch3D."""
__version__ = "0.1.0"
