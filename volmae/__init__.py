"""volmae: MONAI-based 3D medical image segmentation with masked-autoencoder pretraining."""

__version__ = "0.1.0"
