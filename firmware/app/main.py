"""Boot script (/main.py, run by MicroPython after boot.py). The supervisor
chooses the app slot (bootsel), runs the app from it, and resets the board
on any error after recording it; main.py, supervisor, bootsel, boardkit
and board_esp32 live at the filesystem root and are not replaced by an app
bundle update."""

try:
    import supervisor
    from board_esp32 import Esp32Board

    supervisor.run(Esp32Board)
except KeyboardInterrupt:  # Ctrl-C on the serial console: stay at the REPL
    raise
except BaseException as e:  # last resort: the supervisor or the board layer itself failed
    import sys
    import time

    import machine

    sys.print_exception(e)
    time.sleep(5)
    machine.reset()
