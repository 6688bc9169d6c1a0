"""Every error the edge agent package raises, under one root.

The tree (a caller catches as wide or as narrow as it needs)::

    EdgeAgentError
    ├── ProfileError                  a hardware profile is missing or invalid
    │   └── UnknownProfileError       no profile of that name (suggests close names)
    ├── SigningKeyError               a key file is missing, unreadable or of the wrong kind
    ├── BundleError                   a bundle cannot be written, read or trusted
    │   ├── BundleFormatError         not a readable tar, truncated, or no manifest/signature
    │   ├── UnsafeMemberError         a member that must never be extracted
    │   │   ├── UnsafePathError       absolute path, `..`, backslash or empty component
    │   │   ├── LinkMemberError       symbolic or hard link
    │   │   └── SpecialMemberError    device, fifo, directory or other non-regular member
    │   ├── DuplicateMemberError      the same name twice
    │   ├── MemberTooLargeError       a member (or the whole bundle) over its size limit
    │   ├── SignatureError            signature does not verify against the trusted key
    │   ├── UntrustedKeyError         signed by a key that is not trusted
    │   ├── ManifestError             manifest.json is not a valid manifest
    │   │   └── UnknownFieldError     a field this version does not know
    │   ├── UnexpectedMemberError     a member the manifest does not list
    │   ├── MissingMemberError        a member the manifest lists is absent
    │   ├── SizeMismatchError         a member's size differs from the manifest
    │   └── HashMismatchError         a member's sha256 differs from the manifest
    ├── ModelError                    a verified bundle cannot be run
    │   ├── RuntimeUnavailableError   its runtime is not installed here (names the extra)
    │   ├── ModelLoadError            the runtime refuses to load the model
    │   ├── InputError                inputs do not match the signature (names input, expected, got)
    │   └── SelfTestError             outputs differ from the bundle's self-test vectors
    ├── ProtocolError                 an MQTT topic or message breaks the contract
    │   ├── TopicError                a topic outside the scheme, or a bad device id
    │   └── MessageError              a payload that is not a valid message
    │       ├── SchemaVersionError    a message schema version this side does not speak
    │       └── SpoofedMessageError   the payload names another device than its topic
    └── AgentError                    the on-device daemon
        ├── ConfigError               agent.toml unreadable, invalid, or with an unknown key
        ├── NoModelError              no verified bundle is active yet: nothing to serve
        └── UpdateError               a model update was refused; the old model keeps serving
            ├── DownloadError         the bundle could not be fetched (status, size cap, timeout)
            ├── DowngradeError        older than the active version, without a rollback order
            ├── ProfileMismatchError  built for another hardware profile than this device's
            └── WarmupError           fails to load, fails its self-test, NaN/inf, or too slow

Every message says what happened, where (the member, field, file or topic),
and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "BundleError",
    "BundleFormatError",
    "ConfigError",
    "DowngradeError",
    "DownloadError",
    "DuplicateMemberError",
    "EdgeAgentError",
    "HashMismatchError",
    "InputError",
    "LinkMemberError",
    "ManifestError",
    "MemberTooLargeError",
    "MessageError",
    "MissingMemberError",
    "ModelError",
    "ModelLoadError",
    "NoModelError",
    "ProfileError",
    "ProfileMismatchError",
    "ProtocolError",
    "RuntimeUnavailableError",
    "SchemaVersionError",
    "SelfTestError",
    "SignatureError",
    "SigningKeyError",
    "SizeMismatchError",
    "SpecialMemberError",
    "SpoofedMessageError",
    "TopicError",
    "UnexpectedMemberError",
    "UnknownFieldError",
    "UnknownProfileError",
    "UnsafeMemberError",
    "UnsafePathError",
    "UntrustedKeyError",
    "UpdateError",
    "WarmupError",
]


class EdgeAgentError(Exception):
    """Root of every error raised by `edge_agent`."""


class ProfileError(EdgeAgentError):
    """A hardware profile file is missing or does not match the schema."""


class UnknownProfileError(ProfileError):
    """No hardware profile has the requested name."""

    def __init__(self, name: str, known: list[str], suggestions: list[str]) -> None:
        self.name = name
        self.known = known
        self.suggestions = suggestions
        hint = (
            f"did you mean {', '.join(repr(s) for s in suggestions)}?"
            if suggestions
            else f"known profiles: {', '.join(known) or '(none)'}"
        )
        super().__init__(
            f"unknown hardware profile {name!r}; {hint} (`edgefleet profiles list` shows them all)"
        )


class SigningKeyError(EdgeAgentError):
    """A signing or trust key cannot be used."""


class BundleError(EdgeAgentError):
    """A bundle cannot be written, read or trusted.

    `member` names the bundle member concerned, when there is one.
    """

    def __init__(self, message: str, *, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class BundleFormatError(BundleError):
    """The file is not a readable bundle (not a tar, truncated, no manifest)."""


class UnsafeMemberError(BundleError):
    """A member that a reader must never extract."""


class UnsafePathError(UnsafeMemberError):
    """A member name that is absolute, climbs out with `..`, or is malformed."""


class LinkMemberError(UnsafeMemberError):
    """A symbolic or hard link member."""


class SpecialMemberError(UnsafeMemberError):
    """A device, fifo, directory or any member that is not a regular file."""


class DuplicateMemberError(BundleError):
    """Two members with the same name (the second could shadow the first)."""


class MemberTooLargeError(BundleError):
    """A member, or the bundle as a whole, is over its size limit."""


class SignatureError(BundleError):
    """The manifest signature does not verify against the trusted key it names."""


class UntrustedKeyError(BundleError):
    """The manifest was signed by a key that is not among the trusted keys."""


class ManifestError(BundleError):
    """manifest.json is not a valid manifest. `field` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, member="manifest.json")
        self.field = field


