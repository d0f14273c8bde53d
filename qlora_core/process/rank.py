"""One rank of a multi-GPU case, started by `accelerate launch` (torchrun) as

    python -m qlora_core.process.rank REQUEST

with RANK, LOCAL_RANK and WORLD_SIZE in its environment. It runs the child's stages
(`child.run_child`) on its own GPU (LOCAL_RANK; on the CPU, gloo) and writes its own Result
(`distributed.rank_result_path`), which the runner merges into the case's row. A fault with a rank
selector (`KIND@STAGE@rankN`) fires in that rank only. The rank dies with torchrun's agent, its
parent; it exits 1 when it ends other than ok, so that torchrun stops the other ranks at once
rather than leaving them blocked in a collective until the case's timeout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qlora_core.measurement.result import Status
from qlora_core.process.child import run_child
from qlora_core.process.distributed import rank_result_path
from qlora_core.process.lifecycle import arm_stack_dump, die_with_parent
from qlora_core.process.request import ChildRequest, quiet_offline_kernel_notices


def rank_main(request_path: str) -> None:
    parent = os.getppid()  # torchrun's agent: read before PDEATHSIG is armed, to catch its death
    die_with_parent(parent)
    arm_stack_dump()
    quiet_offline_kernel_notices()  # before bitsandbytes is imported
    request = ChildRequest.read(Path(request_path))
    rank = int(os.environ["RANK"])
    result = run_child(
        request.case, request.options, rank_result_path(request.result_path, rank), request.fault(rank)
    )
    # Without running atexit handlers (as the child): the Result is on disk.
    os._exit(0 if result.status == Status.OK.value else 1)


if __name__ == "__main__":
    rank_main(sys.argv[1])
