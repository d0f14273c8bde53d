"""Matrix expansion: sizes per tier and profile, unique ids, the families the lesson needs."""

from __future__ import annotations

import pytest

from qlora_core.cases.case import ENGINES
from qlora_core.cases.families import Family, ladder_tag
from qlora_core.cases.gpus import PROFILE_NAMES, get_profile
from qlora_core.cases.matrix import (
    DEFAULT_MAX,
    MATRICES,
    SHAREABLE_FAMILIES,
    MatrixError,
    build_matrix,
    family_name,
)
from qlora_core.cases.tiers import (
    KERNEL_ENGINE,
    NAN_FAILURE_LR,
    NAN_LRS,
    NAN_REMEDY_LR,
    STABILITY_LRS,
    USERS_ENGINE,
    cpu_text_note,
    lesson_dtype,
    tier_for,
)
from qlora_core.engines.pacing import plan_steps
from qlora_core.models import REAL_MODEL, model_problem
from qlora_core.process.distributed import loads_on_rank0_only


def cases_of(planned, family):
    return [p.case for p in planned if any(t.split(":")[0] == family for t in p.families)]


SINGLE_CARD = [name for name in PROFILE_NAMES if get_profile(name).count == 1]


@pytest.mark.parametrize("profile", SINGLE_CARD)
def test_tier_sizes_and_unique_ids(profile):
    p = get_profile(profile)
    # build_matrix itself refuses a smoke or default tier above its cap (see the test below).
    smoke, default, full = (build_matrix(p, m) for m in ("smoke", "default", "full"))
    assert 1 <= len(smoke) < len(default) < len(full) and DEFAULT_MAX < len(full)
    for planned in (smoke, default, full):
        ids = [x.case.id for x in planned]  # the plan holds each hash once; ids must be unique too
        assert len(ids) == len(set(ids))
        assert all(model_problem(x.case.model) is None for x in planned)
    # The default tier is a subset of full: nothing is measured only at the smaller tier.
    assert {x.case.hash for x in default} <= {x.case.hash for x in full}


@pytest.mark.parametrize(("tier", "cap"), [("smoke", "SMOKE_MAX"), ("default", "DEFAULT_MAX")])
def test_a_tier_above_its_cap_is_refused(monkeypatch, tier, cap):
    planned = len(build_matrix(get_profile("t4"), tier))
    monkeypatch.setattr(f"qlora_core.cases.matrix.{cap}", planned - 1)
    with pytest.raises(MatrixError, match=f"{tier} matrix for t4 has {planned} cases \\(> {planned - 1}\\)"):
        build_matrix(get_profile("t4"), tier)


def test_every_family_planned_is_a_family_stored_as_its_plain_name():
    tags = [
        tag
        for name in PROFILE_NAMES
        for tier in MATRICES
        for planned in build_matrix(get_profile(name), tier)
        for tag in planned.families
    ]
    assert all(type(tag) is str for tag in tags)  # rows and request files hold plain strings
    planned = {family_name(tag) for tag in tags}
    assert planned <= {f.value for f in Family}
    # Every member but the two tools' is planned by some profile and tier.
    assert {f.value for f in Family} - planned == {"hand-picked", "fit-advisor"}
    assert {ladder_tag(k) for k in range(5)} <= set(tags)
    assert SHAREABLE_FAMILIES < {f.value for f in Family}


def test_family_names_are_the_stored_strings():
    # Rows store these (their `families` column): a changed value would orphan every stored run.
    assert [f.value for f in Family] == [
        "factorial", "speed", "fp32", "sweep", "reference", "gc", "prepare", "ladder", "compat",
        "weights", "quality", "stability", "nan", "engine", "multigpu", "hand-picked", "fit-advisor",
    ]  # fmt: skip
    assert (str(Family.NAN), f"{Family.LADDER}", ladder_tag(2)) == ("nan", "ladder", "ladder:2")
    assert Family.QUALITY == "quality" and "quality" in {Family.QUALITY}


def test_counts_per_profile_are_pinned():
    # A change here changes what the hardware runners measure: review it deliberately.
    counts = {name: len(build_matrix(get_profile(name), "default")) for name in ("t4", "h200", "cpu")}
    assert counts == {"t4": 47, "h200": 49, "cpu": 42}


