"""The model artifact: the one file format every stage writes and reads (:mod:`volmae.artifact.model`), starting a
network from pretrained weights (:mod:`~volmae.artifact.pretrained`), MONAI bundles' and MONAI networks' weights as
artifacts (:mod:`~volmae.artifact.bundles`, :mod:`~volmae.artifact.monai`), the bundles' released weights
(:mod:`~volmae.artifact.hub`: list, download, offline install).

    from volmae.artifact import ModelArtifact
    model = ModelArtifact.load("runs/train/model.pt", role="segmentation")
    print(model.describe())
    network = model.build()                  # the torch module, weights loaded, eval mode
"""

from volmae.artifact.bundles import bundle_classes, find_bundle, from_bundle, installed_bundles, list_models
from volmae.artifact.model import (
    FORMAT,
    FORMAT_VERSION,
    ModelArtifact,
    Provenance,
    Task,
    is_model_file,
    read_file,
)
from volmae.artifact.monai import export_to_monai, import_monai_unetr
from volmae.artifact.pretrained import load_pretrained

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelArtifact",
    "Task",
    "Provenance",
    "read_file",
    "is_model_file",
    "load_pretrained",
    "from_bundle",
    "find_bundle",
    "bundle_classes",
    "installed_bundles",
    "list_models",
    "export_to_monai",
    "import_monai_unetr",
]
