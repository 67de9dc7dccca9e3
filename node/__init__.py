"""mura-node: a DICOM node that runs the MURA abnormality classifier on upper-extremity radiographs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mura-node")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
