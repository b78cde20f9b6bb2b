"""Link monitor: follows the link state of port devices over RTMGRP_LINK, one socket per namespace.

TAP devices report operstate UNKNOWN, so "up" here is IFF_UP and
IFF_LOWER_UP (carrier), as the seed's tap_link_update reads it. A device
that is deleted (its namespace vanished with its container) is down.
"""

from pyroute2 import IPRoute

from tapswitch.ports import iproute

RTMGRP_LINK = 0x1
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000


def link_up(flags: int) -> bool:
    return bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)


class LinkMonitor:
    """Netlink sockets subscribed to link events, one per namespace holding a port."""

    def __init__(self) -> None:
        self.sockets: dict[str | None, IPRoute] = {}

    def watch(self, nspath: str | None) -> IPRoute | None:
        """Subscribe to the namespace at `nspath`; return the new socket, or None if already watched."""
        if nspath in self.sockets:
            return None
        ipr = iproute(nspath)
        ipr.bind(groups=RTMGRP_LINK)
        self.sockets[nspath] = ipr
        return ipr

    @staticmethod
    def read(ipr: IPRoute) -> list[tuple[int, bool]]:
        """Drain the link events waiting on `ipr`: (ifindex, up) for each."""
        events = []
        for msg in ipr.get():
            event = msg.get("event")
            if event == "RTM_NEWLINK":
                events.append((msg["index"], link_up(msg["flags"])))
            elif event == "RTM_DELLINK":
                events.append((msg["index"], False))
        return events

    def close(self) -> None:
        for ipr in self.sockets.values():
            ipr.close()
        self.sockets.clear()
