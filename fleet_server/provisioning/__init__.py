"""Factory provisioning: devices made in bulk, online or offline, and flashed.

The station side (`provision_batch`) plans a batch from a CSV or a count, gives every
device its own key pair and MQTT credentials (from the fleet, or recorded in a batch file
signed by the station), and writes each device's root-filesystem overlay as a ``.tar.gz``
and an ext4 image. `import_batch` is the fleet side; `flash` writes an image to a disk.
See docs/provisioning.md.
"""

from fleet_server.provisioning.batchfile import BatchDevice, BatchManifest, read_batch, write_batch
from fleet_server.provisioning.errors import (
    BatchFileError,
    BatchSignatureError,
    FlashError,
    IdentityError,
    ImageError,
    PlanError,
    ProvisioningError,
    WheelhouseError,
)
from fleet_server.provisioning.flash import FlashResult, flash
from fleet_server.provisioning.importer import ImportResult, import_batch
from fleet_server.provisioning.plan import DevicePlan, plan_count, read_csv
from fleet_server.provisioning.station import (
    BatchRequest,
    BatchResult,
    ReportDevice,
    provision_batch,
)

__all__ = [
    "BatchDevice",
    "BatchFileError",
    "BatchManifest",
    "BatchRequest",
    "BatchResult",
    "BatchSignatureError",
    "DevicePlan",
    "FlashError",
    "FlashResult",
    "IdentityError",
    "ImageError",
    "ImportResult",
    "PlanError",
    "ProvisioningError",
    "ReportDevice",
    "WheelhouseError",
    "flash",
    "import_batch",
    "plan_count",
    "provision_batch",
    "read_batch",
    "read_csv",
    "write_batch",
]
