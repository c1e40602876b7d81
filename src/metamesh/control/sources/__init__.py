"""Config sources: where the resources come from, each turned into mesh models.

Today one source, a watched directory of YAML manifests (:mod:`.files`), with the per-file
acceptance that keeps one broken file from holding back the rest (:mod:`.accept`). Kubernetes
and ZooKeeper sources are meant to be siblings here, handing the same resource models to the
same acceptance step.
"""

from metamesh.control.sources.accept import Acceptance, Held, accept
from metamesh.control.sources.files import ConfigDirectoryError, FileSource, config_directory

__all__ = [
    "Acceptance",
    "ConfigDirectoryError",
    "FileSource",
    "Held",
    "accept",
    "config_directory",
]
