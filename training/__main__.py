"""``python -m training``: see :func:`training.loop.main`."""
import sys

from training.loop import main

if __name__ == "__main__":  # data workers are spawned and re-import this module
    sys.exit(main())
