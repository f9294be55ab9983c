"""A real SMTP server (aiosmtpd) for the notification tests.

Usage: smtp_relay.py OUT_DIR REFUSE_FIRST(0|1)
Listens on 127.0.0.1 on a free port, prints "ready PORT", stores every
accepted message as OUT_DIR/msg-N.eml, and, with REFUSE_FIRST=1, answers the
first message with a temporary failure (451) and touches OUT_DIR/refused.
"""
import os
import socket
import sys
import time

from aiosmtpd.controller import Controller

out, refuse_first = sys.argv[1], sys.argv[2] == "1"


class Handler:
    def __init__(self):
        self.seen = 0

    async def handle_DATA(self, server, session, envelope):
        self.seen += 1
        if refuse_first and self.seen == 1:
            open(os.path.join(out, "refused"), "w").write("1")
            return "451 4.3.0 Try again later"
        n = len([f for f in os.listdir(out) if f.endswith(".eml")])
        with open(os.path.join(out, f"msg-{n}.eml"), "wb") as f:
            f.write(envelope.original_content or envelope.content)
        return "250 OK"


with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
controller = Controller(Handler(), hostname="127.0.0.1", port=port)
controller.start()
print(f"ready {port}", flush=True)
while True:
    time.sleep(3600)