def test_factorial_is_full_and_t4_keeps_bf16_rows():
    planned = build_matrix(get_profile("t4"), "default")
    factorial = cases_of(planned, "factorial")
    combos = {(c.quant_type, c.double_quant, c.compute_dtype) for c in factorial}
    assert combos == {(q, d, t) for q in ("nf4", "fp4") for d in (True, False) for t in ("fp16", "bf16")}
    # Speed between the axes is compared where the device, not the host, sets the pace.
    assert {(c.batch_size, c.seq_len) for c in factorial} == {(4, 512)}
    assert any(c.compute_dtype == "bf16" for c in cases_of(planned, "stability"))
    assert lesson_dtype(get_profile("t4")) == "fp16"
    assert lesson_dtype(get_profile("a100-80gb")) == "bf16"


def test_sweep_has_a_reference_at_every_point():
    planned = build_matrix(get_profile("h200"), "full")
    sweep = cases_of(planned, "sweep")
    refs = {(c.model, c.batch_size, c.seq_len, c.compute_dtype) for c in cases_of(planned, "reference")}
    assert {(c.batch_size, c.seq_len) for c in sweep} == {
        (b, s) for b in (1, 2, 4) for s in (512, 1024, 2048)
    }
    for c in sweep:
        assert (c.quant_type, c.double_quant) == ("nf4", True)
        assert (c.model, c.batch_size, c.seq_len, c.compute_dtype) in refs


def test_ladder_follows_the_lesson_order():
    planned = build_matrix(get_profile("t4"), "default")
    ladder = sorted(
        ((int(t.split(":")[1]), p.case) for p in planned for t in p.families if t.startswith("ladder:")),
        key=lambda x: x[0],
    )
    steps = [c for _, c in ladder]
    assert [s for s, _ in ladder] == [0, 1, 2, 3, 4]
    first = steps[0]
    assert (first.model, first.batch_size, first.seq_len) == ("llama-3.1-8b", 4, 2048)
    assert first.optimizer == "adamw_8bit" and not first.gradient_checkpointing
    assert [(c.batch_size, c.grad_accum) for c in steps] == [(4, 1), (2, 2), (1, 4), (1, 4), (1, 4)]
    assert all(c.batch_size * c.grad_accum == 4 for c in steps)  # effective batch kept
    assert [c.seq_len for c in steps] == [2048, 2048, 2048, 1024, 1024]
    assert [c.gradient_checkpointing for c in steps] == [False, False, False, False, True]


def test_quality_and_stability_use_the_real_model_on_text():
    planned = build_matrix(get_profile("cpu"), "default")
    quality = cases_of(planned, "quality")
    assert {(c.quant_type, c.double_quant) for c in quality} == {
        ("nf4", True),
        ("nf4", False),
        ("fp4", True),
        ("fp4", False),
        ("none", False),
    }
    stability = cases_of(planned, "stability")
    assert {(c.compute_dtype, c.lr) for c in stability} == {
        (d, lr) for d in ("fp16", "bf16") for lr in STABILITY_LRS
    }
    for c in quality + stability:
        assert c.model == REAL_MODEL and c.data == "text"


NUMERICS_FAMILIES = ("quality", "stability", "nan")
"""The families whose losses and perplexities the claims compare between rows."""


@pytest.mark.parametrize("profile", SINGLE_CARD)
def test_numerics_families_train_a_fixed_plan_on_cuda_as_on_the_cpu(profile):
    planned = build_matrix(get_profile(profile), "full")
    for family in NUMERICS_FAMILIES:
        cases = cases_of(planned, family)
        assert cases, family
        for case in cases:
            for device in ("cuda", "cpu"):
                for profile in (None, False):  # alone, or side by side (no profiler window)
                    plan = plan_steps(case, device, profile=profile)
                    assert not plan.adaptive, (case.id, device)
                    assert plan.max_total_steps == case.warmup_steps + case.measured_steps
    # The speed families stay paced on CUDA: the plan follows the case, not the device alone.
    assert all(plan_steps(c, "cuda").adaptive for c in cases_of(planned, "factorial"))


def test_large_gpus_add_13b_and_cpu_runs_small_models():
    h200 = {p.case.model for p in build_matrix(get_profile("h200"), "default")}
    t4 = {p.case.model for p in build_matrix(get_profile("t4"), "default")}
    cpu = {p.case.model for p in build_matrix(get_profile("cpu"), "default")}
    assert "llama-2-13b" in h200 and "llama-2-13b" not in t4
    assert {"llama-3.2-3b", "llama-3.1-8b"} <= t4
    assert cpu == {"tiny", REAL_MODEL}


def test_model_override_and_unknown_tier():
    planned = build_matrix(get_profile("cpu"), "smoke", models=["smollm2-135m"])
    assert {p.case.model for p in planned} - {REAL_MODEL} == {"smollm2-135m"}
    with pytest.raises(MatrixError, match="smoke, default, full"):
        build_matrix(get_profile("cpu"), "huge")


