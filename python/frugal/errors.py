"""The exceptions frugal raises, one class per error code of the C++ library.

Every failure is an :class:`Error`; its ``code`` tells "my arguments are
wrong" (``invalid_argument``, also a :class:`ValueError`) from "the ranks
disagree" (``mismatch``) from "a peer is slow, gone or unreachable"
(``timeout``, ``peer_failure``, ``transport``) without parsing messages.
"""

import builtins

__all__ = [
    "Error",
    "InvalidArgumentError",
    "MismatchError",
    "TimeoutError",
    "PeerFailureError",
    "TransportError",
    "InternalError",
]


class Error(RuntimeError):
    """Any failure frugal reports."""

    code: str = "error"


class InvalidArgumentError(Error, ValueError):
    """A parameter is out of range or of the wrong kind; the message names it.

    Raised on the rank that passed it. During a collective, that rank
    also makes its peers fail at once (with :class:`MismatchError`)
    instead of leaving them to wait for the timeout.
    """

    code = "invalid_argument"


class MismatchError(Error):
    """The ranks disagree (sizes, order, method, parameters).

    Nothing was silently corrupted. The communicator is failed afterwards.
    """

    code = "mismatch"


class TimeoutError(Error, builtins.TimeoutError):
    """A wait passed its deadline: a peer is slow, stopped or dead."""

    code = "timeout"


class PeerFailureError(Error):
    """The transport saw a peer die or disconnect."""

    code = "peer_failure"


class TransportError(Error):
    """The underlying MPI or UCX call failed for another reason."""

    code = "transport"


class InternalError(Error):
    """A frugal bug: an invariant did not hold."""

    code = "internal"
