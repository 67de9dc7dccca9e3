"""The node's exceptions. Inside the node errors are typed; the SCP edge turns them into statuses."""


class MuraNodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(MuraNodeError):
    """Invalid configuration; the message names the key and the problem."""


class ProfileError(MuraNodeError):
    """A file in dicom_profiles/ is missing or malformed."""


class OutOfResources(MuraNodeError):
    """The instance could not be made durable (disk or database failure)."""


class DatasetMismatch(MuraNodeError):
    """The data set does not match the C-STORE request (SOP class or SOP instance)."""


class UnreadableDataset(MuraNodeError):
    """The data set cannot be parsed, or lacks an identifier the node needs."""


class SchemaError(MuraNodeError):
    """The database is missing or at a schema revision this version cannot read."""


class InvalidIdentifier(UnreadableDataset):
    """A required identifier (Study, Series or SOP Instance UID) is missing or not a UID."""


class ListenError(MuraNodeError):
    """The SCP cannot listen on its configured address."""


class DatabaseUnavailable(MuraNodeError):
    """The database cannot be reached or prepared."""


class UndecodableImage(MuraNodeError):
    """An image that cannot be decoded or turned into model input; the message says why."""


class CheckpointError(MuraNodeError):
    """A model card or checkpoint that is missing, malformed, or does not match its hash."""


class UsageError(MuraNodeError, ValueError):
    """A command given something it cannot use: a missing or malformed input file (a split CSV,
    a card), conflicting options, a value out of range. The message says what and where; the
    command line prints it as one line and exits with status 2."""