def engine_points(planned):
    """{case with engine reset to the loop: engines it runs through} for the engine family."""
    points: dict = {}
    for case in cases_of(planned, "engine"):
        points.setdefault(case.replace(engine="loop"), set()).add(case.engine)
    return points


@pytest.mark.parametrize(
    ("profile", "default_point", "full_extra"),
    [
        ("h200", ("llama-3.2-3b", 4, 2048, "synthetic"), ("llama-3.2-3b", 1, 512, "synthetic")),
        ("a100-40gb", ("llama-3.2-3b", 4, 2048, "synthetic"), ("llama-3.2-3b", 1, 512, "synthetic")),
        ("t4", ("llama-3.2-3b", 4, 512, "synthetic"), ("llama-3.2-3b", 1, 512, "synthetic")),
        ("cpu", (REAL_MODEL, 2, 64, "text"), ("tiny", 1, 64, "synthetic")),
    ],
)
def test_engine_family_trains_each_point_with_every_engine(profile, default_point, full_extra):
    p = get_profile(profile)
    default, full = build_matrix(p, "default"), build_matrix(p, "full")

    def where(points):
        return {(c.model, c.batch_size, c.seq_len, c.data) for c in points}

    assert where(engine_points(default)) == {default_point}
    assert where(engine_points(full)) == {default_point, full_extra}
    for planned in (default, full):
        families = {x.case.hash: x.families for x in planned}
        for point, engines in engine_points(planned).items():
            assert engines == set(ENGINES), point.id
            assert point.compute_dtype == lesson_dtype(p) and point.quant_type == "nf4"
            # One engine's run of the point is the very case another family measures (one run).
            shared = [e for e in ENGINES if len(families[point.replace(engine=e).hash]) > 1]
            assert shared, point.id
    assert not cases_of(build_matrix(p, "smoke"), "engine")


@pytest.mark.parametrize("profile", ["t4", "h200", "cpu"])
@pytest.mark.parametrize("matrix", ["smoke", "default", "full"])
def test_claim_families_run_on_the_users_engine(profile, matrix):
    planned = build_matrix(get_profile(profile), matrix)
    users = {"factorial", "speed", "fp32", "sweep", "reference", "gc", "prepare", "ladder", "compat"}
    for p in planned:
        tags = {t.split(":")[0] for t in p.families}
        if tags & users:
            assert p.case.engine == USERS_ENGINE, (p.case.id, p.families)
        elif tags & {"quality", "stability"}:
            assert p.case.engine == KERNEL_ENGINE, (p.case.id, p.families)
        elif "nan" in tags:  # the NaN advice is judged through both engines
            assert p.case.engine in (KERNEL_ENGINE, USERS_ENGINE), (p.case.id, p.families)
        elif tags == {"weights"}:  # loaded only (no engine runs), or INT8's training total: the users'
            assert p.case.load_only or p.case.engine == USERS_ENGINE, (p.case.id, p.families)
        else:
            assert tags == {"engine"}, (p.case.id, p.families)


@pytest.mark.parametrize("profile", ["t4", "h200", "cpu"])
def test_speed_comparisons_stand_at_the_device_bound_point(profile):
    p = get_profile(profile)
    point = tier_for(p).device_bound
    for matrix in ("smoke", "default"):
        planned = build_matrix(p, matrix)
        speed = [c for f in ("factorial", "speed", "fp32") for c in cases_of(planned, f)]
        assert {(c.batch_size, c.seq_len) for c in speed} == {point}
        kinds = {(c.quant_type, c.double_quant, c.compute_dtype) for c in speed}
        dtype = lesson_dtype(p)
        # What the speed claims compare: QLoRA vs 16-bit LoRA, double quant on vs off, fp32.
        assert {("nf4", True, dtype), ("none", False, dtype), ("nf4", False, dtype)} <= kinds
        assert ("nf4", True, "fp32") in kinds


