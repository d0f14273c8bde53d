"""The process layer: every case runs in processes of its own, and the parent survives them all.

The parent (`runner.run_case`) writes a `request.ChildRequest` and starts the case through
`launch.launch`: cold (`child`), in a warm spare (`spare`), or under `accelerate launch`, one
`rank` per GPU (`distributed`). It waits, kills the case's process groups on a timeout or an
interrupt, and reads the Result the child wrote as each stage started (`checkpointer`; the stages
in order: `stages`, the CUDA set-up: `cuda_setup`), with the outcome its exception gave
(`outcomes`). Around it: cases side by side (`side_by_side`, in the lanes of `lanes`), the
uncapped rerun of an OOM (`oom_need`), test-only faults (`faults`), the options every launcher of
cases shares (`shared_options`), and what every process of a case does (`lifecycle`). Nothing
here imports torch at import time except through the child's stages. The design: docs/design.md;
warm spares and side by side: docs/side-by-side.md.
"""
