#!/usr/bin/python3
"""torchrun (python3 -m torch.distributed.run) for Debian 12's torch 1.13
under Python 3.11, where it fails before starting any worker:
Std.from_str("0") returns None because Python 3.11 no longer iterates
an IntFlag's zero member (and the composite ALL), and to_map() then calls
None.get(...). This wrapper maps the string through Std(int(...)) and runs
torchrun unchanged otherwise. Same arguments as torchrun.
"""
import re
import sys
from typing import Dict, Union

from torch.distributed import run
from torch.distributed.elastic.multiprocessing import api

Std = api.Std


def from_str(vm: str) -> Union[Std, Dict[int, Std]]:
    if re.match(api._VALUE_REGEX, vm):
        return Std(int(vm))
    if re.match(api._MAPPING_REGEX, vm):
        return {int(i): Std(int(v))
                for i, v in (m.split(":") for m in vm.split(","))}
    raise ValueError("%s does not match: <%s> or <%s>"
                     % (vm, api._VALUE_REGEX, api._MAPPING_REGEX))


if __name__ == "__main__":
    run.Std.from_str = staticmethod(from_str)  # run imported the class
    sys.exit(run.main())
