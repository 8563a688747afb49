"""Run p256.verify over a file of cases and print one line per case, for
tests/firmware/test_p256.py. Runs unchanged under CPython and MicroPython.

Usage: p256_driver.py CASES. Each line of CASES is ``<id> <key> <msg>
<sig>``, the last three in hex (``-`` for empty). Prints ``<id> True``,
``<id> False`` or ``<id> ValueError <message>`` for each, then
``cases <count>``.
"""

import sys
from binascii import unhexlify

import p256


def unhex(field):
    return b"" if field == "-" else unhexlify(field)


def main(path):
    count = 0
    with open(path) as f:
        for line in f:
            case, key, msg, sig = line.split()
            try:
                out = str(p256.verify(unhex(key), unhex(msg), unhex(sig)))
            except ValueError as e:
                out = "ValueError " + str(e)
            print(case, out)
            count += 1
    print("cases", count)


main(sys.argv[1])
