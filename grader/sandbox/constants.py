"""What both ends of the grader↔kernel channel agree on; stdlib only.

The grader side imports this before it starts a kernel (:mod:`grader.sandbox.kernel`
is light on purpose: the kernel boots while the grader imports torch), and the
kernel side (:mod:`grader.sandbox.wire`, :mod:`grader.sandbox.worker`) loads it
before the walls go up.
"""

#: Bytes one outcome may take in its packed form (:func:`grader.sandbox.wire.pack`). The largest value
#: a check asks for is a batch of samples (10^5 two-dimensional points in float64 is 1.6 MB); 64 MiB
#: leaves 40x room and bounds what one call can make the grader hold.
MAX_OUTCOME_BYTES = 64 * 1024**2

#: The private mimetype of the display_data messages that carry outcomes back on IOPub.
OUTCOME_MIME = "application/x-grader-outcome"
