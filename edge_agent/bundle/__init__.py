"""The signed bundle: the unit the converter writes, the fleet stores and the agent runs.

See docs/architecture.md for the format and `read_bundle` for what a reader checks.
"""

from edge_agent.bundle.manifest import (
    MANIFEST_SCHEMA_VERSION,
    Benchmark,
    Manifest,
    Member,
    MemberRole,
    ModelFormat,
    ModelId,
    Precision,
    QuantizationRecipe,
    QuantParams,
    RuntimeName,
    SelfTest,
    Source,
    TensorSpec,
    Tool,
    Validation,
    canonical_json,
    parse_manifest,
)
from edge_agent.bundle.reader import (
    BundleInfo,
    BundleLimits,
    VerifiedBundle,
    inspect_bundle,
    read_bundle,
)
from edge_agent.bundle.writer import BundleFile, describe_members, write_bundle

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "Benchmark",
    "BundleFile",
    "BundleInfo",
    "BundleLimits",
    "Manifest",
    "Member",
    "MemberRole",
    "ModelFormat",
    "ModelId",
    "Precision",
    "QuantParams",
    "QuantizationRecipe",
    "RuntimeName",
    "SelfTest",
    "Source",
    "TensorSpec",
    "Tool",
    "Validation",
    "VerifiedBundle",
    "canonical_json",
    "describe_members",
    "inspect_bundle",
    "parse_manifest",
    "read_bundle",
    "write_bundle",
]
