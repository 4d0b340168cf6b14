"""The smallest synchronous echo server: one Traffic, ``with traffic:``.

Every connection is an input and an output transit over one socket.  What
the input receives is queued and sent by the output; the input receives
into a fresh buffer each time it exhausts one.  Prints ``listening on
HOST:PORT``; ``--once`` serves one connection and exits when it ends.
"""

from __future__ import annotations

import socket
import sys
from array import array
from collections import deque

from traffic import Octets, Sockets, Traffic

traffic = Traffic()
listener, (host, port) = Sockets.listen(("127.0.0.1", 0))
traffic.acquire(listener)
listener.acquire(array("i", bytes(4 * 16)))
print(f"listening on {host}:{port}", flush=True)

senders: dict[Octets, Octets] = {}  # input transit -> output transit
queues: dict[Octets, deque[bytes]] = {}  # output transit -> data to send
served = 0

while senders or not ("--once" in sys.argv and served):
    with traffic:
        for transit in traffic.transfers():
            if transit is listener:
                for fd in transit.transfer() or ():
                    receiver, sender = Octets.wrap(socket.socket(fileno=fd))
                    traffic.acquire(receiver)
                    traffic.acquire(sender)
                    receiver.acquire(bytearray(4096))
                    senders[receiver], queues[sender] = sender, deque()
                    served += 1
                if transit.exhausted:
                    listener.acquire(array("i", bytes(4 * 16)))
            elif transit in senders:  # an input: queue what came, echo it
                queue = queues.get(senders[transit])  # None: the peer left
                if (data := transit.transfer()) and queue is not None:
                    queue.append(bytes(data))
                if transit.exhausted:
                    transit.acquire(bytearray(4096))
                if transit.terminated:  # EOF: close our side once all is sent
                    del senders[transit]
                    if queue is not None:
                        queue.append(b"")
            elif transit.terminated:  # an output that ended: ours, or the peer left
                queues.pop(transit, None)
        # Each output sends its next piece once it has exhausted the last one.
        for sender, queue in queues.items():
            if queue and (sender.resource is None or sender.exhausted):
                data = queue.popleft()
                if data:
                    sender.acquire(data)
                else:
                    sender.terminate()
traffic.close()
