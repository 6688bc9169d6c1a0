"""Bundles: signed uploads stored by sha256, models and versions, device downloads.

The rollout engine asks `version_by` and `bundle_for` what it may target, and
hands devices a `signed_download_url`.
"""

from fleet_server.bundles.errors import NotConfiguredError
from fleet_server.bundles.service import (
    VersionStatus,
    bundle_by_sha,
    bundle_for,
    version_by,
)
from fleet_server.bundles.storage import BundleStore
from fleet_server.bundles.urls import check_download_signature, signed_download_url

__all__ = [
    "BundleStore",
    "NotConfiguredError",
    "VersionStatus",
    "bundle_by_sha",
    "bundle_for",
    "check_download_signature",
    "signed_download_url",
    "version_by",
]
