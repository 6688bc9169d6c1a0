"""Every error of factory provisioning, under one root.

    ProvisioningError
    ├── PlanError            a CSV, count or profile that cannot be planned (names the row)
    ├── IdentityError        a device's credentials could not be obtained from the fleet
    ├── WheelhouseError      the agent's wheels for the target could not be built or installed
    ├── ImageError           an overlay, archive or ext4 image could not be written
    ├── BatchFileError       a batch file that is malformed, unsigned or not trusted
    │   └── BatchSignatureError   the batch does not match its signature (tampered)
    └── FlashError           a target that is mounted, holds the running system, or reads back wrong

The CLI prints one line per error and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "BatchFileError",
    "BatchSignatureError",
    "FlashError",
    "IdentityError",
    "ImageError",
    "PlanError",
    "ProvisioningError",
    "WheelhouseError",
]


class ProvisioningError(Exception):
    """Root of the provisioning errors."""


class PlanError(ProvisioningError):
    pass


class IdentityError(ProvisioningError):
    pass


class WheelhouseError(ProvisioningError):
    pass


class ImageError(ProvisioningError):
    pass


class BatchFileError(ProvisioningError):
    pass


class BatchSignatureError(BatchFileError):
    pass


class FlashError(ProvisioningError):
    pass