@pytest.mark.parametrize(
    ("profile", "dtype", "point"),
    [("t4x2", "fp16", (4, 512)), ("l4x2", "bf16", (4, 512)), ("h200x2", "bf16", (4, 2048))],
)
def test_multi_card_profiles_run_the_multigpu_family_only(profile, dtype, point):
    tiers = [build_matrix(get_profile(profile), m) for m in ("smoke", "default", "full")]
    assert [[p.case.hash for p in t] for t in tiers[1:]] == [[p.case.hash for p in tiers[0]]] * 2
    assert all(p.families == ["multigpu"] for p in tiers[0])
    single, floating, fsdp, ddp, *big = (p.case for p in tiers[0])
    assert (
        single.model == "llama-3.1-8b" and single.compute_dtype == dtype and single.quant_storage == "uint8"
    )
    assert {c.engine for c in (single, floating, fsdp, ddp)} == {"trainer"}
    # the tier's device-bound point: two H200s scale at the point where one H200 is device-bound
    assert {(c.batch_size, c.seq_len) for c in (single, floating, fsdp, ddp)} == {point}
    assert all(c.gradient_checkpointing for c in (single, floating, fsdp, ddp))
    # FSDP and DDP differ from the one-card case beside them only in how many ranks and how.
    assert (
        fsdp.replace(num_gpus=1, strategy="single") == floating == ddp.replace(num_gpus=1, strategy="single")
    )
    assert (fsdp.id.endswith("-2gpu-fsdp"), ddp.id.endswith("-2gpu-ddp")) == (True, True)
    # 70B on two cards: on 24 GB cards only (a 16 GB T4 cannot hold half its 4-bit weights); the
    # recipe (FSDP's CPU offload) first, then the same case without it
    assert len(big) == (0 if profile == "t4x2" else 2)
    for case in big:
        assert (case.model, case.batch_size, case.seq_len, case.strategy, case.num_gpus) == (
            "llama-2-70b", 1, 512, "fsdp", 2,
        )  # fmt: skip
        assert case.prequantized and case.quant_storage == dtype and case.gradient_checkpointing
        assert loads_on_rank0_only(case) and not loads_on_rank0_only(fsdp)
    if profile == "l4x2":
        recipe, plain = big
        assert recipe.cpu_offload and not plain.cpu_offload and recipe.replace(cpu_offload=False) == plain
        assert [c.id for c in big] == [
            "llama-2-70b-nf4-dq-bf16-b1-s512-noprep-qs-bf16-w1m3-trainer-2gpu-fsdp-offload-preq",
            "llama-2-70b-nf4-dq-bf16-b1-s512-noprep-qs-bf16-w1m3-trainer-2gpu-fsdp-preq",
        ]
    assert fsdp.quant_storage == dtype and not fsdp.prepare_kbit
    # offload is the 70B's alone: the 8B cases keep their shards on the GPUs
    assert not any(c.cpu_offload for c in (single, floating, fsdp, ddp))
    assert len(tiers[0]) == (4 if profile == "t4x2" else 6)  # small: the same cases at every tier


@pytest.mark.parametrize("profile", ("t4", "h200", "cpu"))
def test_nan_family_reaches_the_failure_point_with_both_remedies(profile):
    p = get_profile(profile)
    engines = (KERNEL_ENGINE, USERS_ENGINE) if p.is_gpu else (KERNEL_ENGINE,)
    default = build_matrix(p, "default")
    points = {(c.engine, c.compute_dtype, c.lr) for c in cases_of(default, "nan")}
    # fp16 at the failure point, its two remedies there (lr 1e-4; bf16 at the same rate), per engine.
    assert points == {
        (e, d, lr)
        for e in engines
        for d, lr in (("fp16", NAN_FAILURE_LR), ("fp16", NAN_REMEDY_LR), ("bf16", NAN_FAILURE_LR))
    }
    for c in cases_of(default, "nan"):
        assert (c.model, c.data) == (REAL_MODEL, "text")
    # The core loop's row at 1e-4 is the stability family's own: one case, two tags.
    shared = [p for p in default if {"stability", "nan"} <= set(p.families)]
    assert [(x.case.engine, x.case.lr) for x in shared] == [(KERNEL_ENGINE, NAN_REMEDY_LR)]
    full = build_matrix(p, "full")
    grid = {(c.engine, c.compute_dtype, c.lr) for c in cases_of(full, "nan")}
    assert grid == {
        (e, d, lr) for e in (KERNEL_ENGINE, USERS_ENGINE) for d in ("fp16", "bf16") for lr in NAN_LRS
    }
    assert max(NAN_LRS) >= 10 * NAN_FAILURE_LR  # the full grid brackets the failure from above


