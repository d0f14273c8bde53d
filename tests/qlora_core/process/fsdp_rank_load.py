"""One rank of `test_load.py`'s two-rank load (run by torchrun, gloo): load as FSDP rank-0-only
loading does, note where the weights are, then sync module states from rank 0 exactly as FSDP's
`sync_module_states` does (materialize with `to_empty`, broadcast every parameter and buffer),
and write what it saw and the logits of one forward to OUT/rank<N>.json."""

import json
import os
import sys

import torch
import torch.distributed as dist
from accelerate.utils.fsdp_utils import ensure_weights_retied

from qlora_core.cases.case import Case
from qlora_core.measurement.memory import params_device
from qlora_core.models.load import load_model

case = Case.from_dict(json.loads(sys.argv[1]))
path, out = sys.argv[2], sys.argv[3]
dist.init_process_group("gloo")
rank = dist.get_rank()
model = load_model(case, path, "cpu")
seen = {"loaded_on": params_device(model)}
seen["real_param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_meta)
if rank != 0:
    # FSDP's param_init_fn as accelerate builds it: `to_empty` per module, tied weights retied
    materialize = ensure_weights_retied(lambda m: m.to_empty(device="cpu", recurse=False), model, "cpu")
    for module in list(model.modules()):
        if any(p.is_meta for p in module.parameters(recurse=False)):
            materialize(module)
for tensor in [*model.parameters(), *model.buffers()]:
    dist.broadcast(tensor.data, src=0)
# A training-mode forward: in an eval forward without grad bitsandbytes' CPU backend may repack
# the 4-bit weights for its inference kernel, a different rounding path.
seen["logits"] = model.train()(torch.arange(16).unsqueeze(0)).logits.detach().float().flatten()[:64].tolist()
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(seen, f)
dist.destroy_process_group()
