"""A slow, lossy link between two namespaces, in user space: ``tc netem`` without sch_netem.

Usage: python lossy_link.py CONFIG_JSON  (as root, in the root namespace)

CONFIG_JSON: ``{"a": [DEV, NS, "ADDR/24"], "b": [DEV, NS, "ADDR/24"], "delay_ms": 200,
"loss_percent": 5, "seed": 1}``.

Some kernels (this project's CI VMs among them) have neither the ``sch_netem`` qdisc nor
any tc classifier, so ``tc qdisc add ... netem delay 200ms loss 5%`` fails with
"Specified qdisc kind is unknown". This does the same at the IP layer: two TUN devices,
one moved into each namespace and addressed there; every IP packet one side sends is
read here, dropped with probability ``loss_percent`` or written to the other side
``delay_ms`` later (each direction on its own, in order, like netem's constant delay).
TCP sees real loss and real delay: retransmissions, a slow round trip.

Prints ``ready`` once both devices are up. Runs until killed; the devices vanish with
it (they are not persistent).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import selectors
import struct
import subprocess
import sys
import time
from collections import deque

from backtest_queue.lifeline import watch_parent_from_environment

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MTU = 1500


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=20)


def main(cfg: dict[str, object]) -> None:
    rng = random.Random(cfg["seed"])
    delay = float(cfg["delay_ms"]) / 1000  # type: ignore[arg-type]
    loss = float(cfg["loss_percent"]) / 100  # type: ignore[arg-type]
    ends = []
    for key in ("a", "b"):
        dev, ns, address = cfg[key]  # type: ignore[misc]
        # Made here under a name unique in this namespace, then moved and renamed.
        temp = f"lossy{os.getpid() % 100000}{key}"
        fd = open_tun(temp)
        ip("link", "set", temp, "netns", ns)
        ip("-n", ns, "link", "set", temp, "name", dev)
        ip("-n", ns, "link", "set", dev, "mtu", str(MTU))
        ip("-n", ns, "addr", "add", address, "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")
        ends.append(fd)
    a, b = ends
    other = {a: b, b: a}
    in_flight: deque[tuple[float, int, bytes]] = deque()  # (due, fd, packet): FIFO
    selector = selectors.DefaultSelector()
    selector.register(a, selectors.EVENT_READ)
    selector.register(b, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        timeout = None if not in_flight else max(0.0, in_flight[0][0] - time.monotonic())
        for key, _ in selector.select(timeout):
            fd = key.fd
            while True:
                try:
                    packet = os.read(fd, MTU + 64)
                except BlockingIOError:
                    break
                if rng.random() >= loss:
                    in_flight.append((time.monotonic() + delay, other[fd], packet))
        now = time.monotonic()
        while in_flight and in_flight[0][0] <= now:
            _, fd, packet = in_flight.popleft()
            with contextlib.suppress(BlockingIOError):  # a full receive queue: a drop
                os.write(fd, packet)


if __name__ == "__main__":
    watch_parent_from_environment()  # stop when the test that started us is gone
    main(json.loads(sys.argv[1]))