class UnknownFieldError(ManifestError):
    """The manifest holds a field this version of edgefleet does not know."""


class UnexpectedMemberError(BundleError):
    """A member that the manifest does not list (something was added)."""


class MissingMemberError(BundleError):
    """A member that the manifest lists is not in the bundle (something was removed)."""


class SizeMismatchError(BundleError):
    """A member's size differs from the size the manifest records."""


class HashMismatchError(BundleError):
    """A member's sha256 differs from the digest the manifest records."""


class ModelError(EdgeAgentError):
    """A verified bundle cannot be run on this machine."""


class RuntimeUnavailableError(ModelError):
    """The bundle's runtime (onnxruntime, LiteRT) is not installed here."""


class ModelLoadError(ModelError):
    """The runtime refuses to load the bundle's model."""


class InputError(ModelError):
    """Inputs that do not match the model's signature. `input` names the tensor."""

    def __init__(self, message: str, *, input: str | None = None) -> None:
        super().__init__(message)
        self.input = input


class SelfTestError(ModelError):
    """The model's outputs on its self-test vectors are outside the bundle's tolerance."""


class ProtocolError(EdgeAgentError):
    """An MQTT topic or message that breaks the edgefleet contract."""

    def __init__(self, message: str, *, topic: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic


class TopicError(ProtocolError):
    """A topic outside the edgefleet scheme, or a device id that cannot be a topic level."""


class MessageError(ProtocolError):
    """A payload that is not a valid message for its topic. `field` names the culprit."""

    def __init__(self, message: str, *, topic: str | None = None, field: str | None = None) -> None:
        super().__init__(message, topic=topic)
        self.field = field


class SchemaVersionError(MessageError):
    """A message schema version this side does not speak."""


class SpoofedMessageError(MessageError):
    """A payload that claims to come from another device than its topic says."""


class AgentError(EdgeAgentError):
    """The on-device daemon cannot do what was asked."""


class ConfigError(AgentError):
    """The agent's config file is unreadable or invalid. The message names the key and file."""


class NoModelError(AgentError):
    """No verified bundle is active yet, so there is nothing to serve."""


class UpdateError(AgentError):
    """A model update was refused; the active model keeps serving.

    `step` says where it stopped: ``download``, ``verify``, ``warmup``,
    ``activate`` or ``probation``; `reason` is a short machine-readable code
    (``bad_signature``, ``selftest_failed``, ``too_slow`` ...) for events.
    """

    def __init__(self, message: str, *, step: str, reason: str) -> None:
        super().__init__(message)
        self.step = step
        self.reason = reason


class DownloadError(UpdateError):
    """The bundle could not be fetched: HTTP status, size over the cap, timeout, truncation.

    `status` is the HTTP status of an ``http_status`` refusal (403: an expired or
    altered link), else None.
    """

    def __init__(
        self, message: str, *, reason: str = "download_failed", status: int | None = None
    ) -> None:
        super().__init__(message, step="download", reason=reason)
        self.status = status


class DowngradeError(UpdateError):
    """The bundle's version is lower than the active one and no rollback was ordered."""

    def __init__(self, message: str) -> None:
        super().__init__(message, step="verify", reason="downgrade")


class ProfileMismatchError(UpdateError):
    """The bundle was built for another hardware profile than this device's."""

    def __init__(self, message: str) -> None:
        super().__init__(message, step="verify", reason="profile_mismatch")


class WarmupError(UpdateError):
    """The verified bundle failed its warm-up: load, self-test, NaN/inf outputs or latency."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, step="warmup", reason=reason)
