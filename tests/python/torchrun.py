"""torchrun (python -m torch.distributed.run) with Debian 12's torch 1.13
on Python 3.11 made to start at all.

Its Std.from_str finds a stream setting by iterating over the IntFlag Std,
and Python 3.11 no longer yields the zero member NONE (nor the alias ALL)
that way, so the default "--redirects 0" becomes None and torchrun fails
with "'NoneType' object has no attribute 'get'" before starting a worker.
"""

import re
import sys

from torch.distributed.elastic.multiprocessing import api
from torch.distributed.run import main

_from_str = api.Std.from_str.__func__


def _fixed_from_str(cls, vm):
    if re.fullmatch(r"\d+", vm):
        return cls(int(vm))
    return _from_str(cls, vm)


if __name__ == "__main__":
    if api.Std.from_str("0") is None:
        api.Std.from_str = classmethod(_fixed_from_str)
    sys.exit(main())
