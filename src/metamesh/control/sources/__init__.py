"""Config sources: where the resources come from, each turned into mesh models.

A watched directory of YAML manifests (:mod:`.files`), with the per-file acceptance that keeps
one broken file from holding back the rest (:mod:`.accept`), and two registries beside it:
ZooKeeper's Dubbo providers (:mod:`.zookeeper`) and a Kubernetes cluster (:mod:`.kubernetes`),
whose objects are pseudo-files handed to the same acceptance step by :mod:`.merge`.
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
