"""Exceptions raised by onedc. Every user-facing failure is an `OneDCError` with a message
that says what is wrong and, where possible, what to do about it."""


class OneDCError(Exception):
    """Base class of all onedc errors."""


class BitstreamError(OneDCError):
    """A file is not a valid onedc bitstream for this model (bad magic, unsupported version,
    length or checksum mismatch, model mismatch, corrupt entropy-coded data)."""


class ImageError(OneDCError):
    """An input image cannot be read or has an unsupported layout."""


class ConfigError(OneDCError):
    """A configuration is unknown, incomplete or has invalid values."""


class CheckpointError(OneDCError):
    """A checkpoint folder is missing, incomplete or does not fit the model."""


class WeightsError(OneDCError):
    """An external weight is missing, unreadable or does not fit the module it is loaded into."""


class RunInUseError(OneDCError):
    """A training run folder is locked by another running job."""


class SizeLimitError(OneDCError):
    """An image or a file declares a size above the limit (`max_pixels`, `--max-pixels`), or
    one whose estimated memory exceeds what the device has available."""


class WriteError(OneDCError):
    """A file or folder could not be written (full disk, quota, permissions); the previous
    version under that name is intact."""
