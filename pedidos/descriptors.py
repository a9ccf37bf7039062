"""What the order port's and the panel's accept loops share: the errors that
mean the process ran out of descriptors (or memory) rather than that one
connection failed, and how long a loop that meets one stops accepting."""

from __future__ import annotations

import errno

OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Long enough that a loop out of descriptors is not busy retrying; short enough
# that a descriptor freed meanwhile serves the next client soon.
PAUSE_S = 0.2
