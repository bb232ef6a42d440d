#!/usr/bin/env python3
"""Run a command and report how many packets left through each non-loopback interface meanwhile.

    .venv/bin/python tools/check_loopback.py -- .venv/bin/pytest      (make check-loopback)

Reads the kernel's per-interface transmit counters (/proc/net/dev) before and
after. Any other traffic of the machine in that window (a package download, a
remote shell) counts too, so run it on an otherwise quiet machine; zero
packets proves that nothing the command did left the machine. Exit status: the
command's, or 3 when packets left.
"""

import subprocess
import sys


def tx_packets() -> dict:
    counters = {}
    with open('/proc/net/dev') as dev:
        for line in dev.readlines()[2:]:
            name, data = line.split(':', 1)
            name = name.strip()
            if name != 'lo':
                counters[name] = int(data.split()[9])  # transmit packets column
    return counters


def main() -> int:
    argv = sys.argv[1:]
    command = argv[argv.index('--') + 1 :] if '--' in argv else argv
    if not command:
        sys.exit(__doc__)
    before = tx_packets()
    returncode = subprocess.run(command).returncode
    after = tx_packets()
    sent = {name: after[name] - before.get(name, 0) for name in after}
    print(
        f'check-loopback: packets sent during `{" ".join(command)}`: '
        + ', '.join(f'{name}={count}' for name, count in sent.items())
    )
    if returncode != 0:
        return returncode
    return 3 if any(sent.values()) else 0


if __name__ == '__main__':
    sys.exit(main())
