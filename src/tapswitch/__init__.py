"""tapswitch: a userspace L2 learning switch whose ports are TAP devices.

Kept empty on purpose: worker processes import tapswitch.worker, which must
load only the fast path (no pyroute2, no prometheus_client).
"""

__version__ = "0.1.0"