@pytest.mark.parametrize(
    ("profile", "model"), [("t4", "llama-2-7b"), ("h200", "llama-2-7b"), ("cpu", "tiny")]
)
def test_weights_family_loads_the_7b_table_precisions(profile, model):
    """default: the precisions no training family loads (FP32, INT8), and LoRA over the INT8
    weights at the compat point (INT8's training total); full: every weight type."""
    p = get_profile(profile)
    dtype = lesson_dtype(p)

    def kinds(matrix):
        cases = cases_of(build_matrix(p, matrix), "weights")
        assert all(c.model == model for c in cases)
        (trained,) = [c for c in cases if not c.load_only]
        compat = [c for c in cases_of(build_matrix(p, matrix), "compat") if c.quant_type == "nf4"]
        point = (compat[0].batch_size, compat[0].seq_len) if compat else (trained.batch_size, trained.seq_len)
        assert trained.quant_type == "int8" and trained.prepare_kbit and trained.engine == USERS_ENGINE
        assert (trained.batch_size, trained.seq_len) == point
        return {(c.quant_type, c.double_quant, c.compute_dtype) for c in cases if c.load_only}

    assert kinds("default") == {("none", False, "fp32"), ("int8", False, dtype)}
    four_bit = {(q, dq, dtype) for q in ("nf4", "fp4") for dq in (True, False)}
    assert kinds("full") == kinds("default") | {("none", False, "fp16"), ("none", False, "bf16")} | four_bit
    assert not cases_of(build_matrix(p, "smoke"), "weights")
    # Load-only cases never enter a training family.
    assert not [
        c
        for f in ("compat", "sweep", "factorial")
        for c in cases_of(build_matrix(p, "full"), f)
        if c.load_only
    ]


@pytest.mark.parametrize("profile", ["t4", "h200"])
def test_gpus_train_the_7b_shape_in_compat(profile):
    compat = cases_of(build_matrix(get_profile(profile), "default"), "compat")
    seven = {(c.quant_type, c.engine) for c in compat if c.model == "llama-2-7b"}
    assert seven == {("nf4", USERS_ENGINE), ("none", USERS_ENGINE)}


def _text_cases(planned):
    return {p.case.id: (p.case.compute_dtype, sorted(p.families)) for p in planned if p.case.data == "text"}


def test_a_cpu_without_half_precision_trains_the_real_model_in_fp32_and_plans_no_half_rows():
    cpu = get_profile("cpu")
    everything = build_matrix(cpu, "default")
    fp32_only = build_matrix(cpu, "default", cpu_dtypes=frozenset({"fp32"}))
    text = _text_cases(fp32_only)
    assert {dtype for dtype, _ in text.values()} == {"fp32"}
    assert not cases_of(fp32_only, "stability") and not cases_of(fp32_only, "nan")
    # quality keeps nf4/fp4 x dq, not its 16-bit (bf16) reference; the engines keep all three
    assert {c.quant_type for c in cases_of(everything, "quality")} == {"nf4", "fp4", "none"}
    assert [c.quant_type for c in cases_of(fp32_only, "quality")] == ["nf4"] * 2 + ["fp4"] * 2
    assert len(cases_of(fp32_only, "engine")) == len(cases_of(everything, "engine")) == 3
    # the synthetic cases (tiny shape: half precision costs seconds) are the same
    synthetic = [p.case.id for p in everything if p.case.data != "text"]
    assert [p.case.id for p in fp32_only if p.case.data != "text"] == synthetic
    smoke = build_matrix(cpu, "smoke", cpu_dtypes=frozenset({"fp32"}))
    assert [dtype for dtype, _ in _text_cases(smoke).values()] == ["fp32"]


def test_a_cpu_with_bf16_only_compares_no_fp16_rows():
    planned = build_matrix(get_profile("cpu"), "default", cpu_dtypes=frozenset({"fp32", "bf16"}))
    assert {c.compute_dtype for c in cases_of(planned, "stability")} == {"bf16"}
    assert [(c.compute_dtype, c.lr) for c in cases_of(planned, "nan")] == [("bf16", NAN_FAILURE_LR)]
    assert {dtype for dtype, _ in _text_cases(planned).values()} == {"bf16"}


@pytest.mark.parametrize("profile", ["t4", "h200"])
def test_a_gpu_profile_ignores_the_host_cpu(profile):
    p = get_profile(profile)
    ids = [x.case.id for x in build_matrix(p, "default")]
    assert [x.case.id for x in build_matrix(p, "default", cpu_dtypes=frozenset({"fp32"}))] == ids
    assert cpu_text_note(p, {"fp32"}) == ""


def test_the_cpu_note_names_what_is_left_out_and_why():
    cpu = get_profile("cpu")
    assert cpu_text_note(cpu, {"fp32", "bf16", "fp16"}) == ""
    note = cpu_text_note(cpu, {"fp32"})
    assert "no fp16/bf16 matmul instructions" in note and "compute in fp32" in note
    assert "stability and nan rows and the 16-bit LoRA reference of the quality family are not" in note
    bf16_only = cpu_text_note(cpu, {"fp32", "bf16"})
    assert "no fp16 matmul" in bf16_only and "compute in bf16" in bf16_only and "reference" not in bf16_only
